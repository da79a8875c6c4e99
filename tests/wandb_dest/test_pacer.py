"""Per-run file_stream pacing: under the rate, slower on 429, faster again when accepted."""

from __future__ import annotations

from adapters.wandb._filestream import RunPacer
from ratelimit import FakeClock


async def test_pacer_spaces_requests_at_the_configured_rate() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    for _ in range(5):
        await pacer.wait_turn()
    assert clock.now() == 2.0  # five requests at 2/s: t = 0, 0.5, 1.0, 1.5, 2.0


async def test_pacer_backs_off_on_throttle_and_honours_retry_after() -> None:
    clock = FakeClock()
    pacer = RunPacer(2.0, clock)
    await pacer.wait_turn()
    pacer.throttled(3.0)
    assert pacer.interval == 3.0
    await pacer.wait_turn()
    assert clock.now() == 3.0
    pacer.throttled(None)
    assert pacer.interval == 6.0


async def test_pacer_recovers_towards_the_configured_rate() -> None:
    pacer = RunPacer(2.0, FakeClock())
    pacer.throttled(8.0)
    for _ in range(50):
        pacer.accepted()
    assert pacer.interval == 0.5
