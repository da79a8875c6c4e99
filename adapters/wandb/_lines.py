"""History points (long Arrow batches) -> W&B history lines, vectorised.

Why a module of its own: this is the hot path of every MLflow -> W&B migration, and its rules
decide what "exact" means, so they live in one pure, testable place (no I/O here).

Rules (documented in the package docstring too):

- One line per step: ``{"_step": s, "_runtime": r, "_timestamp": t, <key>: <value>, ...}``.
- **Collisions.** When a key has several values at one step (MLflow allows it), the k-th value
  of that key goes to the k-th line of that step: a step with collisions becomes several
  lines with the same ``_step``; nothing is dropped. Points with k > 0 are counted as
  collisions.
- ``_timestamp`` of a line is the latest timestamp of its points (float seconds, bit-exact
  shortest text). Points whose own timestamp differs from their line's are counted as
  ``timestamp_merged`` (W&B keeps one timestamp per line).
- ``_runtime`` = ``_timestamp`` - run start (never negative).
- System-metrics lines (``wandb-events.jsonl``, an assembler with ``events=True``) follow the
  same rules but carry ``"_wandb": true`` instead of ``_step``, as the SDK writes them: the
  step only groups a sample's points into one line.
- Values: shortest round-trip float text, integral floats keep a ``.0`` (so ``1.0`` and
  ``-0.0`` read back as floats), NaN / Infinity / -Infinity as the SDK writes them (extended
  JSON), non-numeric values as their JSON text.

Ordering: the assembler emits lines for a step only when no later point can belong to it.
Sources that yield step-major order (steps never decrease) stream: a step is complete as soon
as a larger step arrives. Key-major sources (MLflow: one key's whole history, then the next)
are detected and buffered until ``finish()``, then sorted by step; beyond ``spill_points``
held points go to sorted runs on disk (``_spill``) and are merged back in step windows, so memory
stays flat however long the run. Emitted blocks carry the
number of *source-order prefix* points they complete, so the writer's checkpoint never counts a
point whose line is not durable.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ._points import Points
from ._spill import SortedRun, merge_windows, sort_by_step, spill


class Order(enum.Enum):
    """What the assembler knows about the source's point order."""

    UNDECIDED = "undecided"  # monotone so far, but no evidence that steps are complete
    STREAM = "stream"  # step-major: a step is complete when a larger one arrives
    BUFFER = "buffer"  # not step-major: hold everything until finish()


@dataclass(slots=True)
class LineBlock:
    """Encoded lines plus how many source points (counted from the run's history start of
    this session) are complete once these lines are durable. ``points`` is 0 for blocks that
    do not complete a source-order prefix."""

    lines: list[str]
    points: int
    steps: tuple[int, int] | None = None  # first and last _step, for logs and tests


@dataclass(slots=True)
class AssemblyStats:
    collisions: int = 0
    timestamp_merged: int = 0
    out_of_order_points: int = 0
    buffered_points_peak: int = 0


def _float_text(values: pa.Array | np.ndarray) -> pa.Array:
    """float64 -> JSON number text that parses back to the same double (NaN/Infinity extended,
    as the SDK writes them).

    Arrow's cast gives the shortest round-trip digits; integral values come out without a
    fraction ("1", "-0"), so ``.0`` is appended where the text has neither "." nor "e". The
    notation is Arrow's, not Python's ``repr``: some exponents are written differently
    (``0.00001`` for ``1e-05``, ``1e+15`` for ``1000000000000000.0``), the value never.
    """
    array = values if isinstance(values, np.ndarray) else values.to_numpy(zero_copy_only=False)
    array = np.asarray(array, dtype=np.float64)
    text = pc.cast(pa.array(array), pa.string())
    finite = np.isfinite(array)
    needs_fraction = pc.and_(
        pc.invert(pc.or_(pc.match_substring(text, "."), pc.match_substring(text, "e"))), pa.array(finite)
    )
    text = pc.if_else(needs_fraction, pc.binary_join_element_wise(text, pa.scalar(".0"), ""), text)
    if not finite.all():
        special = np.where(np.isnan(array), "NaN", np.where(array > 0, "Infinity", "-Infinity"))
        text = pc.if_else(pa.array(finite), text, pa.array(special.astype(object), pa.string()))
    return text


def format_float(value: float) -> str:
    """Scalar version of the float rule (summary values, tests)."""
    text: str = _float_text(pa.array([value], pa.float64()))[0].as_py()
    return text


class KeyTable:
    """Metric names seen in a run -> small integer ids, and each name as JSON text."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._json: list[str] = []
        self._json_array: pa.Array | None = None

    def encode(self, keys: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(keys)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        mapping = np.empty(len(encoded.dictionary), dtype=np.int32)
        for i, name in enumerate(encoded.dictionary.to_pylist()):
            index = self._ids.get(name)
            if index is None:
                index = self._ids[name] = len(self._json)
                self._json.append(orjson.dumps(name).decode())
                self._json_array = None
            mapping[i] = index
        decoded: np.ndarray = mapping[encoded.indices.to_numpy(zero_copy_only=False)]
        return decoded

    def json_texts(self) -> pa.Array:
        if self._json_array is None:
            self._json_array = pa.array(self._json, pa.string())
        return self._json_array

    def __len__(self) -> int:
        return len(self._json)


def points_from_batch(batch: pa.RecordBatch, keys: KeyTable) -> Points:
    value_json = batch.column("value_json")
    return Points(
        keys.encode(batch.column("key")),
        batch.column("step").to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
        batch.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
        batch.column("value").to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
        value_json if value_json.null_count < len(value_json) else None,
    )


def encode_lines(batch: pa.RecordBatch, start_time: float, stats: AssemblyStats) -> list[str]:
    """Turn a batch that holds *complete* steps into lines, ordered by step (stable)."""
    keys = KeyTable()
    return encode_points(points_from_batch(batch, keys), keys, start_time, stats)


def encode_points(
    points: Points, keys: KeyTable, start_time: float, stats: AssemblyStats, *, events: bool = False
) -> list[str]:
    """Lines for points that hold *complete* steps, ordered by step (stable); ``events``:
    system-metrics lines (``"_wandb": true``, no ``_step``)."""
    n = len(points)
    if n == 0:
        return []
    steps, key_idx = points.step, points.key.astype(np.int64)
    d_step = np.diff(steps)
    if bool(np.all((d_step > 0) | ((d_step == 0) & (np.diff(key_idx) > 0)))):
        # fast path (step-major sources): sorted by step, keys strictly increasing within a
        # step, hence no collisions and the source order is already the line order
        order = np.arange(n, dtype=np.int64)
        occ_o = np.zeros(n, dtype=np.int64)
    else:
        position = np.arange(n, dtype=np.int64)
        # occurrence of (step, key) within its step, in source order
        by_step_key = np.lexsort((position, key_idx, steps))
        s_sorted = steps[by_step_key]
        k_sorted = key_idx[by_step_key]
        new_run = np.ones(n, dtype=bool)
        new_run[1:] = (s_sorted[1:] != s_sorted[:-1]) | (k_sorted[1:] != k_sorted[:-1])
        run_start = np.maximum.accumulate(np.where(new_run, position, 0))
        occurrence = np.empty(n, dtype=np.int64)
        occurrence[by_step_key] = position - run_start
        stats.collisions += int(np.count_nonzero(occurrence))
        # final order: step, occurrence, source position
        order = np.lexsort((position, occurrence, steps))
        occ_o = occurrence[order]
    steps_o = steps[order]
    starts_mask = np.ones(n, dtype=bool)
    starts_mask[1:] = (steps_o[1:] != steps_o[:-1]) | (occ_o[1:] != occ_o[:-1])
    starts = np.flatnonzero(starts_mask)
    ts = points.ts[order]
    line_ts = np.maximum.reduceat(ts, starts)
    counts = np.diff(np.append(starts, n))
    stats.timestamp_merged += int(np.count_nonzero(ts != np.repeat(line_ts, counts)))

    key_text = pc.take(keys.json_texts(), pa.array(points.key[order]))
    value_text = _float_text(pa.array(points.value[order]))
    if points.value_json is not None:
        value_json = points.value_json.take(pa.array(order))
        value_text = pc.if_else(pc.is_null(value_json), value_text, value_json)
    pairs = pc.binary_join_element_wise(key_text, value_text, ":")
    offsets = pa.array(np.append(starts, n).astype(np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), ",")
    line_steps = steps_o[starts]
    runtime = np.maximum(line_ts - start_time, 0.0)
    if events:
        lead = [pa.scalar('{"_wandb":true')]
    else:
        lead = [pa.scalar('{"_step":'), pc.cast(pa.array(line_steps), pa.string())]
    head = pc.binary_join_element_wise(
        *lead,
        pa.scalar(',"_runtime":'),
        _float_text(pa.array(runtime)),
        pa.scalar(',"_timestamp":'),
        _float_text(pa.array(line_ts)),
        pa.scalar(","),
        "",
    )
    lines = pc.binary_join_element_wise(head, joined, pa.scalar("}"), "")
    texts: list[str] = lines.to_pylist()
    return texts


@dataclass
class HistoryAssembler:
    """Collects a run's points and releases complete steps as lines (see module docstring).

    ``single_key`` tells that the run has at most one metric key, in which case every order is
    step-major and lines stream from the first chunk. Buffered points are held compactly
    (about 28 bytes each); ``finish()`` releases them in step windows of ``window_points``.
    ``events`` makes system-metrics lines (see ``encode_points``).
    """

    start_time: float
    single_key: bool = False
    window_points: int = 200_000
    spill_points: int = 1_000_000  # held points beyond this go to a sorted run on disk
    spill_dir: str | None = None
    events: bool = False
    stats: AssemblyStats = field(default_factory=AssemblyStats)
    order: Order = Order.UNDECIDED
    keys: KeyTable = field(default_factory=KeyTable)
    _pending: list[Points] = field(default_factory=list)
    _pending_points: int = 0
    _spilled: list[Any] = field(default_factory=list)
    _spilled_points: int = 0
    _max_step: int | None = None
    _emitted_max_step: int | None = None

    def __post_init__(self) -> None:
        if self.single_key:
            self.order = Order.STREAM

    @property
    def pending_points(self) -> int:
        return self._pending_points

    @property
    def held_points(self) -> int:
        """Points ``finish()`` still has to release, in memory or spilled to disk."""
        return self._pending_points + self._spilled_points

    def add(self, batch: pa.RecordBatch) -> list[LineBlock]:
        """Take the next chunk (source order); return the blocks it completes."""
        if batch.num_rows == 0:
            return []
        points = points_from_batch(batch, self.keys)
        steps = points.step
        monotone = bool(np.all(steps[1:] >= steps[:-1])) and (
            self._max_step is None or int(steps[0]) >= self._max_step
        )
        if not monotone:
            if self._emitted_max_step is not None and int(steps.min()) <= self._emitted_max_step:
                self.stats.out_of_order_points += int(np.count_nonzero(steps <= self._emitted_max_step))
            self.order = Order.BUFFER
        high = int(steps.max())
        self._max_step = high if self._max_step is None else max(self._max_step, high)
        self._pending.append(points)
        self._pending_points += len(points)
        self.stats.buffered_points_peak = max(self.stats.buffered_points_peak, self._pending_points)
        if self.order is Order.UNDECIDED and self._has_multi_key_complete_step():
            self.order = Order.STREAM
        if self.order is Order.BUFFER and self._pending_points > self.spill_points:
            self._spilled.append(spill(Points.concat(self._pending), self.spill_dir))
            self._spilled_points += self._pending_points
            self._pending, self._pending_points = [], 0
        if self.order is not Order.STREAM:
            return []
        return self._release_below(self._max_step)

    def finish(self) -> Iterator[LineBlock]:
        """No more points: release everything still held, in step windows. Only the last
        block counts the held points (they are not a source-order prefix before that)."""
        if self._spilled:
            yield from self._finish_spilled()
            return
        if not self._pending:
            return
        points = Points.concat(self._pending)
        total = self._pending_points
        self._pending, self._pending_points = [], 0
        order = np.argsort(points.step, kind="stable")
        sorted_steps = points.step[order]
        start = 0
        n = len(order)
        while start < n:
            end = min(n, start + self.window_points)
            if end < n:  # never split a step: extend to the end of the step at the boundary
                end = int(np.searchsorted(sorted_steps, sorted_steps[end - 1], side="right"))
            window = points.take(order[start:end])
            lines = encode_points(window, self.keys, self.start_time, self.stats, events=self.events)
            first, last = int(sorted_steps[start]), int(sorted_steps[end - 1])
            self._note_emitted(last)
            yield LineBlock(lines, total if end == n else 0, (first, last))
            start = end

    # -- internals --------------------------------------------------------------------------
    def _finish_spilled(self) -> Iterator[LineBlock]:
        """Merge the sorted runs on disk with what is still in memory, window by window."""
        runs = list(self._spilled)
        if self._pending:
            runs.append(SortedRun(sort_by_step(Points.concat(self._pending))))
        total = self._spilled_points + self._pending_points
        self._spilled, self._spilled_points, self._pending, self._pending_points = [], 0, [], 0
        emitted = 0
        for window in merge_windows(runs, self.window_points):
            emitted += len(window)
            lines = encode_points(window, self.keys, self.start_time, self.stats, events=self.events)
            first, last = int(window.step[0]), int(window.step[-1])
            self._note_emitted(last)
            yield LineBlock(lines, total if emitted == total else 0, (first, last))

    def _has_multi_key_complete_step(self) -> bool:
        """Evidence of step-major order: a step below the current maximum holding two keys."""
        assert self._max_step is not None
        recent = Points.concat(self._pending[-2:])
        complete = recent.step < self._max_step
        if not complete.any():
            return False
        steps, keys = recent.step[complete], recent.key[complete]
        boundaries = np.flatnonzero(np.diff(steps)) + 1  # monotone here, so steps come in runs
        for group in np.split(keys, boundaries):
            if len(group) > 1 and (group != group[0]).any():
                return True
        return False

    def _release_below(self, limit: int) -> list[LineBlock]:
        """Emit every pending point with step < limit (a source-order prefix in STREAM)."""
        points = Points.concat(self._pending)
        cut = int(np.searchsorted(points.step, limit, side="left"))
        if cut == 0:
            self._pending = [points]
            return []
        done = points.head(cut)
        rest = points.tail(cut)
        self._pending = [rest] if len(rest) else []
        self._pending_points -= cut
        lines = encode_points(done, self.keys, self.start_time, self.stats, events=self.events)
        first, last = int(done.step[0]), int(done.step[-1])
        self._note_emitted(last)
        return [LineBlock(lines, cut, (first, last))]

    def _note_emitted(self, step: int) -> None:
        self._emitted_max_step = step if self._emitted_max_step is None else max(self._emitted_max_step, step)


def iter_request_slices(lines: list[str], max_bytes: int) -> Iterable[tuple[int, int]]:
    """Split lines into [start, end) windows whose JSON content stays under ``max_bytes``
    (a single line larger than that goes alone; the server decides about it)."""
    start, size = 0, 0
    for i, line in enumerate(lines):
        cost = len(line) + 4  # quotes and comma around the JSON string
        cost += line.count('"')  # every inner quote is escaped in the JSON string
        if i > start and size + cost > max_bytes:
            yield start, i
            start, size = i, 0
        size += cost
    if start < len(lines):
        yield start, len(lines)
