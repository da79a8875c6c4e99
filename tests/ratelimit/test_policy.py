"""Table-driven tests of the pure policies: no event loop, no clock, exact numbers."""

from __future__ import annotations

import dataclasses
import math

import collections

import pytest

from ratelimit import (
    ControlConfig,
    ControlState,
    Jitter,
    Outcome,
    OutcomeKind,
    apply_quota,
    backoff_delay,
    cubic_k,
    cubic_rate,
    cubic_scale,
    GENTLE_CYCLE_CAP,
    effective_rate,
    initial_state,
    next_state,
    pacing_tolerance,
    spend_retry,
)

CFG = ControlConfig()


def outcome(kind: OutcomeKind, now: float, *, started_at: float | None = None, in_flight: int = 16,
            accepted: float = 0.0, retry_after: float | None = None, attempted: float | None = None,
            window_accepted: float | None = None) -> Outcome:
    return Outcome(kind=kind, now=now, started_at=now if started_at is None else started_at,
                   in_flight=in_flight, accepted_rate=accepted, retry_after=retry_after, attempt_rate=attempted,
                   window_accepted_rate=window_accepted)


@pytest.mark.parametrize(
    ("jitter", "attempt", "previous", "uniform", "expected"),
    [
        (Jitter.NONE, 1, 0.0, 0.5, 0.1),
        (Jitter.NONE, 4, 0.0, 0.5, 0.8),
        (Jitter.NONE, 30, 0.0, 0.5, 20.0),  # capped
        (Jitter.FULL, 1, 0.0, 0.0, 0.0),
        (Jitter.FULL, 3, 0.0, 0.5, 0.2),
        (Jitter.FULL, 12, 0.0, 0.999, 0.999 * 20.0),
        (Jitter.DECORRELATED, 1, 0.0, 0.0, 0.1),  # U(base, 3 base) from base
        (Jitter.DECORRELATED, 1, 0.0, 1.0, 0.3),
        (Jitter.DECORRELATED, 2, 2.0, 0.5, 0.1 + 0.5 * (6.0 - 0.1)),
        (Jitter.DECORRELATED, 9, 15.0, 0.9, 20.0),  # capped
    ],
)
def test_backoff_delay(jitter: Jitter, attempt: int, previous: float, uniform: float, expected: float) -> None:
    config = CFG.replace(jitter=jitter)
    assert backoff_delay(config, attempt, previous, uniform) == pytest.approx(expected, rel=1e-12)


def test_backoff_attempt_is_one_based() -> None:
    with pytest.raises(ValueError):
        backoff_delay(CFG, 0, 0.0, 0.5)


def test_unpaced_until_first_throttle_then_decrease_to_beta_of_accepted() -> None:
    state = initial_state(CFG, now=0.0)
    assert effective_rate(state, 0.0) is None
    state = next_state(state, outcome(OutcomeKind.SUCCESS, 1.0, accepted=120.0), CFG)
    assert effective_rate(state, 1.0) is None
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 2.0, accepted=100.0), CFG)
    assert state.w_max == 100.0
    assert state.rate == pytest.approx(90.0)
    assert state.epoch == 2.0


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (0.0, 90.0),  # just after the throttle: beta * W_max
        (cubic_k(CFG, 100.0), 100.0),  # back at W_max after K seconds
        (cubic_k(CFG, 100.0) + 1.0, 100.4),  # slow probe just above it
        (cubic_k(CFG, 100.0) + 5.0, 150.0),  # faster further out
    ],
)
def test_cubic_recovery_table(since: float, expected: float) -> None:
    throttled = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 10.0, accepted=100.0), CFG)
    state = next_state(throttled, outcome(OutcomeKind.SUCCESS, 10.0 + since, accepted=100.0), CFG)
    assert state.rate == pytest.approx(expected)
    assert cubic_rate(CFG, 100.0, since) == pytest.approx(expected)


def test_cubic_k_matches_formula() -> None:
    # K = cbrt(W_max (1 - beta) / C): 100 req/s -> cbrt(25) s
    assert cubic_k(CFG, 100.0) == pytest.approx(25.0 ** (1 / 3))
    botocore_like = CFG.replace(rate_decrease=0.7)
    assert cubic_k(botocore_like, 100.0) == pytest.approx(4.217, abs=1e-3)  # reference §0.7


def test_allowance_grows_only_as_far_as_it_is_used() -> None:
    throttled = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 0.0, accepted=100.0), CFG)
    busy = next_state(throttled, outcome(OutcomeKind.SUCCESS, 30.0, accepted=150.0, attempted=160.0), CFG)
    assert busy.rate == pytest.approx(200.0)  # 1.25 x attempted
    held_back = next_state(throttled, outcome(OutcomeKind.SUCCESS, 30.0, accepted=40.0, attempted=40.0), CFG)
    assert held_back.rate == pytest.approx(100.0)  # never below W_max on that account
    early = next_state(throttled, outcome(OutcomeKind.SUCCESS, 1.0, accepted=90.0, attempted=90.0), CFG)
    assert early.rate == pytest.approx(cubic_rate(CFG, 100.0, 1.0))  # the cap does not bind


def test_idle_endpoint_allowance_capped_at_twice_accepted() -> None:
    throttled = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 0.0, accepted=100.0), CFG)
    later = next_state(throttled, outcome(OutcomeKind.SUCCESS, 60.0, accepted=70.0), CFG)
    assert later.rate == pytest.approx(140.0)  # cubic would be far higher; 2 x accepted wins
    quiet = next_state(throttled, outcome(OutcomeKind.SUCCESS, 60.0, accepted=1.0), CFG)
    assert quiet.rate == pytest.approx(100.0)  # never below W_max on that account


def test_one_reaction_per_round_trip() -> None:
    state = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 5.0, accepted=100.0), CFG)
    # Requests sent before the decrease come back throttled too: no further decrease.
    for t in (5.01, 5.02, 5.2):
        state = next_state(state, outcome(OutcomeKind.THROTTLE, t, started_at=4.99, accepted=100.0), CFG)
    assert state.rate == pytest.approx(90.0)
    assert state.epoch == 5.0
    # One sent after it is a new signal.
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 6.0, started_at=5.5, accepted=90.0), CFG)
    assert state.w_max == pytest.approx(90.0)
    assert state.rate == pytest.approx(81.0)


def test_a_clump_sent_after_a_decrease_is_the_same_episode() -> None:
    # The throttle that decreases took 0.1 s from admission to answer: for 4 x 0.1 s after the
    # decrease, throttles of requests admitted after it are its clump, not a new signal.
    state = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 5.0, started_at=4.9, accepted=100.0), CFG)
    assert (state.rate, state.guard_until) == (pytest.approx(90.0), pytest.approx(5.4))
    for t in (5.15, 5.3, 5.39):
        state = next_state(state, outcome(OutcomeKind.THROTTLE, t, started_at=t - 0.1, accepted=100.0), CFG)
    assert state.rate == pytest.approx(90.0) and state.epoch == 5.0
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 5.41, started_at=5.31, accepted=95.0), CFG)
    assert (state.w_max, state.epoch) == (pytest.approx(90.0), 5.41)  # past the guard: a new decrease
    unguarded = CFG.replace(decrease_guard=0.0)
    state = next_state(initial_state(unguarded, 0.0), outcome(OutcomeKind.THROTTLE, 5.0, started_at=4.9, accepted=100.0), unguarded)
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 5.15, started_at=5.05, accepted=100.0), unguarded)
    assert state.rate == pytest.approx(81.0)


def test_retry_after_pauses_endpoint_and_is_capped() -> None:
    state = initial_state(CFG, 0.0)
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 1.0, accepted=10.0, retry_after=7.5), CFG)
    assert state.paused_until == 8.5
    # an earlier-sent throttle still extends the pause, but never shortens it
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 2.0, started_at=0.5, retry_after=1.0), CFG)
    assert state.paused_until == 8.5
    state = next_state(state, outcome(OutcomeKind.THROTTLE, 2.0, started_at=0.5, retry_after=3600.0), CFG)
    assert state.paused_until == 2.0 + CFG.max_pause


@pytest.mark.parametrize(
    ("remaining", "reset_after", "expected_rate", "expected_pause"),
    [
        (10.0, 5.0, 2.0, -math.inf),
        (0.0, 5.0, None, 105.0),
        (1000.0, 1.0, 1000.0, -math.inf),
        (0.1, 10.0, CFG.min_rate, -math.inf),  # floor
    ],
)
def test_rate_limit_headers(remaining: float, reset_after: float, expected_rate: float | None, expected_pause: float) -> None:
    state = apply_quota(initial_state(CFG, 0.0), 100.0, remaining, reset_after, CFG)
    assert effective_rate(state, 100.0) == expected_rate
    assert state.paused_until == expected_pause
    assert effective_rate(state, 100.0 + reset_after) is None  # quota expires at the reset


def test_quota_and_own_rate_take_the_tighter() -> None:
    state = dataclasses.replace(initial_state(CFG, 0.0), rate=50.0)
    assert effective_rate(apply_quota(state, 0.0, 10.0, 1.0, CFG), 0.5) == 10.0
    assert effective_rate(apply_quota(state, 0.0, 100.0, 1.0, CFG), 0.5) == 50.0


def test_retry_budget_exhaustion_and_refund() -> None:
    config = CFG.replace(retry_budget=20.0, retry_cost=5.0, success_refund=1.0)
    state = initial_state(config, 0.0)
    verdicts = []
    for _ in range(5):
        allowed, state = spend_retry(state, config, throttled=False)
        verdicts.append(allowed)
    assert verdicts == [True, True, True, True, False]
    assert state.budget == 0.0
    # throttled retries are paced by the limiter, so they are free by default
    assert spend_retry(state, config, throttled=True)[0] is True
    for i in range(5):
        state = next_state(state, outcome(OutcomeKind.SUCCESS, float(i)), config)
    assert state.budget == 5.0
    assert spend_retry(state, config, throttled=False) == (True, dataclasses.replace(state, budget=0.0))
    for i in range(100):
        state = next_state(state, outcome(OutcomeKind.SUCCESS, float(i)), config)
    assert state.budget == 20.0  # capped at capacity


def test_rate_floor_and_cap() -> None:
    config = CFG.replace(min_rate=2.0, max_rate=50.0)
    state = initial_state(config, 0.0)
    for i in range(50):  # throttled with nothing accepted, again and again
        state = next_state(state, outcome(OutcomeKind.THROTTLE, float(i), accepted=0.0), config)
    assert state.rate == 2.0
    state = next_state(state, outcome(OutcomeKind.SUCCESS, 1000.0, accepted=1000.0), config)
    assert state.rate == 50.0


@pytest.mark.parametrize(
    ("in_flight", "steps", "expected"),
    [
        (16, 16, 17.0),  # one window of successes while busy: +1 (about)
        (4, 100, 16.0),  # window not in use: no growth
    ],
)
def test_additive_increase_only_when_busy(in_flight: int, steps: int, expected: float) -> None:
    state = initial_state(CFG, 0.0)
    for i in range(steps):
        state = next_state(state, outcome(OutcomeKind.SUCCESS, float(i), in_flight=in_flight), CFG)
    assert state.concurrency == pytest.approx(expected, abs=0.05)


def test_multiplicative_decrease_floor_and_cap() -> None:
    config = CFG.replace(initial_concurrency=10, min_concurrency=2, max_concurrency=12)
    state = initial_state(config, 0.0)
    state = next_state(state, outcome(OutcomeKind.TRANSIENT, 1.0), config)
    assert state.concurrency == pytest.approx(7.0)
    state = next_state(state, outcome(OutcomeKind.TRANSIENT, 1.1, started_at=0.9), config)
    assert state.concurrency == pytest.approx(7.0)  # same round trip
    for i in range(20):
        state = next_state(state, outcome(OutcomeKind.TRANSIENT, 2.0 + i), config)
    assert state.concurrency == 2.0
    for i in range(1000):
        state = next_state(state, outcome(OutcomeKind.SUCCESS, 100.0 + i, in_flight=12), config)
    assert state.concurrency == 12.0


def test_neutral_outcome_changes_nothing() -> None:
    state = initial_state(CFG, 0.0)
    assert next_state(state, outcome(OutcomeKind.NEUTRAL, 3.0), CFG) == state


def test_initial_rate_starts_on_the_plateau() -> None:
    config = CFG.replace(initial_rate=40.0)
    state = initial_state(config, 100.0)
    assert effective_rate(state, 100.0) == 40.0
    grown = next_state(state, outcome(OutcomeKind.SUCCESS, 101.0, accepted=40.0), config)
    assert grown.rate == pytest.approx(40.0 + cubic_scale(config, 40.0))  # one second past K
    assert cubic_scale(config.replace(min_cycle_requests=0.0), 40.0) == config.cubic_scale


@pytest.mark.parametrize("w_max", [5.0, 15.0, 20.0, 50.0])
def test_low_rate_cycles_last_min_cycle_requests(w_max: float) -> None:
    """Below ~60 requests/s a cycle lasts ``min_cycle_requests`` requests (so one throttle per
    cycle stays under 1%); at higher rates C is botocore-like and untouched."""
    assert cubic_k(CFG, w_max) == pytest.approx(min(CFG.min_cycle_requests / w_max, GENTLE_CYCLE_CAP))
    assert cubic_scale(CFG, 100.0) == cubic_scale(CFG, 3500.0) == CFG.cubic_scale
    assert cubic_k(CFG, 100.0) * 100.0 > CFG.min_cycle_requests


@pytest.mark.parametrize(
    "changes",
    [
        {"min_concurrency": 0},
        {"initial_concurrency": 300},
        {"rate_decrease": 1.0},
        {"concurrency_decrease": 0.0},
        {"min_rate": 0.0},
        {"initial_rate": 0.1},
        {"backoff_cap": 0.01},
        {"retry_cost": -1.0},
        {"jitter": "sometimes"},
        {"decrease_guard": -1.0},
    ],
)
def test_config_rejects_nonsense(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ControlConfig(**changes)  # type: ignore[arg-type]


def simulate(capacity: float, seconds: float, config: ControlConfig = CFG, dt: float = 0.01) -> tuple[list[float], int, int]:
    """A closed-form S3 prefix: accepts up to ``capacity`` requests/s, throttles the excess.

    The client sends at its effective rate (or 2x capacity while unpaced); each step's
    outcomes are fed back with a one-step round trip. Returns the per-step accepted rates and
    the throttle counts before and after t = 10 s.
    """
    state: ControlState = initial_state(config, 0.0)
    accepted_rates: list[float] = []
    sent_rates: list[float] = []
    owed = 0.0
    throttled_early = throttled_late = 0
    for step in range(int(seconds / dt)):
        now = step * dt
        rate = effective_rate(state, now) or 2.0 * capacity
        owed += rate * dt
        sent = int(owed)
        owed -= sent
        accepted = min(sent, capacity * dt + 1e-9)
        accepted_count = int(accepted)
        throttles = sent - accepted_count
        accepted_rates.append(accepted_count / dt)
        sent_rates.append(sent / dt)
        window = int(config.meter_window / dt)
        measured = sum(accepted_rates[-window:]) / min(len(accepted_rates), window)
        attempted = sum(sent_rates[-window:]) / min(len(sent_rates), window)
        for _ in range(accepted_count):
            state = next_state(state, outcome(OutcomeKind.SUCCESS, now + dt, started_at=now, accepted=measured, attempted=attempted), config)
        for _ in range(throttles):
            state = next_state(state, outcome(OutcomeKind.THROTTLE, now + dt, started_at=now, accepted=measured, attempted=attempted), config)
        if now < 10.0:
            throttled_early += throttles
        else:
            throttled_late += throttles
    return accepted_rates, throttled_early, throttled_late


@pytest.mark.parametrize(("capacity", "seconds"), [(100.0, 120.0), (1000.0, 60.0), (3500.0, 30.0)])
def test_convergence_keeps_goodput_near_the_limit(capacity: float, seconds: float) -> None:
    rates, _, throttled_late = simulate(capacity, seconds)
    goodput = sum(rates) / len(rates) / capacity
    late_requests = sum(rates[1000:]) * 0.01
    assert goodput >= 0.95
    assert throttled_late / late_requests <= 0.01


def bucket_front(rate: float, burst: float, seconds: float, config: ControlConfig = CFG, dt: float = 0.005) -> tuple[float, float]:
    """A prefix behind a token bucket (``rate``/s, ``max(1, rate * burst)`` deep), the front
    ``tests/servers/s3front`` models; the client floods until its first throttle, then paces
    (with the limiter's own burst allowance). Returns goodput / rate and the throttled share
    after 10 s."""
    state = initial_state(config, 0.0)
    depth = max(1.0, rate * burst)
    tokens, allowance = depth, 0.0
    accepted_log: list[int] = []
    sent_log: list[int] = []
    accepted_total = accepted_late = throttled_late = 0
    window = int(config.meter_window / dt)
    for step in range(int(seconds / dt)):
        now = step * dt
        tokens = min(depth, tokens + rate * dt)
        pace = effective_rate(state, now)
        if pace is None:
            sent = int(4 * rate * dt) + 1
        else:
            allowance = min(pace * config.burst_seconds + 1, allowance + pace * dt)
            sent = int(allowance)
            allowance -= sent
        accepted = min(sent, int(tokens))
        tokens -= accepted
        accepted_log.append(accepted)
        sent_log.append(sent)
        measured = sum(accepted_log[-window:]) / (min(len(accepted_log), window) * dt)
        attempted = sum(sent_log[-window:]) / (min(len(sent_log), window) * dt)
        for kind, count in ((OutcomeKind.SUCCESS, accepted), (OutcomeKind.THROTTLE, sent - accepted)):
            for _ in range(count):
                state = next_state(
                    state, outcome(kind, now + dt, started_at=now, accepted=measured, attempted=attempted), config
                )
        accepted_total += accepted
        if now >= 10.0:
            accepted_late += accepted
            throttled_late += sent - accepted
    return accepted_total / (rate * seconds), throttled_late / max(1, accepted_late + throttled_late)


@pytest.mark.parametrize(("rate", "burst"), [(20.0, 0.1), (20.0, 2.0), (100.0, 0.1), (1000.0, 0.5)])
def test_token_bucket_front_goodput_and_throttles_after_ten_seconds(rate: float, burst: float) -> None:
    goodput, throttled_late = bucket_front(rate, burst, 60.0)
    assert goodput >= 0.95
    assert throttled_late <= 0.01
    if rate == 20.0:  # without the gentler low-rate cycle, one throttle per ~35 requests
        _, before = bucket_front(rate, burst, 60.0, CFG.replace(min_cycle_requests=0.0))
        assert before > 0.01


def window_front(limit: float, seconds: float, config: ControlConfig = CFG, dt: float = 0.005,
                 retry_after: float = 1.0, first_w_max: list[float | None] | None = None) -> tuple[float, int]:
    """A limit of ``limit`` requests in any sliding second, answering the excess 429 with
    ``Retry-After`` (W&B's run creation per project); the client floods until its first
    throttle, then paces with the limiter's burst allowance and sends nothing while paused.
    Returns goodput / limit and how many throttles decreased the rate (episodes); the first
    episode's ``W_max`` is appended to ``first_w_max``."""
    first_w_max = [] if first_w_max is None else first_w_max
    state = initial_state(config, 0.0)
    window: collections.deque[float] = collections.deque()
    allowance, accepted_total, episodes = 0.0, 0, 0
    accepted_log: list[int] = []
    sent_log: list[int] = []
    meter = int(config.meter_window / dt)
    for step in range(int(seconds / dt)):
        now = step * dt
        while window and window[0] <= now - 1.0:
            window.popleft()
        pace = effective_rate(state, now)
        if now < state.paused_until:
            sent = 0
        elif pace is None:
            sent = int(4 * limit * dt) + 1
        else:  # the limiter's burst allowance, none once an overshoot costs a pause
            burst = pacing_tolerance(state, config)
            allowance = min(pace * (burst + dt) + 1, allowance + pace * dt)  # + a step: no credit lost
            sent = int(allowance)
            allowance -= sent
        accepted = 0
        for _ in range(sent):
            if len(window) < limit:
                window.append(now)
                accepted += 1
        accepted_log.append(accepted)
        sent_log.append(sent)
        measured = sum(accepted_log[-meter:]) / (min(len(accepted_log), meter) * dt)
        attempted = sum(sent_log[-meter:]) / (min(len(sent_log), meter) * dt)
        whole_window = sum(accepted_log[-meter:]) / config.meter_window
        for _ in range(accepted):
            state = next_state(state, outcome(OutcomeKind.SUCCESS, now + dt, started_at=now, accepted=measured,
                                              attempted=attempted, window_accepted=whole_window), config)
        for _ in range(sent - accepted):
            epoch = state.epoch
            state = next_state(state, outcome(OutcomeKind.THROTTLE, now + dt, started_at=now, accepted=measured,
                                              attempted=attempted, retry_after=retry_after,
                                              window_accepted=whole_window), config)
            episodes += state.epoch != epoch
            if episodes == 1 and state.epoch != epoch:
                first_w_max.append(state.w_max)
        accepted_total += accepted
    return accepted_total / (limit * seconds), episodes


@pytest.mark.parametrize("limit", [80.0, 500.0])
def test_throttles_that_pause_the_endpoint_make_the_cycles_longer(limit: float) -> None:
    """Each overshoot of a limit answered with ``Retry-After: 1`` stops the endpoint a second:
    probing for the limit then happens every ``pause_cycles`` pauses, not every few seconds."""
    goodput, episodes = window_front(limit, 30.0)
    eager_goodput, eager_episodes = window_front(limit, 30.0, CFG.replace(pause_cycles=0.0))
    assert episodes <= 2 and goodput >= 0.9
    assert eager_episodes >= 4 and eager_goodput < goodput - 0.05
    assert cubic_k(CFG, limit, pause_cost=1.0) == pytest.approx(CFG.pause_cycles)
    assert cubic_k(CFG, limit) < 10.0  # a throttle without a pause keeps the short cycle


def test_a_pausing_throttle_takes_w_max_from_the_last_whole_window() -> None:
    """The first burst fills W&B's 80-per-second window in a quarter second: over the time
    elapsed that reads as 320/s; over the whole window it is the limit."""
    w_max: list[float | None] = []
    window_front(80.0, 3.0, first_w_max=w_max)
    assert w_max == [pytest.approx(80.0)]
    # a throttle without a pause keeps the measure over the time elapsed (a token bucket's first
    # throttle comes after its burst, at the rate the client was sending)
    state = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 0.25, accepted=320.0,
                                                         window_accepted=80.0), CFG)
    assert state.w_max == pytest.approx(320.0)
    paused = next_state(initial_state(CFG, 0.0), outcome(OutcomeKind.THROTTLE, 0.25, accepted=320.0,
                                                          window_accepted=80.0, retry_after=1.0), CFG)
    assert (paused.w_max, paused.rate) == (pytest.approx(80.0), pytest.approx(72.0))
