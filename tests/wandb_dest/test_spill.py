"""Key-major histories spill to sorted runs on disk and come back line for line the same."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from adapters.wandb._lines import HistoryAssembler, Order
from adapters.wandb._spill import SortedRun, merge_windows, sort_by_step
from core.model import history_batch


def key_major_batches(keys: int, steps: int, chunk: int) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(3)
    names, step_col, ts, values, json_values = [], [], [], [], []
    for k in range(keys):
        for s in range(steps):
            names.append(f"k{k:03d}")
            step_col.append(s if s % 50 else s - 1 if s else 0)  # some repeated steps: collisions
            ts.append(1.7e9 + s * 0.25 + k * 1e-4)
            values.append([float("nan"), float("inf"), -0.0, rng.normal()][s % 4] if s % 7 else rng.normal())
            json_values.append('{"_type": "image"}' if (k == 1 and s % 9 == 0) else None)
    values = [None if j is not None else v for v, j in zip(values, json_values)]
    batch = history_batch(names, step_col, ts, values, json_values)
    return [batch.slice(i, chunk) for i in range(0, batch.num_rows, chunk)]


def lines_of(assembler: HistoryAssembler, batches: list[pa.RecordBatch]) -> tuple[list[str], list[int]]:
    lines, counted = [], []
    for batch in batches:
        for block in assembler.add(batch):
            lines += block.lines
            counted.append(block.points)
    for block in assembler.finish():
        lines += block.lines
        counted.append(block.points)
    return lines, counted


def test_spilled_assembly_equals_the_in_memory_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    batches = key_major_batches(keys=7, steps=900, chunk=500)
    in_memory = HistoryAssembler(start_time=1.7e9, window_points=700)
    spilled = HistoryAssembler(start_time=1.7e9, window_points=700, spill_points=1000, spill_dir=str(tmp_path))
    expected, expected_counts = lines_of(in_memory, batches)
    actual, counts = lines_of(spilled, batches)
    assert spilled.order is Order.BUFFER
    assert spilled.stats.buffered_points_peak <= 1000 + 500
    assert actual == expected
    assert sum(counts) == sum(expected_counts) == 7 * 900  # only the last block counts the points
    assert counts[-1] == 7 * 900 and not any(counts[:-1])
    assert spilled.stats.collisions == in_memory.stats.collisions > 0
    assert list(tmp_path.iterdir()) == []  # spill files are unlinked as soon as they are mapped


def test_merge_windows_never_split_a_step_and_keep_source_order() -> None:
    from adapters.wandb._lines import KeyTable, points_from_batch

    table = KeyTable()
    runs = []
    for offset in range(3):
        batch = history_batch(["a"] * 6, [0, 0, 1, 2, 2, 2], [float(offset)] * 6, [offset * 10.0 + i for i in range(6)])
        runs.append(SortedRun(sort_by_step(points_from_batch(batch, table))))
    windows = list(merge_windows(runs, window_points=4))
    steps = [w.step.tolist() for w in windows]
    assert steps == [[0] * 6, [1] * 3 + [2] * 9]  # 6 >= 4 points below step 1; then all the rest
    assert windows[0].value.tolist() == [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]
