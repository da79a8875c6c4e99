"""Run admission by memory budget and endpoint headroom, instead of a fixed number of runs.

Why: a fixed count is wrong both ways. Thousands of small runs leave every endpoint idle at 4 in
flight (W&B paces each run's file_stream to ~2 requests/s, so throughput comes from many runs at
once), while a few huge runs need the count low to bound memory. So the pipeline bounds what
actually costs:

- ``MemoryBudget``: bytes of history chunks (their Arrow buffers) and file pieces in flight.
  A reader reserves a chunk's bytes before handing it on and the writer's side releases them
  when the writer is done with it; file pieces likewise. A run holding nothing beyond its seat
  may overdraw by one item, so every admitted run always progresses (no deadlock); the overshoot
  is at most one chunk or piece per run.
- ``Admission``: the next run starts while (a) the budget has room for one more run's seat (its
  metadata plus the history chunk its source is building: a full chunk until runs were seen,
  then the largest chunk of the last ``SEAT_WINDOW`` runs, so a sweep of 200-point runs does not
  reserve 100,000 points each) and nothing waits for memory, (b) no
  endpoint the migration talks to is paused, throttled or saturated (read from the shared
  ``ratelimit`` registry), and (c) the cap (``runs_concurrency``, or ``AUTO_RUNS_CEILING``)
  allows. With nothing in flight a run is always admitted. Waiting happens before a run is
  touched, so cancellation while waiting leaves nothing half-started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import anyio
import anyio.lowlevel

from ratelimit import Clock, LimiterStatistics, MonotonicClock

AUTO_RUNS_CEILING = 64
"""Runs in flight at most when ``runs_concurrency`` is 0 (automatic)."""

RUN_OVERHEAD_BYTES = 256 * 1024
"""What a run in flight costs beyond its chunks: metadata, the writer's buffers and requests."""

BYTES_PER_POINT = 48
"""Arrow bytes of one history point before any chunk was seen (key, step, timestamp, value)."""

SEAT_WINDOW = 16
"""Recent runs whose largest history chunk sizes the next run's seat."""

ENDPOINT_POLL_SECONDS = 0.1
"""How often a waiting admission looks at the limiters again (they have no change signal)."""

ENDPOINT_BACKLOG_SECONDS = 0.3
"""Requests a paced endpoint may have waiting for their turns before admission holds new runs,
in seconds of its pace: enough that the turns until admission looks again and a new run's way
to the endpoint (its source read) are not lost, which no later request can take back."""


def run_seat_bytes(chunk_points: int, history_points: int | None = None) -> int:
    """A run's seat before its first chunk: overhead plus the chunk its source may be building.
    A run that says how many points it has reserves for those, not for a full chunk."""
    points = chunk_points if history_points is None else min(chunk_points, max(0, history_points))
    return RUN_OVERHEAD_BYTES + points * BYTES_PER_POINT


def endpoint_blocker(statistics: Iterable[LimiterStatistics]) -> str | None:
    """The first endpoint without headroom and why, or None: paused by the server (Retry-After,
    exhausted quota), throttled (paced after 429s with more requests queued for their turn than
    the pace clears before admission looks again: a request or two waiting a few milliseconds at
    80/s is the pace working, not a backlog), or saturated (a whole concurrency window queued
    behind the one in flight)."""
    for s in statistics:
        if s.paused_for > 0:
            return f"{s.endpoint} paused"
        if s.rate_limit is not None and s.waiting > s.rate_limit * ENDPOINT_BACKLOG_SECONDS:
            return f"{s.endpoint} throttled"
        if s.waiting >= s.concurrency_limit:
            return f"{s.endpoint} saturated"
    return None


class _Changed:
    """Wakes every task waiting for "something changed" (a condition without a lock)."""

    def __init__(self) -> None:
        self._events: list[anyio.Event] = []

    def notify(self) -> None:
        events, self._events = self._events, []
        for event in events:
            event.set()

    async def wait(self) -> None:
        event = anyio.Event()
        self._events.append(event)
        await event.wait()


def _never() -> bool:
    return False


class MemoryBudget:
    """Bytes in flight, shared by every run; FIFO waiters (see the module docstring).

    A waiter may say when it may overdraw (``may_overdraw``: its run holds nothing else any
    more); it is then served at once, out of turn. Without that, runs whose seats were trued up
    past the limit, each waiting for its next chunk after its last one was written, would wait
    for each other forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._queue: deque[tuple[int, anyio.Event, Callable[[], bool]]] = deque()
        self.changed = _Changed()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def fits(self, nbytes: int) -> bool:
        return self.used == 0 or self.used + nbytes <= self.limit

    async def take(self, nbytes: int, *, overdraft: bool = False, may_overdraw: Callable[[], bool] = _never) -> None:
        """Wait until ``nbytes`` fit (or take them at once with ``overdraft``, or as soon as
        ``may_overdraw()`` turns true), then hold them."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if overdraft or (not self._queue and self.fits(nbytes)):
            self.used += nbytes
            return
        item = (nbytes, anyio.Event(), may_overdraw)
        self._queue.append(item)
        try:
            await item[1].wait()
        except BaseException:
            if item[1].is_set():
                self.give(nbytes)  # they were handed to us as we were cancelled
            else:
                self._queue.remove(item)
                self._wake()
            raise

    def give(self, nbytes: int) -> None:
        """Return ``nbytes`` (also used to true up an estimate: negative takes without waiting)."""
        self.used -= nbytes
        self._wake()

    def _wake(self) -> None:
        for item in [item for item in self._queue if item[2]()]:
            self._queue.remove(item)
            self._grant(item)
        while self._queue and self.fits(self._queue[0][0]):
            self._grant(self._queue.popleft())
        self.changed.notify()

    def _grant(self, item: tuple[int, anyio.Event, Callable[[], bool]]) -> None:
        self.used += item[0]
        item[1].set()


class RunAccount:
    """One admitted run's share of the budget: its seat plus the chunks and pieces it holds.
    ``close()`` returns everything still held (a failed run leaks nothing)."""

    def __init__(self, budget: MemoryBudget, seat: int) -> None:
        self.budget = budget
        self.seat = seat
        self.held = 0  # beyond the seat
        self._overdrawing = False

    async def reserve(self, nbytes: int) -> None:
        """Hold ``nbytes`` more; waits for the budget unless this run holds nothing else (also
        once it has released everything while waiting)."""
        await self.budget.take(nbytes, overdraft=self.held == 0, may_overdraw=self._may_overdraw)
        self._overdrawing = False
        self.held += nbytes

    def _may_overdraw(self) -> bool:
        """True for one waiting reservation once the run holds nothing (one overdraft at a time)."""
        if self.held == 0 and not self._overdrawing:
            self._overdrawing = True
            return True
        return False

    def release(self, nbytes: int) -> None:
        self.held -= nbytes
        self.budget.give(nbytes)

    def resize_seat(self, seat: int) -> None:
        """Set the seat to what the run now needs (smaller once its chunk size is known)."""
        self.budget.give(self.seat - seat)
        self.seat = seat

    def close(self) -> None:
        self.budget.give(self.seat + self.held)
        self.seat = self.held = 0


class Admission:
    """Decides when the next run may start (see the module docstring)."""

    def __init__(
        self,
        budget: MemoryBudget,
        *,
        cap: int,
        seat_bytes: int,
        endpoints: Callable[[], Iterable[LimiterStatistics]] | None = None,
        clock: Clock | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.budget = budget
        self.cap = cap
        self.first_seat = seat_bytes
        self._recent_chunks: deque[int] = deque(maxlen=SEAT_WINDOW)
        self.endpoints = endpoints
        self.clock = clock or MonotonicClock()
        self.on_wait = on_wait
        self.in_flight = 0
        self.waiting_on: str | None = None  # what the next run waits for now, for progress

    @property
    def seat_bytes(self) -> int:
        """What the next run reserves: a full chunk at first, then what recent runs needed."""
        if not self._recent_chunks:
            return self.first_seat
        return RUN_OVERHEAD_BYTES + max(self._recent_chunks)

    def observe_chunk(self, nbytes: int) -> None:
        """A run's largest history chunk so far (its first, or 0 for a run without history)."""
        self._recent_chunks.append(nbytes)

    def blocker(self) -> str | None:
        """Why the next run cannot start now (``cap``, ``memory``, ``endpoint <url> <why>``)."""
        if self.in_flight == 0:
            return None
        if self.in_flight >= self.cap:
            return "cap"
        if self.budget.waiting or self.budget.used + self.seat_bytes > self.budget.limit:
            return "memory"
        if self.endpoints is not None:
            endpoint = endpoint_blocker(self.endpoints())
            if endpoint is not None:
                return f"endpoint {endpoint}"
        return None

    async def admit(self) -> RunAccount:
        """Wait until a run may start; the caller must ``finished()`` the account it gets."""
        while True:
            await anyio.lowlevel.checkpoint_if_cancelled()
            reason = self.blocker()
            if reason is None:
                break
            if reason != self.waiting_on:
                self.waiting_on = reason
                if self.on_wait is not None:
                    self.on_wait(reason)
            if reason.startswith("endpoint"):
                await self.clock.sleep(ENDPOINT_POLL_SECONDS)  # limiters do not signal changes
            else:
                await self.budget.changed.wait()
        self.waiting_on = None
        seat = self.seat_bytes
        self.budget.used += seat  # checked to fit above; nothing awaited since
        self.in_flight += 1
        return RunAccount(self.budget, seat)

    def finished(self, account: RunAccount) -> None:
        account.close()
        self.in_flight -= 1
        self.budget.changed.notify()

    def figures(self) -> dict[str, object]:
        """Live figures for progress: runs in flight, the cap, memory in use, what admission waits on."""
        return {
            "runs_in_flight": self.in_flight,
            "runs_cap": self.cap,
            "memory_used": self.budget.used,
            "memory_budget": self.budget.limit,
            "admission_waits_on": self.waiting_on,
        }
