"""Per-endpoint limits hold across the cluster: 4 worker actors, one counting loopback endpoint."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Self

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.ray.conftest import NO_RAY

ray = pytest.importorskip("ray", reason=NO_RAY)

from ratelimit import ControlConfig
from scaleout.limiter import SlotAuthority, cluster_limiters, share_of, start_authority

pytestmark = pytest.mark.usefixtures("ray_cluster")

LIMIT = 20  # requests/s the endpoint allows, configured as its max_rate
PER_WORKER = 12


class CountingEndpoint:
    """A loopback HTTP endpoint recording when each request arrived (on its own thread)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def hit(request: web.Request) -> web.Response:
            self.arrivals.append(time.monotonic())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", hit)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Self:
        self.thread.start()
        self.ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@ray.remote(num_cpus=0)
class Client:
    """A worker's limiter registry, as ``ShardWorker`` builds it, sending plain GETs."""

    def __init__(self, recipe: object) -> None:
        self.limiters = recipe()  # type: ignore[operator]

    async def hammer(self, url: str, n: int) -> int:
        limiter = self.limiters.for_url(url)
        async with aiohttp.ClientSession() as session:
            for _ in range(n):
                async with limiter.slot() as ticket:
                    async with session.get(url) as response:
                        await response.read()
                        ticket.success()
        return n


@pytest.fixture
def endpoint() -> Iterator[CountingEndpoint]:
    with CountingEndpoint() as server:
        yield server


def test_four_workers_never_exceed_the_global_limit_in_any_second(endpoint: CountingEndpoint) -> None:
    from engine.config import parse_config

    url = f"http://127.0.0.1:{endpoint.port}/"
    config = parse_config({
        "source": {"type": "synthetic"},
        "destination": {"type": "local", "path": "/tmp/unused"},
        "ratelimit": {"endpoints": {f"http://127.0.0.1:{endpoint.port}": {"initial_rate": LIMIT, "max_rate": LIMIT,
                                                                           "burst_seconds": 0.0}}},
        "ray": {"workers": 4},
    })
    authority = start_authority(config)
    try:
        clients = [Client.remote(cluster_limiters(config)) for _ in range(4)]
        assert sum(ray.get([c.hammer.remote(url, PER_WORKER) for c in clients])) == 4 * PER_WORKER
    finally:
        ray.kill(authority)
    arrivals = sorted(endpoint.arrivals)
    assert len(arrivals) == 4 * PER_WORKER
    busiest = max(sum(1 for t in arrivals[i:] if t < start + 1.0) for i, start in enumerate(arrivals))
    assert busiest <= LIMIT + 1
    # each worker alone would have been paced at the full rate: together they were held to it
    assert arrivals[-1] - arrivals[0] >= (4 * PER_WORKER - LIMIT - 1) / LIMIT


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_reported_by_one_worker_slows_every_worker() -> None:
    clock = FakeClock()
    authority = SlotAuthority({"initial_rate": 100.0, "burst_seconds": 0.0}, clock=clock)
    _, slots_a, rate = authority.lease("http://x:80", 5, [])
    assert rate == 100.0 and slots_a == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    clock.now += 1.0
    _, _, after = authority.lease("http://x:80", 1, [("throttle", clock.now - 0.01, None)])  # worker A saw a 429
    assert after == pytest.approx(90.0)  # CUBIC's decrease, beta 0.9
    _, slots_b, rate_b = authority.lease("http://x:80", 5, [])  # worker B draws from the same schedule
    assert rate_b == pytest.approx(90.0)
    gaps = [b - a for a, b in itertools.pairwise(slots_b)]
    assert gaps == pytest.approx([1 / 90.0] * 4)
    _, paused, _ = authority.lease("http://x:80", 1, [("throttle", clock.now, 3.0)])  # Retry-After: 3 s
    assert paused[0] >= 3.0


def test_a_throttle_that_pauses_takes_the_whole_window_as_the_limit() -> None:
    """As a single process's limiter: 80 creations answered at once, then a 429 with
    Retry-After, is a limit of 80 per second, not 80 over the 50 ms a young meter has run."""
    clock = FakeClock()
    authority = SlotAuthority({}, clock=clock)
    clock.now += 0.25
    successes = [("success", clock.now - 0.01, None)] * 80
    _, _, rate = authority.lease("http://x:80", 1, [*successes, ("throttle", clock.now - 0.01, 1.0)])
    assert rate == pytest.approx(72.0)  # beta 0.9 of 80
    # and no early slots after a throttle that paused the endpoint (a sliding window would trip)
    clock.now += 1.0
    _, slots, _ = authority.lease("http://x:80", 3, [])
    assert [b - a for a, b in itertools.pairwise(slots)] == pytest.approx([1 / 72.0] * 2)


def test_the_authority_paces_an_endpoint_as_the_worker_that_first_leases_it_configured_it() -> None:
    """A limit an adapter declared in a worker (W&B's run creation, LimiterRegistry.declare) is
    not in the authority's [ratelimit] tables: the first lease brings the worker's config."""
    clock = FakeClock()
    authority = SlotAuthority({}, clock=clock)
    declared = ControlConfig(initial_rate=76.0, max_rate=78.0, burst_seconds=0.0)
    _, slots, rate = authority.lease("http://x:80/graphql#run-creation/e/p", 3, [], declared)
    assert rate == 76.0
    assert [b - a for a, b in itertools.pairwise(slots)] == pytest.approx([1 / 76.0] * 2)
    _, _, unconfigured = authority.lease("http://x:80", 1, [])
    assert unconfigured is None  # other endpoints keep the authority's own tables


async def test_a_worker_fires_slots_that_arrive_a_little_late_without_burst_tolerance() -> None:
    """With ``burst_seconds = 0`` a slot the worker reaches a moment after its time is still
    used (late by up to one interval), not dropped and fetched again for ever."""
    from scaleout.limiter import ClusterEndpointLimiter

    class Authority:
        def __init__(self) -> None:
            self.lease, self.calls = self, 0

        def remote(self, endpoint: str, want: int, report: list, config: ControlConfig | None = None) -> object:
            self.calls += 1
            return self._answer(want)

        async def _answer(self, want: int) -> tuple[float, list[float], float]:
            return time.monotonic(), [-0.005 + i / 50.0 for i in range(want)], 50.0  # the first 5 ms old

    authority = Authority()
    limiter = ClusterEndpointLimiter("http://127.0.0.1:9", ControlConfig(initial_rate=50.0, burst_seconds=0.0),
                                     authority, workers=2)
    with anyio.fail_after(10):  # dropping it would fetch again and again
        async with limiter.slot() as ticket:
            ticket.success()
    assert authority.calls == 1


def test_the_fallback_share_is_the_rate_split_evenly() -> None:
    config = ControlConfig(initial_rate=40.0, max_rate=80.0)
    share = share_of(config, 4)
    assert (share.initial_rate, share.max_rate) == (10.0, 20.0)
    assert share_of(ControlConfig(), 4).initial_rate is None
    assert share_of(ControlConfig(window_limit=79), 4).window_limit == 19  # no worker catches up beyond its share


class DyingAuthority:
    """Answers the first lease at the cluster rate, then is gone (as a killed actor is)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.calls = 0
        self.lease = self

    def remote(self, endpoint: str, want: int, report: list, config: ControlConfig | None = None) -> object:
        self.calls += 1
        if self.calls > 1:
            raise ray.exceptions.ActorDiedError()
        return self._answer(want)

    async def _answer(self, want: int) -> tuple[float, list[float], float]:
        return time.monotonic(), [0.0] * want, self.rate


async def test_an_unreachable_authority_leaves_each_worker_its_share_of_the_cluster_rate() -> None:
    from scaleout.limiter import ClusterEndpointLimiter

    authority = DyingAuthority(rate=120.0)
    limiter = ClusterEndpointLimiter("http://127.0.0.1:9", ControlConfig(initial_rate=200.0, max_rate=200.0),
                                     authority, workers=4)
    async with limiter.slot() as ticket:  # the authority's slot, at its rate
        ticket.success()
    assert limiter.statistics().rate_limit == 120.0
    async with limiter.slot() as ticket:  # the authority is gone: the request goes on, paced locally
        ticket.success()
    async with limiter.slot() as ticket:
        ticket.success()
    assert authority.calls == 2  # asked once more, then left alone for FALLBACK_SECONDS
    # this worker's share: the cluster rate in force split evenly (CUBIC climbs back to it from
    # beta * share), never above the configured rate split evenly
    assert limiter.state.w_max == 30.0 and limiter.state.rate <= 30.0
    assert limiter.statistics().rate_limit == limiter.state.rate
    assert limiter.config.max_rate == 50.0
