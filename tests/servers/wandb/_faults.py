"""Fault and limit knobs of the fake W&B server, settable per test while it runs.

Why: runferry's retry/backoff paths must meet the same 429/503/5xx/latency/drop behaviour
a real W&B deployment produces. Random faults use a seeded RNG, scripted faults
(``script``) fire deterministically, and rate limits take an injectable clock.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

TARGETS = ("graphql", "filestream", "files", "storage")


class SlidingWindow:
    """Allows at most ``rate`` events per second (1-second sliding window)."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._events: dict[object, deque[float]] = {}

    def admit(self, key: object, rate: float) -> bool:
        now = self._clock()
        window = self._events.setdefault(key, deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= max(rate, 1e-9):
            return False
        window.append(now)
        return True

    def remaining(self, key: object, rate: float) -> float:
        """Share of this second's budget still free, 0.0 .. 1.0."""
        used = len(self._events.get(key, ()))
        return max(0.0, (rate - used) / rate) if rate > 0 else 0.0

    def retry_after(self, key: object) -> int:
        window = self._events.get(key)
        if not window:
            return 1
        return max(1, math.ceil(window[0] + 1.0 - self._clock()))


@dataclass
class Faults:
    """Per-server fault configuration. All knobs default to "off".

    * ``latency_s``: delay added to every request (server side).
    * ``error_rate``: probability of an HTTP ``error_status`` answer on ``targets``.
    * ``drop_rate``: probability of closing the connection without any answer on ``targets``.
    * ``filestream_rps_per_run``: W&B's documented 2 req/s per run -> 429 + Retry-After.
    * ``run_creation_rps_per_project``: UpsertBucket creating runs -> 429 + Retry-After.
    * ``storage_slowdown_rps``: storage requests per second before S3-style 503 SlowDown.
    * ``script(target, [status | "drop", ...])``: the next requests on ``target`` fail in order.
    """

    latency_s: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    drop_rate: float = 0.0
    targets: tuple[str, ...] = TARGETS
    filestream_rps_per_run: float | None = None
    run_creation_rps_per_project: float | None = None
    storage_slowdown_rps: float | None = None
    seed: int = 0
    clock: Callable[[], float] = time.monotonic
    _scripted: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random | None = None
    _window: SlidingWindow | None = None
    injected: dict[str, int] = field(default_factory=dict)  # counters by kind, for assertions

    def reset(self) -> None:
        """Back to defaults (all off); counters cleared."""
        with self._lock:
            self.latency_s = self.error_rate = self.drop_rate = 0.0
            self.error_status = 503
            self.targets = TARGETS
            self.filestream_rps_per_run = self.run_creation_rps_per_project = None
            self.storage_slowdown_rps = None
            self.clock = time.monotonic
            self._scripted.clear()
            self._window = None
            self.injected.clear()

    def script(self, target: str, outcomes: list[int | str]) -> None:
        """Make the next ``len(outcomes)`` requests to ``target`` fail as listed."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
        with self._lock:
            self._scripted.setdefault(target, deque()).extend(outcomes)

    def note(self, kind: str) -> None:
        """Count an injected effect (thread-safe)."""
        with self._lock:
            self._count(kind)

    def _count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def decide(self, target: str) -> int | str | None:
        """What to do to this request: None (serve it), an HTTP status, or "drop"."""
        with self._lock:
            queue = self._scripted.get(target)
            if queue:
                outcome = queue.popleft()
                self._count(f"scripted:{target}:{outcome}")
                return outcome
            if target not in self.targets:
                return None
            if self._rng is None:
                self._rng = random.Random(self.seed)
            if self.drop_rate and self._rng.random() < self.drop_rate:
                self._count(f"drop:{target}")
                return "drop"
            if self.error_rate and self._rng.random() < self.error_rate:
                self._count(f"error:{target}")
                return self.error_status
            return None

    def rate_headers(self, kind: str, key: object, rate: float | None) -> dict[str, str]:
        """W&B SaaS-style ``RateLimit-Remaining`` (0..1000) and ``RateLimit-Reset`` (s) headers."""
        if rate is None:
            return {}
        with self._lock:
            if self._window is None:
                return {}
            remaining = self._window.remaining((kind, key), rate)
            reset = self._window.retry_after((kind, key))
        return {"RateLimit-Remaining": str(int(remaining * 1000)), "RateLimit-Reset": str(reset)}

    def rate_limited(self, kind: str, key: object, rate: float | None) -> int | None:
        """Retry-After seconds if ``key`` exceeded ``rate`` requests/s, else None."""
        if rate is None:
            return None
        with self._lock:
            if self._window is None:
                self._window = SlidingWindow(self.clock)
            if self._window.admit((kind, key), rate):
                return None
            self._count(f"ratelimit:{kind}")
            return self._window.retry_after((kind, key))
