"""Events per second over a sliding window, in fixed buckets so memory stays constant."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Counts events in ``buckets`` slices of ``window`` seconds; ``rate(now)`` is events/s.

    Before a full window has passed since the first event, the rate is over the elapsed time
    (at least one bucket), so a young meter is not biased low by the idle time before it.
    """

    def __init__(self, window: float, start: float | None = None, buckets: int = 20) -> None:
        self._width = window / buckets
        self._window = window
        self._start = start
        self._counts: deque[tuple[int, int]] = deque()  # (bucket index, count)
        self._total = 0

    def _bucket(self, t: float) -> int:
        assert self._start is not None
        return int((t - self._start) // self._width)

    def _expire(self, now: float) -> None:
        oldest = self._bucket(now) - round(self._window / self._width) + 1
        while self._counts and self._counts[0][0] < oldest:
            self._total -= self._counts.popleft()[1]

    def add(self, now: float, count: int = 1) -> None:
        if self._start is None:
            self._start = now
        self._expire(now)
        index = self._bucket(now)
        if self._counts and self._counts[-1][0] == index:
            self._counts[-1] = (index, self._counts[-1][1] + count)
        else:
            self._counts.append((index, count))
        self._total += count

    def rate(self, now: float) -> float:
        if self._start is None:
            return 0.0
        self._expire(now)
        elapsed = min(self._window, max(self._width, now - self._start))
        return self._total / elapsed
