"""The mechanism under a FakeClock: pacing, pauses, concurrency slots, statistics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import pytest

from core.errors import ConfigError
from engine.config import parse_config
from ratelimit import (
    AdjustableSemaphore,
    ControlConfig,
    EndpointLimiter,
    FakeClock,
    LimiterRegistry,
    RateMeter,
    Ticket,
    endpoint_of,
)
from tests.manual_clock import ManualClock


async def test_pacing_spaces_request_starts_at_the_rate() -> None:
    clock = FakeClock(100.0)
    limiter = EndpointLimiter("e", ControlConfig(initial_rate=10.0, burst_seconds=0.0), clock=clock)
    starts = []
    for _ in range(5):
        async with limiter.slot() as ticket:
            starts.append(ticket.started_at)
            ticket.success()
    assert starts == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])


async def test_burst_tolerance_lets_a_few_through_at_once() -> None:
    clock = FakeClock(0.0)
    limiter = EndpointLimiter("e", ControlConfig(initial_rate=10.0, burst_seconds=0.2), clock=clock)
    starts = []
    for _ in range(5):
        async with limiter.slot() as ticket:
            starts.append(ticket.started_at)
    # GCRA with 0.2 s tolerance at 10/s: three back to back, then one per 0.1 s
    assert starts == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])


async def test_no_early_turns_once_a_throttle_paused_the_endpoint() -> None:
    clock = FakeClock(0.0)
    limiter = EndpointLimiter("e", ControlConfig(initial_rate=10.0, burst_seconds=0.2), clock=clock)
    async with limiter.slot() as ticket:
        ticket.throttled(retry_after=1.0)  # the rate drops to 9/s, and it paused the endpoint
    starts = []
    for _ in range(4):
        async with limiter.slot() as ticket:
            starts.append(ticket.started_at)
    assert starts == pytest.approx([1.0, 1.0 + 1 / 9, 1.0 + 2 / 9, 1.0 + 3 / 9])


async def _paced_requests(limiter: EndpointLimiter, clock: ManualClock, count: int, latency: float,
                          answer: Callable[[Ticket], None] = Ticket.success) -> list[float]:
    """Start ``count`` requests at once; each takes ``latency`` and is answered by ``answer``.
    Returns their start times, sorted."""
    starts: list[float] = []

    async def one() -> None:
        async with limiter.slot() as ticket:
            starts.append(ticket.started_at)
            if latency:
                await clock.sleep(latency)
            answer(ticket)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.run)
            async with anyio.create_task_group() as requests:
                for _ in range(count):
                    requests.start_soon(one)
            tg.cancel_scope.cancel()
    return sorted(starts)


async def test_turns_a_busy_event_loop_overslept_lapse_instead_of_leaving_in_a_clump() -> None:
    """Six requests paced at 10/s without tolerance reserve 0.0 .. 0.5; the loop wakes the
    sleeper due at 0.1 only at 0.35. The turn due at 0.3 is within one interval and goes; those
    due at 0.1 and 0.2 lapse and take the next free turns, so no three leave at once."""
    clock = ManualClock(0.0)
    clock.stall(at=0.1, seconds=0.25)
    limiter = EndpointLimiter("e", ControlConfig(initial_rate=10.0, burst_seconds=0.0), clock=clock)
    starts = await _paced_requests(limiter, clock, 6, latency=0.0)
    assert starts == pytest.approx([0.0, 0.35, 0.4, 0.5, 0.6, 0.7])


@pytest.mark.parametrize(("burst", "expected"), [
    (0.0, [n / 9 for n in range(6)]),
    (0.2, [0.0, 0.0, 0.0, 1 / 9, 2 / 9, 3 / 9]),  # three at once within the tolerance, none after the decrease
])
async def test_turns_reserved_before_a_decrease_go_at_the_new_pace(burst: float, expected: list[float]) -> None:
    """Six requests paced at 10/s reserve their turns at once; the first is throttled, answered
    at 0.05, and the rate drops to 9/s. The waiting turns are taken again at 9/s from the last
    turn given, without a burst, instead of going on at the 10/s that tripped the limit."""
    clock = ManualClock(0.0)
    limiter = EndpointLimiter("e", ControlConfig(initial_rate=10.0, burst_seconds=burst), clock=clock)

    def answer(ticket: Ticket) -> None:
        if ticket.started_at == 0.0:
            ticket.throttled()  # the others answer without a signal: the rate stays at 9/s

    starts = await _paced_requests(limiter, clock, 6, latency=0.05, answer=answer)
    assert limiter.state.rate == pytest.approx(9.0)
    assert starts == pytest.approx(expected)


async def test_with_a_known_window_limit_overslept_turns_are_caught_up_within_it() -> None:
    """At 10/s with at most 10 requests a second (answered in it or in flight), the loop wakes
    the sleeper due at 0.1 only at 0.35: the turns due at 0.1, 0.2 and 0.3 all go then (the
    window holds one request), the schedule goes on at 0.4; from 1.0 on a turn goes only when a
    request answered a second before has left the window (requests take 50 ms): the one
    answered at 0.05 lets 1.1 go, the three caught up (answered at 0.40) let 1.4, 1.5, 1.6 go."""
    clock = ManualClock(0.0)
    clock.stall(at=0.1, seconds=0.25)
    config = ControlConfig(initial_rate=10.0, burst_seconds=0.0, window_limit=10, max_rate=10.0)
    limiter = EndpointLimiter("e", config, clock=clock)
    starts = await _paced_requests(limiter, clock, 14, latency=0.05)
    assert starts == pytest.approx([0.0, 0.35, 0.35, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.4, 1.5, 1.6])
    # no second holds more than 10 (a request counts from its start until a second after its answer)
    for start in starts:
        assert sum(1 for other in starts if start - 1.0 - 0.05 < other <= start) <= 10


async def test_unpaced_limiter_never_sleeps() -> None:
    clock = FakeClock()
    limiter = EndpointLimiter("e", clock=clock)
    for _ in range(100):
        async with limiter.slot() as ticket:
            ticket.success()
    assert clock.now() == 0.0
    assert limiter.statistics().successes == 100


async def test_retry_after_pauses_every_worker() -> None:
    clock = FakeClock(0.0)
    limiter = EndpointLimiter("e", clock=clock)
    async with limiter.slot() as ticket:
        ticket.throttled(retry_after=2.5)
    assert limiter.statistics().paused_for == 2.5
    async with limiter.slot() as ticket:
        assert ticket.started_at >= 2.5
    assert limiter.statistics().throttles == 1


async def test_quota_header_zero_remaining_pauses_until_reset() -> None:
    clock = FakeClock(10.0)
    limiter = EndpointLimiter("e", clock=clock)
    limiter.note_quota(0, 4.0)
    async with limiter.slot() as ticket:
        assert ticket.started_at == 14.0


async def test_concurrency_limit_admits_waiters_in_order() -> None:
    limiter = EndpointLimiter("e", ControlConfig(initial_concurrency=2), clock=FakeClock())
    order: list[int] = []
    release = anyio.Event()
    entered = [anyio.Event() for _ in range(4)]

    async def worker(i: int) -> None:
        async with limiter.slot() as ticket:
            order.append(i)
            entered[i].set()
            await release.wait()
            ticket.success()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(worker, i)
                await anyio.wait_all_tasks_blocked()
            await entered[1].wait()
            stats = limiter.statistics()
            assert (stats.in_flight, stats.waiting) == (2, 2)
            assert order == [0, 1]
            release.set()
    assert order == [0, 1, 2, 3]
    assert limiter.statistics().in_flight == 0


async def test_transient_failure_shrinks_concurrency_of_waiting_workers() -> None:
    limiter = EndpointLimiter("e", ControlConfig(initial_concurrency=10, concurrency_decrease=0.5), clock=FakeClock())
    async with limiter.slot() as ticket:
        ticket.failed()
    assert limiter.statistics().concurrency_limit == 5
    assert limiter.statistics().failures == 1


async def test_semaphore_cancelled_waiter_gives_no_token_away() -> None:
    semaphore = AdjustableSemaphore(1)
    await semaphore.acquire()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(semaphore.acquire)
            await anyio.wait_all_tasks_blocked()
            assert semaphore.waiting == 1
            tg.cancel_scope.cancel()
    assert (semaphore.used, semaphore.waiting) == (1, 0)
    semaphore.release()
    assert semaphore.used == 0


async def test_semaphore_waiter_cancelled_right_after_it_was_handed_the_slot_passes_it_on() -> None:
    """The holder releases, which hands the slot to the first waiter; that waiter is cancelled
    before it runs: the slot must go to the next waiter, not be lost with the cancelled one.

    The cancellation is asyncio's own ``Task.cancel()`` (as ``asyncio.timeout`` or a foreign
    caller would do): anyio's scopes wait for a woken task to run before cancelling it, so only
    a native cancel lands in that window."""
    semaphore = AdjustableSemaphore(1)
    await semaphore.acquire()
    first_got = False
    second_got = anyio.Event()

    async def first() -> None:
        nonlocal first_got
        await semaphore.acquire()
        first_got = True
        semaphore.release()

    async def second() -> None:
        await semaphore.acquire()
        second_got.set()

    with anyio.fail_after(10):
        first_task = asyncio.get_running_loop().create_task(first())
        async with anyio.create_task_group() as tg:
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert semaphore.waiting == 2
            semaphore.release()  # handed to ``first``: its event is set, it has not run yet
            assert (semaphore.used, semaphore.waiting) == (1, 1)
            first_task.cancel()
            await second_got.wait()
        with pytest.raises(asyncio.CancelledError):
            await first_task
    assert not first_got
    assert (semaphore.used, semaphore.waiting) == (1, 0)


async def test_semaphore_raising_limit_wakes_waiters() -> None:
    semaphore = AdjustableSemaphore(1)
    await semaphore.acquire()
    got = anyio.Event()

    async def take() -> None:
        await semaphore.acquire()
        got.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            assert not got.is_set()
            semaphore.set_limit(2)
            await got.wait()
    assert semaphore.used == 2


async def test_cancelled_request_gives_no_signal() -> None:
    limiter = EndpointLimiter("e", clock=FakeClock())
    with anyio.CancelScope() as scope:
        async with limiter.slot():
            scope.cancel()
            await anyio.sleep(1)
    stats = limiter.statistics()
    assert (stats.successes, stats.throttles, stats.failures, stats.in_flight) == (0, 0, 0, 0)


async def test_retry_budget_counts() -> None:
    limiter = EndpointLimiter("e", ControlConfig(retry_budget=10.0, retry_cost=5.0), clock=FakeClock())
    assert [limiter.allow_retry(throttled=False) for _ in range(3)] == [True, True, False]
    stats = limiter.statistics()
    assert (stats.retries, stats.retries_refused, stats.budget) == (2, 1, 0.0)


def test_backoff_is_reproducible_with_a_seeded_registry() -> None:
    a = LimiterRegistry(seed=7).get("http://x:1")
    b = LimiterRegistry(seed=7).get("http://x:1")
    assert [a.backoff(n) for n in range(1, 6)] == [b.backoff(n) for n in range(1, 6)]
    assert all(0.0 <= a.backoff(n) <= min(20.0, 0.1 * 2 ** (n - 1)) for n in range(1, 20))


def test_rate_meter_window() -> None:
    meter = RateMeter(window=2.0)
    assert meter.rate(0.0) == 0.0
    for i in range(100):
        meter.add(5.0 + i * 0.01)  # 100 events in one second, after 5 idle seconds
    assert meter.rate(6.0) == pytest.approx(100.0)  # young meter: over the time since its first event
    assert meter.window_rate(6.0) == pytest.approx(50.0)  # the same events over the whole window
    assert meter.rate(7.0) == pytest.approx(50.0)
    assert meter.rate(8.5) == 0.0
    flood = RateMeter(window=1.0)  # 10 ms buckets
    flood.add(0.0, count=2)  # the two requests a shallow bucket let through, answered at once
    assert flood.rate(0.001) == pytest.approx(40.0)  # over 50 ms, not over one 10 ms bucket (200/s)


@pytest.mark.parametrize("phase", [0.0, 0.013, 0.025, 0.049])
def test_rate_meter_reads_a_steady_rate_at_any_point_of_its_newest_bucket(phase: float) -> None:
    """Over the whole window the kept buckets (less the expired part of the oldest) would read
    a steady rate up to one bucket (5%) low, and pacing would settle below what the endpoint
    accepts."""
    meter = RateMeter(window=1.0, buckets=20)  # buckets of 50 ms
    now = 3.0 + phase
    for i in range(int(now * 750) + 1):
        meter.add(i / 750)
    assert meter.rate(now) == pytest.approx(750.0, rel=0.01)
    assert RateMeter(window=1.0).window_rate(now) == 0.0
    fine = RateMeter(window=1.0)  # the default: 100 buckets, so the whole window's count is within 1%
    for i in range(int(now * 750) + 1):
        fine.add(i / 750)
    assert fine.window_rate(now) == pytest.approx(750.0, rel=0.011)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5000/api/2.0/mlflow/runs/search", "http://127.0.0.1:5000"),
        ("https://API.wandb.ai/graphql", "https://api.wandb.ai:443"),
        ("http://example.com/x?sig=secret", "http://example.com:80"),
        ("http://[::1]:9000/b", "http://[::1]:9000"),
    ],
)
def test_endpoint_of(url: str, expected: str) -> None:
    assert endpoint_of(url) == expected


def test_endpoint_of_rejects_relative() -> None:
    with pytest.raises(ValueError):
        endpoint_of("/api/runs")


def test_registry_shares_one_limiter_per_endpoint_and_applies_longest_override() -> None:
    registry = LimiterRegistry.from_mapping(
        {
            "max_concurrency": 64,
            "endpoints": {
                "s3://127.0.0.1:9000/bucket": {"initial_rate": 100.0},
                "s3://127.0.0.1:9000/bucket/hot": {"initial_rate": 10.0},
            },
        },
        clock=FakeClock(),
    )
    assert registry.get("http://a:1") is registry.get("http://a:1")
    assert registry.get("http://a:1").config.max_concurrency == 64
    assert registry.get("s3://127.0.0.1:9000/bucket/cold").config.initial_rate == 100.0
    hot = registry.get("s3://127.0.0.1:9000/bucket/hot/x").config
    assert (hot.initial_rate, hot.max_concurrency) == (10.0, 64)
    assert [s.endpoint for s in registry.statistics()] == [
        "http://a:1", "s3://127.0.0.1:9000/bucket/cold", "s3://127.0.0.1:9000/bucket/hot/x",
    ]


def test_an_adapter_declared_limit_applies_unless_the_user_configured_those_endpoints() -> None:
    registry = LimiterRegistry.from_mapping(
        {
            "max_concurrency": 64,
            "endpoints": {
                "http://w:1": {"cubic_scale": 0.2},  # broader than the declaration: kept where it does not collide
                "http://w:1/graphql#run-creation/mine/": {"initial_rate": 20.0},  # narrower: the user's wins
            },
        },
        clock=FakeClock(),
    )
    registry.declare("http://w:1/graphql#run-creation/", initial_rate=78.0, max_rate=79.2, burst_seconds=0.0)
    declared = registry.get("http://w:1/graphql#run-creation/team/project").config
    assert (declared.initial_rate, declared.max_rate, declared.burst_seconds) == (78.0, 79.2, 0.0)
    assert (declared.cubic_scale, declared.max_concurrency) == (0.2, 64)
    mine = registry.get("http://w:1/graphql#run-creation/mine/project").config
    assert (mine.initial_rate, mine.max_rate, mine.burst_seconds) == (20.0, None, 0.05)
    assert registry.get("http://w:1").config.initial_rate is None  # other calls of that host are untouched
    with pytest.raises(ValueError, match="max_rate"):
        registry.declare("http://w:1/x", max_rate=0.1)  # a bad declaration fails where it is made


def test_a_declaration_the_users_settings_contradict_gives_way() -> None:
    registry = LimiterRegistry.from_mapping({"min_rate": 100.0})
    registry.declare("http://w:1/limited", initial_rate=76.0)  # valid alone, below the user's floor here
    assert registry.get("http://w:1/limited/a").config.initial_rate is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_concurency": 3}, "unknown key 'max_concurency'"),
        ({"rate_decrease": 2.0}, "rate_decrease"),
        ({"window_limit": 0.5}, "window_limit"),
        ({"endpoints": {"http://a:1": {"bogus": 1}}}, "[ratelimit].endpoints.'http://a:1': unknown key 'bogus'"),
        ({"endpoints": 3}, "endpoints must be a table"),
    ],
)
def test_registry_config_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        LimiterRegistry.from_mapping(table)
    assert message in str(info.value)
    # The config loader turns ratelimit's ValueError into our ConfigError, message intact.
    with pytest.raises(ConfigError) as config_info:
        parse_config({"source": {"type": "local", "path": "/in"}, "destination": {"type": "local", "path": "/out"},
                      "ratelimit": table})
    assert message in str(config_info.value)


async def test_a_hot_endpoint_backing_off_never_delays_a_quiet_one() -> None:
    """Two prefixes on one registry and one clock: while the hot one is throttled, paced and
    paused, the quiet one's requests are admitted at once (no clock sleep, no pacing turn)."""
    clock = FakeClock(0.0)
    registry = LimiterRegistry(clock=clock, seed=1)
    hot, quiet = registry.get("s3://h:1/b/hot"), registry.get("s3://h:1/b/quiet")
    for number in range(20):  # the hot prefix: a run of throttles, the last with Retry-After
        async with hot.slot() as ticket:
            ticket.throttled(retry_after=5.0 if number == 19 else None)
    assert hot.statistics().rate_limit is not None and hot.statistics().paused_for == 5.0
    hot_delayed = hot.statistics().delayed
    quiet_sleeps = 0
    for round_ in range(50):
        sleeps = len(clock.sleeps)
        async with quiet.slot() as ticket:
            assert ticket.started_at == clock.now()  # admitted without waiting
            ticket.success()
        quiet_sleeps += len(clock.sleeps) - sleeps
        if round_ % 10 == 0:  # the hot prefix keeps being throttled in between
            async with hot.slot() as ticket:
                ticket.throttled()
    quiet_stats, hot_stats = quiet.statistics(), hot.statistics()
    assert quiet_sleeps == 0
    assert (quiet_stats.delayed, quiet_stats.throttles, quiet_stats.rate_limit, quiet.state.w_max) == (0, 0, None, None)
    assert (quiet_stats.successes, quiet_stats.paused_for) == (50, 0.0)
    assert hot_stats.throttles == 25 and hot_stats.delayed - hot_delayed == 5  # every hot request waited
