"""W&B-shaped runs into a local export: runs.csv is W&B's documented "export runs to CSV"
recipe flattened by ``pd.json_normalize``; histories (integers' exact text included) and the
records read back through the local source unchanged."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from adapters.local import LocalDestination, LocalSource
from core.flatten import flatten_normalized
from core.model import RunRecord
from tests.adapters.contract import (
    all_files,
    all_refs,
    assert_history_equal,
    assert_records_equal,
    copy_run,
    read_bytes,
    read_history,
)
from tests.engine.wandb_shaped import WandbShapedSource
from tests.mlflow.helpers import context


def recipe_row(record: RunRecord) -> dict[str, Any]:
    """W&B docs: ``summary = run.summary._json_dict``; ``config`` without ``_`` keys; ``name``."""
    config = {k: v for k, v in record.config.items() if not k.startswith("_")}
    return {"summary": record.summary, "config": config, "name": record.display_name}


def same_cell(cell: Any, want: Any) -> bool:
    if want is None:
        return bool(pd.isna(cell))
    if isinstance(want, list):
        return bool(json.loads(cell) == want)  # list cells are JSON text
    if isinstance(want, bool):
        return bool(cell == want)
    if isinstance(want, (int, float)):
        return (math.isnan(want) and math.isnan(cell)) or float(cell) == want
    return bool(cell == want)


async def export(tmp_path: Path) -> tuple[WandbShapedSource, list[RunRecord]]:
    source = WandbShapedSource(context(100))
    records = [await source.get_run(ref) for ref in await all_refs(source)]
    async with LocalDestination(LocalDestination.Config(path=str(tmp_path))) as dest:
        for record in records:
            await copy_run(source, record, dest)
        await dest.finalize()
    return source, records


async def test_runs_csv_is_the_wandb_recipe_normalized_by_pandas(tmp_path: Path) -> None:
    _, records = await export(tmp_path)
    csv = pd.read_csv(tmp_path / "runs.csv")
    parquet = pd.read_parquet(tmp_path / "runs.parquet")
    assert list(csv.columns) == list(parquet.columns)
    expected = pd.json_normalize([recipe_row(r) for r in records])
    sections = [c for c in csv.columns if c.startswith(("config.", "summary."))]
    assert sorted(sections) == sorted(c for c in expected.columns if c != "name")
    for (_, row), (_, want), record in zip(csv.iterrows(), expected.iterrows(), records, strict=True):
        assert row["name"] == want["name"] == record.display_name
        assert row["id"] == record.ref.run_id and row["entity"] == "team" and row["project"] == "proj"
        assert row["state"] == record.state.value
        assert record.start_time is not None
        created = datetime.fromtimestamp(record.start_time, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert row["created_at"] == created
        assert json.loads(row["tags"]) == record.labels
        for column in sections:
            assert same_cell(row[column], want[column]), (column, row[column], want[column])
    assert "config._wandb.start_time" not in csv.columns and "summary._wandb.runtime" in csv.columns


def test_flattening_matches_json_normalize_leaf_for_leaf() -> None:
    doc = {"a": {}, "b": {"c": {"d": 1}}, "l": [1, {"x": 2}], "n": None, "e": {"f": None}, "g": "h"}
    frame = pd.json_normalize([doc])
    flat = dict(flatten_normalized(doc))
    assert sorted(flat) == sorted(frame.columns)
    for key, value in flat.items():
        got = frame.loc[0, key]
        assert (value is None and got is None) or got == value, key


async def test_wandb_export_reads_back_with_exact_history_and_records(tmp_path: Path) -> None:
    source, records = await export(tmp_path)
    async with LocalSource(LocalSource.Config(path=str(tmp_path))) as local:
        refs = await all_refs(local)
        assert [r.id for r in refs] == [r.ref.id for r in records]
        for ref, original in zip(refs, records, strict=True):
            back = await local.get_run(ref)
            assert back.ref.run_id == original.ref.run_id and back.source_system == "wandb"
            assert_records_equal(back, original)
            table, _ = await read_history(local, back)
            assert_history_equal(table, pa.Table.from_batches([source.history_table(original.ref)]))
            big = [(v, j) for k, v, j in zip(*(table.column(c).to_pylist() for c in ("key", "value", "value_json"))) if k == "big"]
            assert big and all(j == "12345678901234567890" and v == 1.2345678901234567e19 for v, j in big)
            files = {f.key: (f, await read_bytes(local, back, f)) for f in await all_files(local, back)}
            for file, data in source.files_of(original):
                got, got_data = files.pop(file.key)
                assert got_data == data and got.role == file.role and got.artifact == file.artifact
            assert files == {}
