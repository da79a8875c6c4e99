"""One run's file_stream: line offsets it controls, request sizing, and per-run pacing.

Why its own module: W&B limits file_stream per run (documented default 2 requests/s, 429 with
``Retry-After`` above it) while the shared HTTP limiter works per host. ``RunPacer`` keeps one
run under its limit (read as a sliding window, as W&B states it) and adapts: it halves the
rate (and honours ``Retry-After``) when the server throttles this run and raises it back
towards the configured rate after accepted requests. Requests are sent one at a time per run,
so offsets are acknowledged in order and a resumed migration re-sends the same (offset, lines)
windows, which overwrite, never append.

The HTTP client used here makes single attempts (``max_attempts=1``); this module retries
through the shared driver (``ratelimit.Retrying``) on the run's own limiter, so each run's
throttles slow that run, not the others, and throttles spend from that limiter's retry budget
like every other endpoint's. One controller answers a run's 429: the ``RunPacer`` (the run's
limiter still keeps its quota headers, its concurrency and its budget, but does not also slow
down on the same 429).
"""

from __future__ import annotations

import gzip
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import orjson

from adapters.http import HttpClient
from core.errors import RetryableError, ThrottledError
from ratelimit import (
    Clock,
    EndpointLimiter,
    LimiterRegistry,
    MonotonicClock,
    Retrying,
    Ticket,
    endpoint_of,
)

T = TypeVar("T")

HISTORY = "wandb-history.jsonl"
EVENTS = "wandb-events.jsonl"
SUMMARY = "wandb-summary.json"
OUTPUT = "output.log"

MAX_INTERVAL = 60.0


class FileStreamClient(HttpClient):
    """An ``HttpClient`` whose limiter state is per run, not per host.

    W&B limits file_stream per run and sends ``RateLimit-*`` quota headers for that run; fed
    into the host's shared limiter they would pace every run (and GraphQL) at one run's quota.
    Each run's path gets its own ``EndpointLimiter`` (same configuration and clock as the host's),
    dropped with ``release`` when the run's writer closes.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        shared = self.context.limiters
        self._shared: LimiterRegistry | None = shared if isinstance(shared, LimiterRegistry) else None
        self._clock: Clock = self._shared.clock if self._shared is not None else MonotonicClock()
        self._per_run: dict[str, EndpointLimiter] = {}

    def limiter_for(self, url: str) -> EndpointLimiter:
        key = endpoint_of(url) + urlsplit(url).path
        limiter = self._per_run.get(key)
        if limiter is None:
            config = self._shared.config_for(key) if self._shared is not None else None
            limiter = self._per_run[key] = EndpointLimiter(key, config, clock=self._clock)
        return limiter

    def _throttled(self, ticket: Ticket, retry_after: float | None) -> None:
        """The run's ``RunPacer`` is the one controller that answers its 429s (see the module
        docstring); the ticket stays neutral."""

    def release(self, path: str) -> None:
        self._per_run.pop(endpoint_of(self.url(path)) + urlsplit(self.url(path)).path, None)


class RunPacer:
    """One run's file_stream requests within ``rate`` per second (pure state + an injected clock).

    The limit is read the way W&B states it and the way a sliding-window limiter enforces it:
    at most ``burst = max(1, floor(rate))`` requests in any window of ``burst / rate`` seconds
    (2/s: two requests per second). So a run that was quiet sends its next two requests at once,
    e.g. its last history lines and the summary with ``complete``, instead of waiting half a
    second between them. A request's time in the window is when its answer arrived
    (``accepted`` / ``throttled``), not when it left, so a slow upload cannot make two requests
    look closer together to the server than they were.

    Adaptive: a refusal halves the current rate and blocks until its ``Retry-After``; each
    accepted request raises the rate by a quarter, back up to the configured one.
    """

    def __init__(self, rate: float, clock: Clock | None = None) -> None:
        self.max_rate = rate
        self.rate = rate
        self.clock = clock or MonotonicClock()
        self._times: deque[float] = deque(maxlen=max(1, int(rate)))
        self._blocked_until = 0.0
        self.throttles = 0

    @property
    def burst(self) -> int:
        return max(1, int(self.rate))

    @property
    def window(self) -> float:
        return self.burst / self.rate

    def ready_at(self) -> float:
        """The earliest time the next request may go."""
        at = self._blocked_until
        if len(self._times) >= self.burst:
            at = max(at, self._times[-self.burst] + self.window)
        return at

    async def wait_turn(self) -> None:
        while (delay := self.ready_at() - self.clock.now()) > 0:
            await self.clock.sleep(delay)
        self._times.append(self.clock.now())

    def _answered(self) -> None:
        if self._times:
            self._times[-1] = self.clock.now()

    def throttled(self, retry_after: float | None) -> None:
        """The server refused this run's request: slow down (multiplicative), honour Retry-After."""
        self._answered()
        self.throttles += 1
        self.rate = max(1.0 / MAX_INTERVAL, self.rate / 2.0)
        self._blocked_until = max(self._blocked_until, self.clock.now() + (retry_after or 0.0))

    def accepted(self) -> None:
        """A request went through: drift back towards the configured rate."""
        self._answered()
        self.rate = min(self.max_rate, self.rate * 1.25)

    def __repr__(self) -> str:
        return f"<RunPacer rate={self.rate:.3f}/s throttles={self.throttles}>"


INLINE_ENCODE_BYTES = 64 * 1024
"""Requests with at most this much content are encoded on the event loop (tens of microseconds)."""


async def on_loop_or_thread(inline: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on the event loop when it is small (``inline``: a worker-thread round
    trip would cost more than the work), else in a worker thread."""
    return work(*args) if inline else await anyio.to_thread.run_sync(work, *args)


class FileStream:
    """Sends one run's file_stream requests (see module docstring)."""

    def __init__(
        self,
        http: HttpClient,
        path: str,
        pacer: RunPacer,
        *,
        use_gzip: bool = False,
        max_failures: int = 10,
    ) -> None:
        self.http = http
        self.path = path
        self.pacer = pacer
        self.use_gzip = use_gzip
        self.max_failures = max_failures
        self.requests = 0
        self._one_at_a_time = anyio.Lock()  # history and console log share the run's stream

    async def send(
        self,
        files: Mapping[str, tuple[int, list[str]]],
        *,
        complete: bool | None = None,
        exitcode: int | None = None,
    ) -> Any:
        """One request; returns when the server acknowledged it (retries inside the client)."""
        payload: dict[str, Any] = {
            "files": {name: {"offset": offset, "content": lines} for name, (offset, lines) in files.items()}
        }
        if complete is not None:
            payload["complete"] = complete
            payload["exitcode"] = exitcode
        size = sum(len(line) for _, lines in files.values() for line in lines)
        body, headers = await on_loop_or_thread(size <= INLINE_ENCODE_BYTES, self._encode, payload)
        async with self._one_at_a_time:
            return await self._post(body, headers)

    async def _post(self, body: bytes, headers: dict[str, str]) -> Any:
        limiter = self.http.limiter_for(self.http.url(self.path))
        retrying = Retrying(limiter, max_attempts=self.max_failures, events=self.http.context.events)
        while True:
            await self.pacer.wait_turn()
            try:
                answer = await self.http.request_json("POST", self.path, data=body, headers=headers)
            except RetryableError as exc:
                throttled = isinstance(exc, ThrottledError)
                self.pacer.throttled(exc.retry_after if isinstance(exc, ThrottledError) else None)
                # the pacer's turn is the wait (it honours Retry-After); the driver keeps count
                await retrying.wait_or_raise(exc, throttled=throttled, backoff=False)
                continue
            self.requests += 1
            self.pacer.accepted()
            return answer

    def _encode(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        if self.use_gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return body, headers
