"""A W&B run's full history and system-metrics stream as long points, never sampled.

History comes through ``HistoryPage`` (``history(minStep, maxStep, samples)``, maxStep
exclusive) in step windows whose ``samples`` equals the window's step count, so the server has
nothing to sample away. Windows adapt to the data: after each page the next window is scaled
so it should hold about ``page_rows`` lines (at most x8 bigger or smaller per page), so sparse
steps cost a handful of requests per gap and dense steps keep answers bounded. Scanning stops
after ``historyKeys.lastStep``. Only one page is held at a time.

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

import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import numpy as np
import orjson

from adapters.http import HttpClient
from core.model import HistoryChunk, history_batch

from . import _read_ops
from ._gql import call

INTERNAL_KEYS = frozenset({"_step", "_timestamp", "_runtime"})
SYSTEM_PREFIX = "system."
SYSTEM_POINT_PREFIX = "system/"
_MAX_WINDOW = 2**31 - 1  # ``samples`` is a GraphQL Int (32 bits)
_GROWTH = 8


def loads(text: str | bytes) -> Any:
    """One JSON document as W&B writes it: orjson when it can, the standard parser for the
    SDK's bare ``NaN``/``Infinity`` tokens and integers beyond 64 bits (both keep floats
    bit-exact and integers as integers)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def value_json(value: Any) -> str:
    """Compact JSON text of a non-float value, as the SDK would read it back."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def split_value(value: Any) -> tuple[float | None, str | None]:
    """``(value, value_json)`` of one history value (see the module docstring)."""
    if isinstance(value, float):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value), str(value)
        except OverflowError:  # beyond float range: the exact text only
            return None, str(value)
    return None, value_json(value)


class ChunkBuilder:
    """Collects points into ``HISTORY_SCHEMA`` chunks of ``size`` rows, skipping the first
    ``skip`` points (a resume), and tracks each chunk's offset exactly.

    Points arrive a row at a time (one step and timestamp, many keys): keys and values are
    appended in bulk, steps and timestamps kept once per row and repeated when a chunk is
    built, and only values that are not floats go through ``split_value``. A row that straddles a chunk
    boundary is cut there, so every chunk but the last holds exactly ``size`` points."""

    def __init__(self, size: int, skip: int) -> None:
        self.size = max(1, size)
        self.skip = skip
        self.offset = skip
        self._reset()

    def _reset(self) -> None:
        self.keys: list[str] = []
        self.values: list[float | None] = []
        self.texts: list[str | None] = []
        self.row_steps: list[int] = []
        self.row_times: list[float] = []
        self.row_sizes: list[int] = []

    def add_row(self, step: int, timestamp: float, keys: list[str], values: list[Any]) -> Iterator[HistoryChunk]:
        """Add one row's points (``keys[i]`` -> ``values[i]``); yields the chunks it fills."""
        if self.skip:
            if self.skip >= len(keys):
                self.skip -= len(keys)
                return
            keys, values, self.skip = keys[self.skip:], values[self.skip:], 0
        while keys:
            room = self.size - len(self.keys)
            if len(keys) > room:
                self._extend(step, timestamp, keys[:room], values[:room])
                keys, values = keys[room:], values[room:]
            else:
                self._extend(step, timestamp, keys, values)
                keys = []
            if len(self.keys) >= self.size:
                chunk = self.emit()
                if chunk is not None:
                    yield chunk

    def _extend(self, step: int, timestamp: float, keys: list[str], values: list[Any]) -> None:
        n, base = len(keys), len(self.values)
        self.keys.extend(keys)
        self.values.extend(values)
        self.texts.extend([None] * n)
        for i in [i for i, v in enumerate(values) if type(v) is not float]:  # ints, text, media...
            self.values[base + i], self.texts[base + i] = split_value(values[i])
        self.row_steps.append(step)
        self.row_times.append(timestamp)
        self.row_sizes.append(n)

    def emit(self) -> HistoryChunk | None:
        if not self.keys:
            return None
        sizes = np.array(self.row_sizes, dtype=np.int64)
        steps = np.repeat(np.array(self.row_steps, dtype=np.int64), sizes)
        times = np.repeat(np.array(self.row_times, dtype=np.float64), sizes)
        batch = history_batch(self.keys, steps, times, self.values, self.texts)
        chunk = HistoryChunk(batch=batch, offset=self.offset)
        self.offset += batch.num_rows
        self._reset()
        return chunk


def row_step(row: dict[str, Any]) -> int:
    step = row.get("_step")
    return int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else 0


def row_timestamp(row: dict[str, Any], fallback: float) -> float:
    ts = row.get("_timestamp")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else fallback


def history_points(row: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """A history row's point keys (sorted) and their values."""
    keys = sorted(k for k in row if k not in INTERNAL_KEYS)
    return keys, [row[k] for k in keys]


def system_points(line: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """A system line's ``system.<rest>`` keys as ``system/<rest>`` point keys (sorted), values."""
    names = sorted(k for k in line if k.startswith(SYSTEM_PREFIX))
    return [SYSTEM_POINT_PREFIX + k[len(SYSTEM_PREFIX):] for k in names], [line[k] for k in names]


def next_window(width: int, rows: int, page_rows: int) -> int:
    """The next step window: scaled toward ``page_rows`` lines, at most x8 either way."""
    if rows == 0:
        wanted = width * _GROWTH
    else:
        wanted = max(width // _GROWTH, min(width * _GROWTH, width * page_rows // rows))
    return max(1, min(_MAX_WINDOW, wanted))


async def history_pages(
    api: HttpClient, entity: str, project: str, run: str, last_step: int, page_rows: int
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """The run's history rows, one step window per page, each page sorted by step (stable)."""
    min_step, width = 0, max(1, page_rows)
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
        rows = [loads(line) if isinstance(line, (str, bytes)) else line for line in lines]
        rows.sort(key=row_step)
        yield rows
        width = next_window(max_step - min_step, len(rows), page_rows)
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
) -> AsyncGenerator[HistoryChunk, None]:
    """History points, then system-metrics points, from point ``start`` on (module docstring)."""
    builder = ChunkBuilder(chunk_points, start)
    async for rows in history_pages(api, entity, project, run, last_step, page_rows):
        for row in rows:
            for chunk in builder.add_row(row_step(row), row_timestamp(row, start_time), *history_points(row)):
                yield chunk
    if events_count:
        for index, line in enumerate(await event_lines(api, entity, project, run, events_count)):
            for chunk in builder.add_row(index, row_timestamp(line, start_time), *system_points(line)):
                yield chunk
    last = builder.emit()
    if last is not None:
        yield last
