"""Time as a dependency: every limiter and retry loop reads and waits through a ``Clock``.

asyncio has no virtual clock, so this seam is what makes backoff tests instant and
deterministic: tests pass a ``FakeClock`` whose ``sleep`` jumps virtual time forward.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds and a way to wait for them."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a checkpoint even when ``seconds <= 0``)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "MonotonicClock()"


class FakeClock:
    """Virtual time for tests: ``sleep`` jumps the clock forward instead of waiting.

    A sleeper computes its wake-up time when it calls ``sleep`` and moves the clock to it
    (never backwards), then yields once to the event loop. Concurrent sleepers therefore see
    time advance to the latest wake-up among them, deterministically for a given schedule.
    ``advance`` moves time by hand; ``sleeps`` records every requested duration.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self._now = max(self._now, self._now + seconds)
        await anyio.lowlevel.checkpoint()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


async def sleep_until(clock: Clock, deadline: float) -> None:
    """Sleep on ``clock`` until ``deadline`` (a checkpoint if it has already passed)."""
    await clock.sleep(deadline - clock.now())
