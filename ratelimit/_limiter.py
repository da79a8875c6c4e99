"""The mechanism that applies a policy: concurrency slots, pacing, pauses, live figures.

One ``EndpointLimiter`` per endpoint is shared by every worker talking to it. A request holds a
*slot* for its whole exchange::

    async with limiter.slot() as ticket:
        response = await send()
        ticket.throttled(retry_after=2.0)   # or .success() / .failed() / nothing (no signal)

Entering waits for (1) a concurrency slot, (2) the end of any server-requested pause, and
(3) its pacing turn; leaving feeds the outcome to the pure policy and frees the slot.
Pacing is GCRA (a token bucket without a timer): each request reserves the next start time
``1/rate`` after the previous one, with ``burst_seconds`` of tolerance. A rate decrease
re-paces the turns already reserved: they are taken again at the new rate, without a burst.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from ._clock import Clock, MonotonicClock
from ._meter import RateMeter
from ._policy import (
    ControlConfig,
    ControlState,
    Outcome,
    OutcomeKind,
    apply_quota,
    backoff_delay,
    concurrency_limit,
    effective_rate,
    initial_state,
    next_state,
    pacing_tolerance,
    spend_retry,
)


def measured_outcome(
    kind: OutcomeKind, now: float, started_at: float, *, in_flight: int, accepted: RateMeter, attempts: RateMeter,
    retry_after: float | None,
) -> Outcome:
    """A request's outcome with the meters' figures at ``now`` (a success counted in ``accepted``
    first; the whole-window rate only for a throttle, the one outcome the policy reads it for)."""
    if kind is OutcomeKind.SUCCESS:
        accepted.add(now)
    return Outcome(
        kind=kind,
        now=now,
        started_at=started_at,
        in_flight=in_flight,
        accepted_rate=accepted.rate(now),
        retry_after=retry_after,
        attempt_rate=attempts.rate(now),
        window_accepted_rate=accepted.window_rate(now) if kind is OutcomeKind.THROTTLE else None,
    )


class AdjustableSemaphore:
    """A FIFO semaphore whose capacity can change while tasks hold or wait for it.

    Raising the limit admits waiters at once; lowering it lets holders drain (anyio's
    ``CapacityLimiter.total_tokens`` semantics, without its per-task borrower rule).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    async def acquire(self) -> None:
        """Take a slot; a checkpoint only when it has to wait (as ``asyncio.Semaphore``: the
        uncontended path costs nothing, and ``EndpointLimiter.slot`` checkpoints in its pacing
        turn right after; anyio's ``checkpoint_if_cancelled`` here was 5 % of a small PUT's CPU)."""
        if self._used < self._limit and not self._waiters:
            self._used += 1
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # the slot was handed to us as we were cancelled
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        self._used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used < self._limit:
            self._used += 1
            self._waiters.popleft().set()


@dataclass(frozen=True, kw_only=True)
class LimiterStatistics:
    """A snapshot of one endpoint's controller, for progress bars, logs and bench plots."""

    endpoint: str
    time: float
    concurrency_limit: int
    in_flight: int
    waiting: int
    rate_limit: float | None  # requests/s we pace to; None = unpaced
    accepted_rate: float  # successes/s measured
    attempt_rate: float  # requests started/s measured
    paused_for: float
    successes: int
    throttles: int
    failures: int
    retries: int
    retries_refused: int
    budget: float
    delayed: int = 0  # admissions that waited for a pacing turn or a pause (not for a slot)


class Ticket:
    """One request's pass through the limiter; the holder reports how it ended.

    ``started_at`` is when it was sent; ``paced_at`` when its pacing turn was decided, i.e.
    under which controller state it went out (what "sent before the last decrease" means).
    """

    __slots__ = ("kind", "paced_at", "retry_after", "started_at")

    def __init__(self, started_at: float, paced_at: float | None = None) -> None:
        self.started_at = started_at
        self.paced_at = started_at if paced_at is None else paced_at
        self.kind = OutcomeKind.NEUTRAL
        self.retry_after: float | None = None

    def success(self) -> None:
        self.kind = OutcomeKind.SUCCESS

    def throttled(self, retry_after: float | None = None) -> None:
        self.kind = OutcomeKind.THROTTLE
        self.retry_after = retry_after

    def failed(self) -> None:
        self.kind = OutcomeKind.TRANSIENT


class EndpointLimiter:
    """Adaptive concurrency and pacing for one endpoint (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        config: ControlConfig | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config or ControlConfig()
        self.clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        now = self.clock.now()
        self._state = initial_state(self.config, now)
        self._slots = AdjustableSemaphore(concurrency_limit(self._state))
        self._next_start = now  # GCRA theoretical arrival time
        self._last_turn = now  # when the last turn was given
        self._sending = 0
        self._accepted = RateMeter(self.config.meter_window)
        self._attempts = RateMeter(self.config.meter_window)
        self._answered = RateMeter(self.config.meter_window)  # every answer, by when it came
        self._counts = {kind: 0 for kind in OutcomeKind}
        self._retries = 0
        self._retries_refused = 0
        self._delayed = 0

    @property
    def state(self) -> ControlState:
        return self._state

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """Wait for a slot, the end of any pause and our pacing turn; hold it for the request."""
        await self._slots.acquire()
        try:
            paced_at = await self._wait_for_turn()
            ticket = Ticket(self.clock.now(), paced_at)
            self._sending += 1
            self._attempts.add(ticket.started_at)
            try:
                yield ticket
            finally:
                self._record(ticket)
                self._sending -= 1
        finally:
            self._slots.release()

    async def _wait_for_turn(self) -> float:
        """Wait for our turn; returns when the turn was decided (the pacing reservation).

        A turn found late by more than the tolerance and one interval lapses, once: the request
        takes the next free turn instead. Sent at once, the turns a busy event loop overslept
        would go out in a clump (4 run creations in 1 ms after a 55 ms stall at 78/s), and a
        server counting per window then sees more than the pace in the next one (W&B refused
        run creation at 77/s paced).

        With the endpoint's ``window_limit`` known, no turn lapses; instead every turn waits
        until the requests answered in the last window plus those in flight leave room for it.
        A request that arrives in the server's window ending at its own arrival was answered
        after that window began or is still in flight, so the server never counts more than
        the limit, and what a stall held back is caught up (lapsed turns cost ~4 % of W&B's run
        creation rate on a busy 2-core machine).
        """
        delayed = lapsed = False
        while True:
            now = self.clock.now()
            epoch = self._state.epoch  # a decrease after this reservation moves it
            if now < self._state.paused_until:
                delayed = True
                await self.clock.sleep(self._state.paused_until - now)
                continue
            rate = effective_rate(self._state, now)
            if rate is None:
                self._delayed += delayed
                await anyio.lowlevel.checkpoint()
                return self.clock.now()
            tolerance = pacing_tolerance(self._state, self.config)
            start = max(now, self._next_start - tolerance)
            self._next_start = max(self._next_start, now) + 1.0 / rate
            delayed = delayed or start > now
            await self.clock.sleep(start - now)
            woke = self.clock.now()
            if woke < self._state.paused_until:
                continue
            if self._state.epoch != epoch:
                continue  # the rate was lowered while this turn waited: a turn at the new pace
            if self.config.window_limit is not None:
                if self._answered.count(woke) + self._sending + 1 > self.config.window_limit:
                    continue  # the window is full: the next turn
            elif not lapsed and woke - start > tolerance + 1.0 / rate:
                lapsed = True
                continue
            self._delayed += delayed
            self._last_turn = woke
            return now

    def _record(self, ticket: Ticket) -> None:
        now = self.clock.now()
        self._counts[ticket.kind] += 1
        if self.config.window_limit is not None:  # only the window check reads it
            self._answered.add(now)
        outcome = measured_outcome(ticket.kind, now, ticket.paced_at, in_flight=self._sending,
                                   accepted=self._accepted, attempts=self._attempts, retry_after=ticket.retry_after)
        epoch = self._state.epoch
        self._state = next_state(self._state, outcome, self.config)
        self._slots.set_limit(concurrency_limit(self._state))
        if self._state.epoch != epoch:
            # A decrease: the turns reserved ahead at the old pace (16 waiting slots are 0.8 s
            # at 20/s) would go on at the rate that just tripped the limit, each into a throttle
            # while the server's bucket is empty. Their waiters see the epoch move and take them
            # again at the new pace from the last turn given, without the burst tolerance (a
            # burst now would meet that bucket).
            rate = effective_rate(self._state, now)
            if rate is not None:
                tolerance = pacing_tolerance(self._state, self.config)
                self._next_start = max(self._last_turn + 1.0 / rate, now) + tolerance

    def note_quota(self, remaining: float, reset_after: float) -> None:
        """The server said how many requests remain until its window resets."""
        self._state = apply_quota(self._state, self.clock.now(), remaining, reset_after, self.config)

    def allow_retry(self, *, throttled: bool) -> bool:
        """Spend from the retry budget; ``False`` means give up now (the endpoint is failing)."""
        allowed, self._state = spend_retry(self._state, self.config, throttled=throttled)
        if allowed:
            self._retries += 1
        else:
            self._retries_refused += 1
        return allowed

    def backoff(self, attempt: int, previous: float = 0.0) -> float:
        """The jittered delay before retry number ``attempt`` (1-based)."""
        return backoff_delay(self.config, attempt, previous, self._rng.random())

    def statistics(self) -> LimiterStatistics:
        now = self.clock.now()
        return LimiterStatistics(
            endpoint=self.endpoint,
            time=now,
            concurrency_limit=self._slots.limit,
            in_flight=self._sending,
            waiting=self._slots.waiting + (self._slots.used - self._sending),
            rate_limit=effective_rate(self._state, now),
            accepted_rate=self._accepted.rate(now),
            attempt_rate=self._attempts.rate(now),
            paused_for=max(0.0, self._state.paused_until - now),
            successes=self._counts[OutcomeKind.SUCCESS],
            throttles=self._counts[OutcomeKind.THROTTLE],
            failures=self._counts[OutcomeKind.TRANSIENT],
            retries=self._retries,
            retries_refused=self._retries_refused,
            budget=self._state.budget,
            delayed=self._delayed,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        rate = "unpaced" if s.rate_limit is None else f"{s.rate_limit:.1f}/s"
        return (
            f"<EndpointLimiter {self.endpoint} [concurrency {s.in_flight}/{s.concurrency_limit}, "
            f"rate {rate}, {s.throttles} throttles, {s.retries} retries]>"
        )
