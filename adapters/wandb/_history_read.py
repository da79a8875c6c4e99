"""A W&B run's full history and system-metrics stream as long points, never sampled.

History comes through ``HistoryPage`` (``history(minStep, maxStep, samples)``, maxStep
exclusive) in step windows whose ``samples`` equals the window's step count, so the server has
nothing to sample away. Windows adapt to the data: after each page the next window is scaled
so it should hold about ``page_rows`` lines (at most x8 bigger or smaller per page), so sparse
steps cost a handful of requests per gap and dense steps keep answers bounded. Scanning stops
after ``historyKeys.lastStep``. Only one page is held at a time; it becomes points a key at a
time (``_page_points``), and ``PointBatcher`` cuts the points into chunks.

Point conventions (the contract destinations rely on):

- rows in step order (stable: several lines at one step keep line order), then within a row
  one point per key, keys sorted, except ``_step`` (-> ``step``), ``_timestamp``
  (-> ``timestamp``, the float kept bit-exact; an integer is taken as its float) and
  ``_runtime`` (dropped: destinations recompute it as ``_timestamp`` - run start);
  any other key, ``_wandb`` included, is a point;
- a float -> ``value``; an int (not a bool) -> ``value`` = its float and ``value_json`` = its
  exact decimal text; anything else (bool, str, list, dict, null, media and histogram refs)
  -> ``value`` null and ``value_json`` = compact JSON (``,``/``:`` separators, non-ASCII
  kept, NaN/Infinity/-Infinity written as the SDK's bare tokens);
- then the system-metrics stream (``wandb-events.jsonl``), read whole with
  ``events(samples = eventsLineCount)``: each line's ``system.<rest>`` keys -> points
  ``system/<rest>`` (sorted), step = the line's index in the stream, timestamp = its
  ``_timestamp``; its other keys (``_runtime``, ``_wandb``...) are not points.

A row without a key besides the three above yields no point (nothing to carry). Resuming at
point ``start`` re-reads the pages before it and skips their points (W&B cannot seek by point).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from adapters.http import HttpClient
from core.model import HistoryChunk

from . import _read_ops
from ._gql import call
from ._history_exports import ExportSupport, export_batches
from ._page_points import INTERNAL_KEYS, loads, page_batch, step_order

SYSTEM_PREFIX = "system."
SYSTEM_POINT_PREFIX = "system/"
_MAX_WINDOW = 2**31 - 1  # ``samples`` is a GraphQL Int (32 bits)
_GROWTH = 8


class PointBatcher:
    """Cuts page batches into ``HistoryChunk``s of exactly ``size`` points (the last one
    smaller), skipping the first ``skip`` points (a resume) and tracking offsets exactly.
    A row that straddles a chunk boundary is cut there."""

    def __init__(self, size: int, skip: int) -> None:
        self.size = max(1, size)
        self.skip = skip
        self.offset = skip
        self.pending: list[pa.RecordBatch] = []
        self.count = 0

    def add(self, batch: pa.RecordBatch | None) -> Iterator[HistoryChunk]:
        """Take one page's points; yields the chunks they fill."""
        if batch is None or batch.num_rows == 0:
            return
        if self.skip:
            if self.skip >= batch.num_rows:
                self.skip -= batch.num_rows
                return
            batch, self.skip = batch.slice(self.skip), 0
        self.pending.append(batch)
        self.count += batch.num_rows
        while self.count >= self.size:
            yield self._chunk(self.size)

    def finish(self) -> HistoryChunk | None:
        """The points left over, as the last chunk."""
        return self._chunk(self.count) if self.count else None

    def _chunk(self, points: int) -> HistoryChunk:
        pieces: list[pa.RecordBatch] = []
        wanted = points
        while wanted:
            head = self.pending[0]
            if head.num_rows <= wanted:
                pieces.append(self.pending.pop(0))
                wanted -= head.num_rows
            else:
                pieces.append(head.slice(0, wanted))
                self.pending[0] = head.slice(wanted)
                wanted = 0
        batch = pieces[0] if len(pieces) == 1 else pa.Table.from_batches(pieces).combine_chunks().to_batches()[0]
        chunk = HistoryChunk(batch=batch, offset=self.offset)
        self.offset += points
        self.count -= points
        return chunk


def row_step(row: dict[str, Any]) -> int:
    step = row.get("_step")
    return int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else 0


def row_timestamp(row: dict[str, Any], fallback: float) -> float:
    ts = row.get("_timestamp")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else fallback


def row_steps(rows: list[dict[str, Any]]) -> np.ndarray:
    """Every row's ``_step`` (0 when it has none)."""
    raw = [row.get("_step") for row in rows]
    if set(map(type, raw)) <= {int}:
        return np.array(raw, dtype=np.int64).reshape(len(rows))
    return np.array([row_step(row) for row in rows], dtype=np.int64).reshape(len(rows))


def row_times(rows: list[dict[str, Any]], fallback: float) -> np.ndarray:
    """Every row's ``_timestamp`` as a float (``fallback`` when it has none)."""
    raw = [row.get("_timestamp") for row in rows]
    if set(map(type, raw)) <= {float}:
        return np.array(raw, dtype=np.float64).reshape(len(rows))
    return np.array([row_timestamp(row, fallback) for row in rows], dtype=np.float64).reshape(len(rows))


def history_key(key: str) -> str | None:
    """A history row key's point key: itself, unless it is ``_step``/``_timestamp``/``_runtime``."""
    return None if key in INTERNAL_KEYS else key


def system_key(key: str) -> str | None:
    """A system line's ``system.<rest>`` key as the point key ``system/<rest>``."""
    return SYSTEM_POINT_PREFIX + key[len(SYSTEM_PREFIX):] if key.startswith(SYSTEM_PREFIX) else None


def history_batch_of(rows: list[dict[str, Any]], start_time: float) -> pa.RecordBatch | None:
    """A page of history rows as points, rows in step order (stable)."""
    steps = row_steps(rows)
    if (order := step_order(steps)) is not None:
        rows, steps = [rows[i] for i in order], steps[order]
    return page_batch(rows, steps, row_times(rows, start_time), history_key)


def next_window(width: int, rows: int, page_rows: int) -> int:
    """The next step window: scaled toward ``page_rows`` lines, at most x8 either way."""
    if rows == 0:
        wanted = width * _GROWTH
    else:
        wanted = max(width // _GROWTH, min(width * _GROWTH, width * page_rows // rows))
    return max(1, min(_MAX_WINDOW, wanted))


async def history_pages(
    api: HttpClient, entity: str, project: str, run: str, last_step: int, page_rows: int, min_step: int = 0
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """The run's history rows from ``min_step`` on, one step window per page, as the server
    lists them."""
    width = max(1, page_rows)
    while min_step <= last_step:
        max_step = min(last_step + 1, min_step + width)
        data = await call(
            api,
            _read_ops.HISTORY_PAGE,
            {"entity": entity, "project": project, "run": run, "minStep": min_step, "maxStep": max_step,
             "pageSize": max_step - min_step},
            name="HistoryPage",
        )
        lines = ((data.get("project") or {}).get("run") or {}).get("history") or []
        yield [loads(line) if isinstance(line, (str, bytes)) else line for line in lines]
        width = next_window(max_step - min_step, len(lines), page_rows)
        min_step = max_step


async def event_lines(api: HttpClient, entity: str, project: str, run: str, count: int) -> list[dict[str, Any]]:
    """Every ``wandb-events.jsonl`` line, in stream order (``samples`` = the line count)."""
    if count <= 0:
        return []
    data = await call(
        api, _read_ops.RUN_EVENTS, {"entity": entity, "project": project, "run": run, "samples": count},
        name="RunEvents",
    )
    lines = ((data.get("project") or {}).get("run") or {}).get("events") or []
    return [loads(line) if isinstance(line, (str, bytes)) else line for line in lines]


async def iter_points(
    api: HttpClient,
    *,
    entity: str,
    project: str,
    run: str,
    last_step: int,
    events_count: int,
    start_time: float,
    page_rows: int,
    chunk_points: int,
    start: int,
    exports: ExportSupport | None = None,
) -> AsyncGenerator[HistoryChunk, None]:
    """History points, then system-metrics points, from point ``start`` on (module docstring).

    With ``exports``, rows the server exported to parquet come from those files and only the
    rows after them from ``HistoryPage`` (``_history_exports``); a history that fits in one
    page is not worth the extra question."""
    batcher = PointBatcher(chunk_points, start)
    first_live = 0
    if exports is not None and last_step >= page_rows:
        urls = await exports.urls(api, entity, project, run)
        if urls:
            async with contextlib.aclosing(export_batches(exports.storage, urls, start_time, chunk_points)) as exported:
                async for points, top in exported:
                    for chunk in batcher.add(points):
                        yield chunk
                    first_live = top + 1
    async for rows in history_pages(api, entity, project, run, last_step, page_rows, first_live):
        for chunk in batcher.add(history_batch_of(rows, start_time)):
            yield chunk
    if events_count:
        lines = await event_lines(api, entity, project, run, events_count)
        steps = np.arange(len(lines), dtype=np.int64)
        for chunk in batcher.add(page_batch(lines, steps, row_times(lines, start_time), system_key)):
            yield chunk
    last = batcher.finish()
    if last is not None:
        yield last
