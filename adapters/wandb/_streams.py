"""History points -> two W&B streams (history lines, system-metrics lines), one resume cursor.

Why a module of its own: a source's history is one ordered sequence of points, and the ledger
counts durable points in that order; but W&B keeps system metrics apart from the history
(``wandb-events.jsonl``). Points whose key starts with the configured prefix go to the events
stream, renamed ``system.<rest>``; the others stay history. Each stream's assembler acknowledges
a prefix of *its own* points, so the source-order prefix that is durable is the longest one
whose history points and events points are both within what their streams acknowledged. This
module computes it exactly (pure; no I/O).

Resume: the checkpoint records, for the durable source prefix ``P``, how many of its points
went to each stream (``h_at`` / ``e_at``) and how many points each stream had acknowledged
(``h_points`` / ``e_points`` >= those), with each stream's next line offset. The source
restarts at ``P``; the first ``h_points - h_at`` history points and ``e_points - e_at`` events
points it yields again are already durable, so they are dropped before assembly, and each
stream continues at its own offset with exactly the points that follow its acknowledged
prefix. Since an acknowledged prefix always ends at a step boundary of its stream, the lines
that follow are the lines a run without a crash would have written: every line exactly once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVENTS_KEY_PREFIX = "system."
"""W&B's name prefix for system metrics (``system.cpu``, ``system.gpu.0.gpu``...)."""


@dataclass(slots=True)
class _Segment:
    """Received source points not yet known durable: ``n`` points from source index
    ``start``, of which the first has history index ``h_start`` / events index ``e_start``;
    ``is_event`` per point (None when all are of one stream: ``all_events`` says which)."""

    start: int
    n: int
    h_start: int
    e_start: int
    is_event: np.ndarray | None
    all_events: bool = False

    @property
    def n_events(self) -> int:
        if self.is_event is None:
            return self.n if self.all_events else 0
        return int(np.count_nonzero(self.is_event))


@dataclass(frozen=True, slots=True)
class Position:
    """A durable source prefix and how its points split between the streams."""

    points: int
    h_at: int
    e_at: int


class StreamSplit:
    """Routes points to the history or the events stream; tracks the durable source prefix.

    ``prefix`` = source key prefix of system metrics ("" = everything is history). ``resume``
    = the durable position to start from and the per-stream acknowledged counts
    (``h_points``, ``e_points``).
    """

    def __init__(self, prefix: str, *, resume: Position, h_points: int, e_points: int) -> None:
        if h_points < resume.h_at or e_points < resume.e_at:
            raise ValueError("acknowledged stream counts below the durable position")
        self.prefix = prefix
        self.durable = resume
        self.h_points, self.e_points = h_points, e_points  # acknowledged per stream
        self._received = (resume.points, resume.h_at, resume.e_at)
        self._skip_h, self._skip_e = h_points - resume.h_at, e_points - resume.e_at
        self._pending: deque[_Segment] = deque()

    def split(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
        """The next source points (in order) -> (history part, events part with keys renamed);
        points a resumed stream already holds are left out."""
        n = batch.num_rows
        start, h_start, e_start = self._received
        mask: np.ndarray | None = None
        if self.prefix and n:
            mask = pc.starts_with(batch.column("key"), self.prefix).to_numpy(zero_copy_only=False)
            if not mask.any():
                mask = None
        if mask is None:
            segment = _Segment(start, n, h_start, e_start, None, False)
            n_events = 0
        elif mask.all():
            segment = _Segment(start, n, h_start, e_start, None, True)
            n_events = n
        else:
            segment = _Segment(start, n, h_start, e_start, mask)
            n_events = int(np.count_nonzero(mask))
        self._pending.append(segment)
        self._received = (start + n, h_start + n - n_events, e_start + n_events)
        if mask is None:
            history, events = batch, None
        elif n_events == n:
            history, events = batch.slice(0, 0), batch
        else:
            arrow_mask = pa.array(mask)
            history, events = batch.filter(pc.invert(arrow_mask)), batch.filter(arrow_mask)
        history, self._skip_h = _drop_head(history, self._skip_h)
        if events is not None:
            events, self._skip_e = _drop_head(events, self._skip_e)
            events = self._renamed(events) if events.num_rows else None
        return history, events

    def _renamed(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        rest = pc.utf8_slice_codeunits(batch.column("key"), len(self.prefix))
        keys = pc.binary_join_element_wise(pa.scalar(EVENTS_KEY_PREFIX), rest, "")
        return batch.set_column(batch.schema.get_field_index("key"), batch.schema.field("key"), keys)

    def acknowledged(self, *, history: int = 0, events: int = 0) -> Position:
        """A stream acknowledged ``history`` / ``events`` more of its points: the new durable
        source prefix (the longest one both streams cover)."""
        self.h_points += history
        self.e_points += events
        while self._pending:
            seg = self._pending[0]
            h_end = seg.h_start + seg.n - seg.n_events
            e_end = seg.e_start + seg.n_events
            if h_end <= self.h_points and e_end <= self.e_points:
                self._pending.popleft()
                self.durable = Position(seg.start + seg.n, h_end, e_end)
                continue
            k = self._covered(seg)
            if k:
                is_event = None if seg.is_event is None else seg.is_event[:k]
                k_events = (k if seg.all_events else 0) if is_event is None else int(np.count_nonzero(is_event))
                self.durable = Position(seg.start + k, seg.h_start + k - k_events, seg.e_start + k_events)
                self._pending[0] = _Segment(
                    seg.start + k, seg.n - k, self.durable.h_at, self.durable.e_at,
                    None if seg.is_event is None else seg.is_event[k:], seg.all_events,
                )
            break
        return self.durable

    def _covered(self, seg: _Segment) -> int:
        """How many leading points of ``seg`` are durable (both streams cover them)."""
        spare_h = self.h_points - seg.h_start  # history points of seg that are acknowledged
        spare_e = self.e_points - seg.e_start
        if seg.is_event is None:
            return min(seg.n, spare_e if seg.all_events else spare_h)
        # the first unacknowledged point of each stream bounds the prefix
        h_index = np.flatnonzero(~seg.is_event)
        e_index = np.flatnonzero(seg.is_event)
        k_h = int(h_index[spare_h]) if spare_h < len(h_index) else seg.n
        k_e = int(e_index[spare_e]) if spare_e < len(e_index) else seg.n
        return min(k_h, k_e)

    @property
    def pending_segments(self) -> int:
        return len(self._pending)

    def state(self) -> dict[str, Any]:
        """The part of the writer's checkpoint state this module owns."""
        return {"h_at": self.durable.h_at, "e_at": self.durable.e_at, "h_points": self.h_points,
                "e_points": self.e_points}


def _drop_head(batch: pa.RecordBatch, count: int) -> tuple[pa.RecordBatch, int]:
    """Drop up to ``count`` leading rows; returns the rest and how many are still to drop."""
    if count <= 0:
        return batch, 0
    dropped = min(count, batch.num_rows)
    return batch.slice(dropped), count - dropped
