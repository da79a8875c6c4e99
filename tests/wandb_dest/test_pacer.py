"""Per-run file_stream pacing: a sliding window at the rate, slower on 429, faster again when accepted."""

from __future__ import annotations

from adapters.wandb._filestream import RunPacer
from ratelimit import FakeClock


async def send(pacer: RunPacer, clock: FakeClock, *, took: float = 0.0) -> float:
    """One request through the pacer that the server answers after ``took`` seconds; returns
    the time it left."""
    await pacer.wait_turn()
    left = clock.now()
    await clock.sleep(took)
    pacer.accepted()
    return left


async def test_pacer_allows_rate_requests_in_any_one_second_window() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    times = [await send(pacer, clock) for _ in range(5)]
    assert times == [0.0, 0.0, 1.0, 1.0, 2.0]  # two per second, as a 2/s sliding window admits


async def test_quiet_run_sends_its_last_lines_and_summary_without_waiting() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    await send(pacer, clock)
    await clock.sleep(5.0)
    assert [await send(pacer, clock) for _ in range(2)] == [5.0, 5.0]


async def test_window_counts_from_the_answer_so_slow_uploads_never_crowd_the_server() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    first = await send(pacer, clock, took=0.75)  # answered at 0.75
    second = await send(pacer, clock)  # at 0.75
    third = await send(pacer, clock)
    assert (first, second, third) == (0.0, 0.75, 1.75)  # the first one's answer + 1 s


async def test_fractional_rates_space_single_requests() -> None:
    clock = FakeClock()
    pacer = RunPacer(0.5, clock)
    assert [await send(pacer, clock) for _ in range(3)] == [0.0, 2.0, 4.0]


async def test_pacer_backs_off_on_throttle_and_honours_retry_after() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    await pacer.wait_turn()
    pacer.throttled(3.0)
    assert pacer.rate == 1.0
    await pacer.wait_turn()
    assert clock.now() == 3.0  # Retry-After
    pacer.throttled(None)
    assert pacer.rate == 0.5
    await pacer.wait_turn()
    assert clock.now() == 5.0  # one request per 2 s now


async def test_pacer_recovers_towards_the_configured_rate() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    for _ in range(6):
        await pacer.wait_turn()
        pacer.throttled(None)
    assert pacer.rate == 2.0 / 64
    for _ in range(50):
        await send(pacer, clock)
    assert pacer.rate == 2.0
