"""Events per second over a sliding window, in fixed buckets so memory stays constant."""

from __future__ import annotations

from collections import deque


YOUNG_BUCKETS = 20
"""A young meter's rate is over at least 1/``YOUNG_BUCKETS`` of the window (50 ms of a second):
the first answers of a flood, over one 10 ms bucket, would read as 5x what the endpoint took."""


class RateMeter:
    """Counts events in ``buckets`` slices of ``window`` seconds; ``rate(now)`` is events/s.

    The rate is over the time the kept buckets cover: before a full window has passed since
    the first event, the elapsed time (at least 1/``YOUNG_BUCKETS`` of the window), so a young
    meter is not biased low by the idle time before it; after, the window less the expired part
    of its oldest bucket (over the whole window, a steady rate would read up to one bucket low).
    ``window_rate`` is the count over the whole window: what a server counting per window has let
    through. Buckets are 1% of the window, so both agree on a steady rate within 1%.
    """

    def __init__(self, window: float, start: float | None = None, buckets: int = 100) -> None:
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

    def _covered(self, now: float) -> float:
        """Seconds the kept buckets span: a window less what of the oldest bucket has expired,
        or less while the meter is young."""
        assert self._start is not None
        oldest = self._bucket(now) - round(self._window / self._width) + 1
        return now - max(self._start, self._start + oldest * self._width)

    def rate(self, now: float) -> float:
        if self._start is None:
            return 0.0
        self._expire(now)
        return self._total / max(self._window / YOUNG_BUCKETS, self._covered(now))

    def count(self, now: float) -> int:
        """Events in the kept buckets: the last window, and up to one bucket before it."""
        if self._start is not None:
            self._expire(now)
        return self._total

    def window_rate(self, now: float) -> float:
        """Events in the last whole window, per second, however young the meter: what a server
        that counts requests over a window of this length has let through."""
        return self.count(now) / self._window
