"""Sorted runs of buffered history points on disk, merged back in step windows.

Why: a key-major source (MLflow sends one key's whole history, then the next) cannot be turned
into step lines until every key has arrived. Holding that in memory grows with the run; instead
the assembler sorts what it holds by step every ``spill_points`` points and writes it here as an
Arrow IPC file, which is memory-mapped and unlinked at once (the mapping stays valid, nothing is
left behind by a crash). ``merge_windows`` then walks all sorted runs together, a window of about
``window_points`` points at a time, never splitting a step; anonymous memory stays at about one
window whatever the run's length.

Order within a step is the source order: runs are kept in the order they were spilled, each run
is sorted stably, and a window concatenates the runs in that order before a stable sort.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ._points import Points

_SCHEMA = pa.schema(
    [("key", pa.int32()), ("step", pa.int64()), ("ts", pa.float64()), ("value", pa.float64()), ("value_json", pa.string())]
)


@dataclass
class SortedRun:
    """Points sorted by step (stable), backed by a memory map or by memory."""

    points: Points

    def __len__(self) -> int:
        return len(self.points)


def sort_by_step(points: Points) -> Points:
    return points.take(np.argsort(points.step, kind="stable"))


def spill(points: Points, directory: str | None) -> SortedRun:
    """Sort ``points`` by step and move them to a memory-mapped temporary file."""
    ordered = sort_by_step(points)
    json_part = ordered.value_json if ordered.value_json is not None else pa.nulls(len(ordered), pa.string())
    batch = pa.RecordBatch.from_arrays(
        [pa.array(ordered.key), pa.array(ordered.step), pa.array(ordered.ts), pa.array(ordered.value), json_part],
        schema=_SCHEMA,
    )
    if directory:
        os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="runferry-wandb-spill-", suffix=".arrow", dir=directory or None)
    try:
        with os.fdopen(fd, "wb") as sink, ipc.new_file(sink, _SCHEMA) as writer:
            writer.write_batch(batch)
        mapped = ipc.open_file(pa.memory_map(path, "r")).get_batch(0)
    finally:
        os.unlink(path)  # the mapping outlives the name
    json_column = mapped.column("value_json")
    return SortedRun(
        Points(
            mapped.column("key").to_numpy(),
            mapped.column("step").to_numpy(),
            mapped.column("ts").to_numpy(),
            mapped.column("value").to_numpy(),
            json_column if json_column.null_count < len(json_column) else None,
        )
    )


def merge_windows(runs: list[SortedRun], window_points: int) -> Iterator[Points]:
    """Every point of ``runs`` in step order (source order within a step), in windows of about
    ``window_points`` points that never split a step."""
    cursors = [0] * len(runs)
    remaining = sum(len(r) for r in runs)
    while remaining:
        hi = _window_end(runs, cursors, window_points)
        parts = []
        for i, run in enumerate(runs):
            end = cursors[i] + int(np.searchsorted(run.points.step[cursors[i] :], hi, side="left"))
            if end > cursors[i]:
                parts.append(run.points.head(end).tail(cursors[i]))
                cursors[i] = end
        window = Points.concat(parts)
        remaining -= len(window)
        yield sort_by_step(window)


def _window_end(runs: list[SortedRun], cursors: list[int], window_points: int) -> int:
    """The smallest step bound ``hi`` with at least ``window_points`` points below it (or all)."""
    heads = [r.points.step[c:] for r, c in zip(runs, cursors, strict=True)]
    lo = min(int(h[0]) for h in heads if len(h)) + 1
    hi = max(int(h[-1]) for h in heads if len(h)) + 1

    def below(bound: int) -> int:
        return sum(int(np.searchsorted(h, bound, side="left")) for h in heads)

    if below(lo) >= window_points:
        return lo
    while lo < hi:  # invariant: below(lo - 1 ...) < window_points <= below(hi) or hi is the end
        mid = (lo + hi) // 2
        if below(mid) >= window_points:
            hi = mid
        else:
            lo = mid + 1
    return hi
