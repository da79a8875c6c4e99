"""A virtual clock for tests with many concurrent sleepers: time moves only when every task is
blocked, to the next wake-up (``FakeClock`` moves on each sleep, so concurrent sleepers all see
the latest one), and it can be made to overshoot like a busy event loop."""

from __future__ import annotations

import heapq
import itertools

import anyio
import anyio.lowlevel


class ManualClock:
    """Virtual time that moves only in ``run()``: to the next sleeper's wake-up, once every task
    is blocked (on a sleep, an event or the network)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()
        self._slept = anyio.Event()
        self._stalls: list[tuple[float, float]] = []

    def stall(self, at: float, seconds: float) -> None:
        """The first advance to a wake-up at or after ``at`` overshoots it by ``seconds``, as an
        event loop busy elsewhere wakes its sleepers late (all that are due by then at once)."""
        self._stalls.append((at, seconds))

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), woken))
        self._slept.set()
        await woken.wait()

    async def run(self) -> None:
        """Advance time forever (cancel it when done)."""
        while True:
            await anyio.wait_all_tasks_blocked()
            if not self._sleepers:
                self._slept = anyio.Event()
                await self._slept.wait()
                continue
            due = self._sleepers[0][0]
            late = [stall for stall in self._stalls if stall[0] <= due]
            for stall in late:
                self._stalls.remove(stall)
            self._now = max(self._now, due + sum(seconds for _, seconds in late))
            while self._sleepers and self._sleepers[0][0] <= self._now:
                heapq.heappop(self._sleepers)[2].set()
