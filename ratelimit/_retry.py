"""The one retry driver: after a failed attempt, give up or wait, by the endpoint's rules.

Every retry loop in runferry (HTTP calls and downloads, S3 calls and downloads, W&B
file_stream) has the same shape: *classify* the failure (the adapter's business: it knows its
status codes), report the attempt's outcome to the endpoint's *limiter* (the adapter's ticket),
then ask this driver whether to go on. The driver counts attempts against the caller's
``max_attempts``, spends from the limiter's shared *retry budget* (so a failing endpoint fails
fast for every worker, not just this request), and waits the limiter's jittered *backoff* on
its clock. Written once here so that no adapter grows its own variant.

It knows nothing of runferry's error tree: it re-raises the error the caller handed it.
"""

from __future__ import annotations

from collections.abc import Callable

from ._limiter import EndpointLimiter

EventHook = Callable[..., None]
"""``hook(name, **fields)``, as the engine's progress hook: the driver emits ``"retry"`` with
``endpoint``, ``error`` and ``attempt`` before each wait."""


def _no_events(name: str, **fields: object) -> None:
    return None


class Retrying:
    """One request's attempts at one endpoint.

    ``attempts`` counts the failed attempts so far; ``delay`` is the last backoff waited (the
    decorrelated jitter grows from it).
    """

    def __init__(self, limiter: EndpointLimiter, *, max_attempts: int, events: EventHook = _no_events) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.events = events
        self.attempts = 0
        self.delay = 0.0

    async def wait_or_raise(self, error: BaseException, *, throttled: bool, backoff: bool = True) -> None:
        """Raise ``error`` when the attempts or the endpoint's retry budget are spent; otherwise
        wait the backoff delay (``backoff=False``: the caller's pacer does the waiting).

        :raises BaseException: ``error`` itself, when giving up.
        """
        self.attempts += 1
        if self.attempts >= self.max_attempts or not self.limiter.allow_retry(throttled=throttled):
            raise error
        self.events("retry", endpoint=self.limiter.endpoint, error=str(error), attempt=self.attempts)
        if backoff:
            self.delay = self.limiter.backoff(self.attempts, self.delay)
            await self.limiter.clock.sleep(self.delay)

    def __repr__(self) -> str:
        return f"<Retrying {self.limiter.endpoint} [{self.attempts}/{self.max_attempts} attempts failed]>"
