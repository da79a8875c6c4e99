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
- Values: shortest round-trip float text, integral floats keep a ``.0`` (so ``1.0`` and
  ``-0.0`` read back as floats), NaN / Infinity / -Infinity as the SDK writes them (extended
  JSON), non-numeric values as their JSON text.

Ordering: the assembler emits lines for a step only when no later point can belong to it.
Sources that yield step-major order (steps never decrease) stream: a step is complete as soon
as a larger step arrives. Key-major sources (MLflow: one key's whole history, then the next)
are detected and buffered until ``finish()``, then sorted by step. Emitted blocks carry the
number of *source-order prefix* points they complete, so the writer's checkpoint never counts a
point whose line is not durable.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from engine.model import HISTORY_SCHEMA


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


_INT_TEXT = r"^-?\d+$"


def _float_text(values: pa.Array) -> pa.Array:
    """float64 -> JSON number text exactly as the SDK would write it (NaN/Infinity extended)."""
    text = pc.cast(values, pa.string())
    integral = pc.match_substring_regex(text, _INT_TEXT)
    text = pc.if_else(integral, pc.binary_join_element_wise(text, pa.scalar(".0"), ""), text)
    nan = pc.is_nan(values)
    inf = pc.is_inf(values)
    neg = pc.less(values, pa.scalar(0.0))
    text = pc.if_else(nan, pa.scalar("NaN"), text)
    text = pc.if_else(pc.and_(inf, neg), pa.scalar("-Infinity"), text)
    text = pc.if_else(pc.and_(inf, pc.invert(neg)), pa.scalar("Infinity"), text)
    return text


def format_float(value: float) -> str:
    """Scalar version of the float rule (summary values, tests)."""
    return _float_text(pa.array([value], pa.float64()))[0].as_py()


def encode_lines(batch: pa.RecordBatch, start_time: float, stats: AssemblyStats) -> list[str]:
    """Turn a batch that holds *complete* steps into lines, ordered by step (stable)."""
    n = batch.num_rows
    if n == 0:
        return []
    keys = batch.column("key")
    steps = batch.column("step").to_numpy(zero_copy_only=False)
    encoded = pc.dictionary_encode(keys)
    key_idx = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    position = np.arange(n, dtype=np.int64)
    # occurrence of (step, key) within its step, in source order
    by_step_key = np.lexsort((position, key_idx, steps))
    s_sorted = steps[by_step_key]
    k_sorted = key_idx[by_step_key]
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (s_sorted[1:] != s_sorted[:-1]) | (k_sorted[1:] != k_sorted[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[by_step_key] = np.arange(n) - run_start
    stats.collisions += int(np.count_nonzero(occurrence))
    # final order: step, occurrence, source position
    order = np.lexsort((position, occurrence, steps))
    steps_o = steps[order]
    occ_o = occurrence[order]
    starts_mask = np.ones(n, dtype=bool)
    starts_mask[1:] = (steps_o[1:] != steps_o[:-1]) | (occ_o[1:] != occ_o[:-1])
    starts = np.flatnonzero(starts_mask)
    ts = batch.column("timestamp").to_numpy(zero_copy_only=False)[order]
    line_ts = np.maximum.reduceat(ts, starts)
    counts = np.diff(np.append(starts, n))
    stats.timestamp_merged += int(np.count_nonzero(ts != np.repeat(line_ts, counts)))

    taken = batch.take(pa.array(order))
    key_text = pc.take(
        pa.array([orjson.dumps(k).decode() for k in encoded.dictionary.to_pylist()], pa.string()),
        pa.array(key_idx[order]),
    )
    values = taken.column("value")
    value_text = _float_text(values)
    value_json = taken.column("value_json")
    value_text = pc.if_else(pc.is_null(values), pc.fill_null(value_json, "null"), value_text)
    pairs = pc.binary_join_element_wise(key_text, value_text, ":")
    offsets = pa.array(np.append(starts, n).astype(np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), ",")
    line_steps = steps_o[starts]
    runtime = np.maximum(line_ts - start_time, 0.0)
    head = pc.binary_join_element_wise(
        pa.scalar('{"_step":'),
        pc.cast(pa.array(line_steps), pa.string()),
        pa.scalar(',"_runtime":'),
        _float_text(pa.array(runtime)),
        pa.scalar(',"_timestamp":'),
        _float_text(pa.array(line_ts)),
        pa.scalar(","),
        "",
    )
    lines = pc.binary_join_element_wise(head, joined, pa.scalar("}"), "")
    return lines.to_pylist()


@dataclass
class HistoryAssembler:
    """Collects a run's points and releases complete steps as lines (see module docstring).

    ``single_key`` tells that the run has at most one metric key, in which case every order is
    step-major and lines stream from the first chunk.
    """

    start_time: float
    single_key: bool = False
    stats: AssemblyStats = field(default_factory=AssemblyStats)
    order: Order = Order.UNDECIDED
    _pending: list[pa.RecordBatch] = field(default_factory=list)
    _pending_points: int = 0
    _max_step: int | None = None
    _emitted_max_step: int | None = None

    def __post_init__(self) -> None:
        if self.single_key:
            self.order = Order.STREAM

    @property
    def pending_points(self) -> int:
        return self._pending_points

    def add(self, batch: pa.RecordBatch) -> list[LineBlock]:
        """Take the next chunk (source order); return the blocks it completes."""
        if batch.num_rows == 0:
            return []
        steps = batch.column("step").to_numpy(zero_copy_only=False)
        monotone = bool(np.all(steps[1:] >= steps[:-1])) and (
            self._max_step is None or int(steps[0]) >= self._max_step
        )
        if not monotone:
            if self._emitted_max_step is not None and int(steps.min()) <= self._emitted_max_step:
                self.stats.out_of_order_points += int(np.count_nonzero(steps <= self._emitted_max_step))
            self.order = Order.BUFFER
        self._max_step = int(steps.max()) if self._max_step is None else max(self._max_step, int(steps.max()))
        self._pending.append(batch)
        self._pending_points += batch.num_rows
        self.stats.buffered_points_peak = max(self.stats.buffered_points_peak, self._pending_points)
        if self.order is Order.UNDECIDED and self._has_multi_key_complete_step():
            self.order = Order.STREAM
        if self.order is not Order.STREAM:
            return []
        return self._release_below(self._max_step)

    def finish(self) -> list[LineBlock]:
        """No more points: release everything still held."""
        if not self._pending:
            return []
        table = pa.Table.from_batches(self._pending, schema=HISTORY_SCHEMA).combine_chunks()
        batch = table.to_batches()[0] if table.num_rows else None
        self._pending, points = [], self._pending_points
        self._pending_points = 0
        if batch is None:
            return []
        lines = encode_lines(batch, self.start_time, self.stats)
        steps = batch.column("step")
        self._note_emitted(int(pc.max(steps).as_py()))
        return [LineBlock(lines, points, (int(pc.min(steps).as_py()), int(pc.max(steps).as_py())))]

    # -- internals --------------------------------------------------------------------------
    def _has_multi_key_complete_step(self) -> bool:
        """Evidence of step-major order: a step below the current maximum holding two keys."""
        assert self._max_step is not None
        for batch in self._pending[-2:]:
            steps = batch.column("step")
            complete = pc.less(steps, self._max_step)
            if not pc.any(complete).as_py():
                continue
            sub = batch.filter(complete)
            pairs = pa.table({"s": sub.column("step"), "k": sub.column("key")}).group_by("s").aggregate(
                [("k", "count_distinct")]
            )
            if pc.max(pairs.column("k_count_distinct")).as_py() >= 2:
                return True
        return False

    def _release_below(self, limit: int) -> list[LineBlock]:
        """Emit every pending point with step < limit (a source-order prefix in STREAM)."""
        table = pa.Table.from_batches(self._pending, schema=HISTORY_SCHEMA).combine_chunks()
        steps = table.column("step")
        cut = int(pc.sum(pc.less(steps, limit)).as_py() or 0)
        if cut == 0:
            return []
        done = table.slice(0, cut).combine_chunks().to_batches()[0]
        rest = table.slice(cut)
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_points -= cut
        lines = encode_lines(done, self.start_time, self.stats)
        first, last = int(pc.min(done.column("step")).as_py()), int(pc.max(done.column("step")).as_py())
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
