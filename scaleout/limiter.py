"""Per-endpoint limits that hold cluster-wide: one authority actor, slots handed out in leases.

Each worker process has its own ``LimiterRegistry`` (concurrency is per worker, AIMD as before),
but the *rate* of every endpoint is decided in one place: ``SlotAuthority``, a named actor that
owns the existing pure policies (``ratelimit._policy``: CUBIC pacing, Retry-After pauses, quota
headers) for every endpoint. A worker's ``ClusterEndpointLimiter`` asks it for a lease of request
slots, i.e. start times reserved on the endpoint's single GCRA schedule (about 100 ms worth, at
most ``LEASE_SLOTS``), and reports how its requests ended (successes, throttles with the slot
time they were sent at, transient failures, quota headers) with its next lease request. So a
429 / SlowDown seen by any worker lowers the one rate every worker draws from, and the sum of
all workers' starts never exceeds the schedule (plus the pacing burst). A slot a worker could
not use in time is dropped, never used late.

If the authority cannot be reached (its node died, a timeout), the worker falls back to its
share: its own limiter paced at ``rate / workers`` (the configured ``initial_rate`` /
``max_rate`` divided by the number of workers), and asks the authority again after
``FALLBACK_SECONDS``. Measured (``../shared/docs/scale-out.md``): one authority serves ~1,300
leases/s at ~0.2 ms per request; splitting the budget statically wastes it when workers idle.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from engine.config import Config
from ratelimit import ControlConfig, EndpointLimiter, LimiterRegistry, RateMeter
from ratelimit._limiter import Ticket, measured_outcome
from ratelimit._policy import (
    OutcomeKind,
    apply_quota,
    effective_rate,
    initial_state,
    next_state,
    pacing_tolerance,
)

AUTHORITY_NAME = "runferry-limiter"
LEASE_SLOTS = 20
LEASE_SECONDS = 0.1
FALLBACK_SECONDS = 5.0
CALL_TIMEOUT = 2.0


@dataclass
class _Endpoint:
    config: ControlConfig
    state: Any
    next_start: float
    accepted: RateMeter
    attempts: RateMeter


class SlotAuthority:
    """The cluster's pacing for every endpoint (run as a named Ray actor; plain class here)."""

    def __init__(self, ratelimit: Mapping[str, Any], *, clock: Any = time.monotonic) -> None:
        self.registry = LimiterRegistry.from_mapping(ratelimit)
        self.clock = clock
        self.endpoints: dict[str, _Endpoint] = {}

    def _endpoint(self, name: str, config: ControlConfig | None) -> _Endpoint:
        ep = self.endpoints.get(name)
        if ep is None:
            config = config or self.registry.config_for(name)
            now = self.clock()
            ep = self.endpoints[name] = _Endpoint(config, initial_state(config, now), now,
                                                  RateMeter(config.meter_window), RateMeter(config.meter_window))
        return ep

    def lease(
        self, endpoint: str, want: int, report: list[tuple[Any, ...]], config: ControlConfig | None = None
    ) -> tuple[float, list[float], float | None]:
        """Apply ``report``, then reserve up to ``want`` start times. Returns the authority's now,
        the slots as offsets from it (seconds), and the rate in force (None = unpaced).
        ``config``: the worker's configuration of the endpoint (the same ``[ratelimit]`` tables
        plus what its adapters declared, ``LimiterRegistry.declare``), taken by the first lease."""
        ep = self._endpoint(endpoint, config)
        now = self.clock()
        for item in report:
            self._apply(ep, now, item)
        rate = effective_rate(ep.state, now)
        start_floor = max(now, ep.state.paused_until)
        if rate is None:
            slots = [start_floor - now] * min(want, LEASE_SLOTS)
        else:
            count = max(1, min(want, LEASE_SLOTS, int(rate * LEASE_SECONDS)))
            slots = []
            for _ in range(count):
                at = max(start_floor, ep.next_start - pacing_tolerance(ep.state, ep.config))
                ep.next_start = max(ep.next_start, start_floor) + 1.0 / rate
                slots.append(at - now)
        for offset in slots:
            ep.attempts.add(now + offset)
        return now, slots, rate

    def _apply(self, ep: _Endpoint, now: float, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "quota":
            ep.state = apply_quota(ep.state, now, float(item[1]), float(item[2]), ep.config)
            return
        outcome = measured_outcome(OutcomeKind(kind), now, float(item[1]), in_flight=0, accepted=ep.accepted,
                                   attempts=ep.attempts, retry_after=item[2] if len(item) > 2 else None)
        ep.state = next_state(ep.state, outcome, ep.config)


class ClusterEndpointLimiter(EndpointLimiter):
    """An ``EndpointLimiter`` whose pacing turns come from the authority (module docstring);
    concurrency, retries and backoff stay local."""

    def __init__(self, endpoint: str, config: ControlConfig, authority: Any, workers: int) -> None:
        super().__init__(endpoint, share_of(config, workers))  # the fallback, paced at our share
        self._authority = authority
        self._workers = workers
        self._slots_at: collections.deque[tuple[float, float]] = collections.deque()  # (local, authority)
        self._report: list[tuple[Any, ...]] = []
        self._fetching = anyio.Lock()
        self._fallback_until = float("-inf")
        self._cluster_rate: float | None = None
        self._cluster_config = config  # the whole endpoint's (not our share), for the authority

    async def _wait_for_turn(self) -> float:
        while True:
            if self.clock.now() < self._fallback_until:
                return await super()._wait_for_turn()
            now = self.clock.now()
            # a slot found later than the tolerance and one interval lapses (as a local turn
            # does, EndpointLimiter._wait_for_turn): never fire stale slots in a clump
            stale = self._cluster_config.burst_seconds + (1.0 / self._cluster_rate if self._cluster_rate else math.inf)
            while self._slots_at and self._slots_at[0][0] < now - stale:
                self._slots_at.popleft()
            if self._slots_at:
                local, authority_time = self._slots_at.popleft()
                await self.clock.sleep(local - now)
                return authority_time
            async with self._fetching:
                if not self._slots_at:
                    await self._fetch()

    async def _fetch(self) -> None:
        report, self._report = self._report, []
        want = max(1, self._slots.waiting + 1)
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                anchor, offsets, rate = await self._authority.lease.remote(
                    self.endpoint, want, report, self._cluster_config)
        except Exception:  # noqa: BLE001 - unreachable (dead, partitioned, slow): our share, then ask again
            now = self.clock.now()
            self._fallback_until = now + FALLBACK_SECONDS
            if self._cluster_rate is not None:  # the rate in force, split evenly
                share = max(self.config.min_rate, self._cluster_rate / self._workers)
                self._state = dataclasses.replace(self._state, rate=share, w_max=share, epoch=now)
            return
        received = self.clock.now()
        self._cluster_rate = rate
        self._slots_at.extend((received + offset, anchor + offset) for offset in offsets)

    def _record(self, ticket: Ticket) -> None:
        super()._record(ticket)
        if ticket.kind is not OutcomeKind.NEUTRAL:
            self._report.append((ticket.kind.value, ticket.paced_at, ticket.retry_after))

    def note_quota(self, remaining: float, reset_after: float) -> None:
        super().note_quota(remaining, reset_after)
        self._report.append(("quota", remaining, reset_after))

    def statistics(self) -> Any:
        stats = super().statistics()
        if self.clock.now() < self._fallback_until:
            return stats
        return dataclasses.replace(stats, rate_limit=self._cluster_rate)


class ClusterLimiterRegistry(LimiterRegistry):
    """A worker's limiters: cluster-paced ones, each falling back to ``1/workers`` of the rate."""

    def __init__(self, ratelimit: Mapping[str, Any], workers: int, authority: Any) -> None:
        base = LimiterRegistry.from_mapping(ratelimit)
        super().__init__(default=base.default, overrides=base._overrides)
        self._workers = workers
        self._authority = authority

    def get(self, endpoint: str) -> EndpointLimiter:
        limiter = self._limiters.get(endpoint)
        if limiter is None:
            config = self.config_for(endpoint)
            limiter = ClusterEndpointLimiter(endpoint, config, self._authority, self._workers)
            self._limiters[endpoint] = limiter
        return limiter


def share_of(config: ControlConfig, workers: int) -> ControlConfig:
    """One worker's static share of an endpoint's configured rates (and of its window limit)."""
    def part(rate: float | None) -> float | None:
        return None if rate is None else max(config.min_rate, rate / workers)

    window = None if config.window_limit is None else max(1.0, math.floor(config.window_limit / workers))
    return config.replace(initial_rate=part(config.initial_rate), max_rate=part(config.max_rate), window_limit=window)


@dataclass(frozen=True)
class ClusterLimiters:
    """Picklable recipe a worker actor turns into its registry (``ShardWorker(limiters=...)``)."""

    ratelimit: Mapping[str, Any]
    workers: int

    def __call__(self) -> ClusterLimiterRegistry:
        import ray

        try:
            authority = ray.get_actor(AUTHORITY_NAME)
        except ValueError:
            authority = None
        return ClusterLimiterRegistry(self.ratelimit, self.workers, authority or _Unreachable())


class _Unreachable:
    """Stands for an authority that could not be found: every lease falls back to the share."""

    class _Method:
        def remote(self, *args: Any) -> Any:
            raise ConnectionError("limiter authority not found")

    lease = _Method()


def start_authority(config: Config) -> Any:
    """The named authority actor for this migration (created by the driver, dies with it)."""
    import ray

    remote = ray.remote(SlotAuthority).options(name=AUTHORITY_NAME, num_cpus=0, max_restarts=-1,
                                                get_if_exists=True)
    return remote.remote(dict(config.ratelimit))


def cluster_limiters(config: Config) -> ClusterLimiters:
    return ClusterLimiters(dict(config.ratelimit), config.ray.workers)
