"""History pages -> long points: the column path, the row path and a plain reading of the
conventions give the same points, and chunks cut at exact point counts."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from adapters.wandb import _page_points
from adapters.wandb._history_read import PointBatcher, history_batch_of, system_key
from adapters.wandb._page_points import page_batch


def _expected(rows: list[dict], start_time: float) -> list[tuple]:
    """The conventions read literally: rows by step (stable), keys sorted, one point each."""
    out = []
    ordered = sorted(rows, key=lambda r: r.get("_step", 0) if type(r.get("_step")) in (int, float) else 0)
    for row in ordered:
        step = int(row["_step"]) if type(row.get("_step")) in (int, float) else 0
        ts = float(row["_timestamp"]) if type(row.get("_timestamp")) in (int, float) else start_time
        for key in sorted(k for k in row if k not in ("_step", "_timestamp", "_runtime")):
            value = row[key]
            if type(value) is float:
                out.append((key, step, ts, value, None))
            elif type(value) is int:
                try:
                    out.append((key, step, ts, float(value), str(value)))
                except OverflowError:
                    out.append((key, step, ts, None, str(value)))
            else:
                out.append((key, step, ts, None, json.dumps(value, separators=(",", ":"), ensure_ascii=False)))
    return out


def _points(batch) -> list[tuple]:
    if batch is None:
        return []
    cols = [batch.column(i).to_pylist() for i in range(5)]
    return list(zip(*cols, strict=True))


def _same(a: list[tuple], b: list[tuple]) -> bool:
    def norm(p):
        v = p[3]
        return (*p[:3], "nan" if isinstance(v, float) and math.isnan(v) else v, p[4])
    return len(a) == len(b) and all(
        norm(x) == norm(y) and (not isinstance(x[3], float) or math.copysign(1, x[3]) == math.copysign(1, y[3]))
        for x, y in zip(a, b, strict=True)
    )


def _random_rows(rng: random.Random, n: int, width: int, fill: float) -> list[dict]:
    values = [1.5, -0.0, 0.0, float("nan"), float("inf"), -float("inf"), 3, 2**70, 10**400, True, None,
              "text", "ünï", [1, 2.5], {"_type": "histogram", "bins": [0, 1]}, 7.25e-300]
    rows = []
    for i in range(n):
        row = {"_step": rng.choice([i, i, i, i // 2]), "_timestamp": rng.choice([1.7e9 + i / 3, 1700000000 + i]),
               "_runtime": i}
        if rng.random() < 0.05:
            del row["_timestamp"]
        for k in range(width):
            if rng.random() < fill:
                row[f"k{k:03d}"] = rng.random() if rng.random() < 0.7 else rng.choice(values)
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("fill", [1.0, 0.6, 0.02])
def test_page_points_follow_the_conventions(seed: int, fill: float) -> None:
    rng = random.Random(seed)
    rows = _random_rows(rng, rng.randint(1, 300), rng.randint(1, 40), fill)
    expected = _expected(rows, 5.0)
    got = _points(history_batch_of(rows, 5.0))
    assert _same(got, expected)


def test_row_path_equals_column_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _random_rows(random.Random(7), 200, 30, 0.5)
    dense = _points(history_batch_of(rows, 1.0))
    monkeypatch.setattr(_page_points, "_DENSE_SLACK", -1)  # forces the row path
    sparse = _points(history_batch_of(rows, 1.0))
    assert _same(dense, sparse) and len(dense) > 1000


def test_system_lines_keep_only_system_keys() -> None:
    lines = [{"system.gpu.0.temp": 40.0, "_runtime": 3, "_timestamp": 10.5, "_wandb": True},
             {"system.cpu": 7, "system.gpu.0.temp": 41.5, "_timestamp": 11.0}]
    batch = page_batch(lines, np.arange(2), np.array([10.5, 11.0]), system_key)
    assert _points(batch) == [("system/gpu.0.temp", 0, 10.5, 40.0, None),
                              ("system/cpu", 1, 11.0, 7.0, "7"), ("system/gpu.0.temp", 1, 11.0, 41.5, None)]


def test_rows_without_points_give_none() -> None:
    assert history_batch_of([{"_step": 1, "_timestamp": 2.0, "_runtime": 1}], 0.0) is None


@pytest.mark.parametrize("size,skip", [(1, 0), (7, 0), (100, 0), (7, 5), (33, 250), (1000, 999), (10, 5000)])
def test_batcher_cuts_exact_chunks(size: int, skip: int) -> None:
    rows = _random_rows(random.Random(3), 120, 12, 0.8)
    pages = [rows[i:i + 17] for i in range(0, len(rows), 17)]
    everything = [p for page in pages for p in _points(history_batch_of(page, 0.0))]
    batcher = PointBatcher(size, skip)
    chunks = [c for page in pages for c in batcher.add(history_batch_of(page, 0.0))]
    last = batcher.finish()
    chunks += [last] if last is not None else []
    assert all(len(c) == size for c in chunks[:-1])
    offsets = [c.offset for c in chunks]
    assert offsets == list(range(skip, skip + size * len(chunks), size))[: len(chunks)]
    got = [p for c in chunks for p in _points(c.batch)]
    assert _same(got, everything[skip:])


@pytest.mark.parametrize("ints", [[3, -5, 2**53 + 1, 2**70, 0], [1, 10**400, 2]])
def test_integer_columns_keep_their_exact_text(ints: list[int]) -> None:
    rows = [{"_step": i, "_timestamp": 1.0, "n": v} for i, v in enumerate(ints)]
    assert _same(_points(history_batch_of(rows, 0.0)), _expected(rows, 0.0))
