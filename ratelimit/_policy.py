"""Pure rate-limit policies: ``(state, outcome) -> state``, no I/O, no clock reads.

Why these choices (see ../shared/reference/peers-and-ratelimits.md §2-3):

* **Two knobs, two signals.** Pacing (request *rate*) answers throttles (429, 503 SlowDown),
  because object stores and APIs limit requests per second, and on a fast link any concurrency
  can exceed a rate. Concurrency (requests *in flight*) answers overload (timeouts, resets,
  other 5xx) with AIMD (Chiu & Jain; Netflix ``AIMDLimit``): +1 per window of successes while
  the window is in use, times ``concurrency_decrease`` on failure.
* **CUBIC recovery of the rate** (botocore's adaptive mode, TCP CUBIC): on a throttle the rate
  drops to ``rate_decrease * W_max`` where ``W_max`` is the rate the endpoint was accepting,
  then follows ``W_max + C (t - K)^3``: fast back towards ``W_max``, a plateau near it, and a
  slow then faster probe above it. We use beta = 0.9 rather than botocore's 0.7: the time-average
  of a CUBIC cycle is ``W_max (1 - (1 - beta) / 4)``, i.e. 97.5% of the limit instead of 92.5%,
  and our shared controller (one per endpoint, not one per client) makes the measured
  ``W_max`` reliable enough for the smaller step.
* **One reaction per round trip** (TCP): outcomes of requests that *started* before the last
  decrease are ignored for the decrease, so a burst of throttles from one overshoot is one
  signal, not a collapse to the floor. Nor do throttles within ``decrease_guard`` times the
  latency of the request that caused the decrease count: on a busy client the requests admitted
  just after a decrease still leave in a clump with the older ones (the latency, admission to
  answer, measures that queue), and reacting to each clump cut the rate 3-4 times per episode,
  to ~0.75 of the limit (bench s3_slowdown, 300 req/s with a 0.1 s bucket: goodput 0.90).
* **Unpaced until the first throttle** (botocore adaptive, rclone's S3 pacer): an endpoint that
  never throttles is never slowed down. ``initial_rate`` starts paced instead.
* **Server hints win**: ``Retry-After`` pauses the whole endpoint; ``RateLimit-Remaining`` /
  ``RateLimit-Reset`` cap the rate (or pause at 0 remaining) until the reset. A throttle that
  paused the endpoint makes each later overshoot cost that pause too (W&B's run creation: a
  429 with ``Retry-After: 1`` stops every creation for a second), so cycles then last at least
  ``pause_cycles`` pauses: CUBIC's average stays ~97.5% of the limit and the pauses cost at
  most ``1 / (pause_cycles + 1)`` of the time (1,000 runs at W&B's 80/s: 7 pauses in 20.7 s).
  Such a throttle takes ``W_max`` from the successes of the last whole meter window, not of
  the time a young meter has run: a server that pauses counts over a window.
* **Jittered exponential backoff** per request (AWS "Exponential Backoff and Jitter": full and
  decorrelated jitter do the least work) and a **retry budget** per endpoint (botocore's
  standard-mode quota: a retry after a failure costs tokens, each success refunds some), so a
  failing endpoint cannot multiply its load. Retries after a *throttle* cost nothing by default:
  they go back through the paced limiter, so they cannot add load beyond the rate.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

NO_TIME = float("-inf")
GENTLE_CYCLE_CAP = 10.0  # seconds: the longest CUBIC climb ``min_cycle_requests`` may ask for
PAUSE_CYCLE_CAP = 120.0  # seconds: the longest climb ``pause_cycles`` may ask for


class Jitter(str, enum.Enum):
    """How retry delays are randomised."""

    FULL = "full"  # U(0, min(cap, base * 2^(n-1)))
    DECORRELATED = "decorrelated"  # min(cap, U(base, 3 * previous))
    NONE = "none"  # min(cap, base * 2^(n-1)); for tests and comparisons only


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    """Tuning of one endpoint's controller; the defaults suit S3 and HTTP APIs alike.

    Memory and load bounds: at most ``max_concurrency`` requests in flight per endpoint; retries
    beyond the budget fail fast; no single request makes more than its caller's max attempts.
    """

    initial_concurrency: int = 16
    min_concurrency: int = 1
    max_concurrency: int = 256
    concurrency_decrease: float = 0.7
    initial_rate: float | None = None  # requests/s; None: unpaced until the first throttle
    min_rate: float = 0.5  # botocore's floor
    max_rate: float | None = None  # a hard cap (for example a known API quota)
    rate_decrease: float = 0.9  # CUBIC beta
    cubic_scale: float = 0.4  # CUBIC C, in (requests/s) per s^3
    min_cycle_requests: float = 150.0  # gentler C below ~60 requests/s (see ``cubic_scale()``); 0: off
    burst_seconds: float = 0.05  # pacing tolerance: bursts of up to rate * burst_seconds + 1
    # Requests the endpoint allows per ``meter_window`` when that is known (a sliding-window
    # limit, such as W&B's run creation): every paced turn then also keeps the requests answered
    # in the last window plus those in flight below it, and a turn the event loop overslept is
    # caught up within it instead of lapsing (see ``EndpointLimiter._wait_for_turn``). None: unknown.
    window_limit: float | None = None
    backoff_base: float = 0.1
    backoff_cap: float = 20.0
    jitter: Jitter = Jitter.FULL
    max_pause: float = 300.0  # longest Retry-After / RateLimit-Reset we obey
    retry_budget: float = 500.0
    retry_cost: float = 5.0
    throttle_retry_cost: float = 0.0
    success_refund: float = 1.0
    # Seconds over which the accepted rate is measured; W_max is taken from it on a throttle,
    # so it must be short enough not to lag a ramp (botocore: 0.5 s buckets, smoothed).
    meter_window: float = 1.0
    # After a decrease, throttles within this many times the latency of the request that caused
    # it are the same episode (see ``_on_throttle``); 0: only the started-before-the-decrease rule.
    decrease_guard: float = 4.0
    # After a throttle that paused the endpoint (Retry-After), a cycle lasts at least this many
    # times that pause (see ``cubic_scale()``); 0: off.
    pause_cycles: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_concurrency <= self.initial_concurrency <= self.max_concurrency:
            raise ValueError("need 1 <= min_concurrency <= initial_concurrency <= max_concurrency")
        if not 0 < self.concurrency_decrease < 1 or not 0 < self.rate_decrease < 1:
            raise ValueError("concurrency_decrease and rate_decrease must be in (0, 1)")
        if self.min_rate <= 0 or self.cubic_scale <= 0 or self.meter_window <= 0:
            raise ValueError("min_rate, cubic_scale and meter_window must be > 0")
        if self.min_cycle_requests < 0 or self.decrease_guard < 0 or self.pause_cycles < 0:
            raise ValueError("min_cycle_requests, decrease_guard and pause_cycles must be >= 0")
        if self.window_limit is not None and self.window_limit < 1:
            raise ValueError("window_limit must be at least 1 request per meter_window")
        for name in ("initial_rate", "max_rate"):
            value = getattr(self, name)
            if value is not None and value < self.min_rate:
                raise ValueError(f"{name} must be >= min_rate ({self.min_rate})")
        if self.backoff_base < 0 or self.backoff_cap < self.backoff_base or self.burst_seconds < 0:
            raise ValueError("need 0 <= backoff_base <= backoff_cap and burst_seconds >= 0")
        if min(self.retry_budget, self.retry_cost, self.throttle_retry_cost, self.success_refund) < 0:
            raise ValueError("retry budget figures must be >= 0")
        object.__setattr__(self, "jitter", Jitter(self.jitter))

    def replace(self, **changes: Any) -> ControlConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class ControlState:
    """Everything a controller decides from; replaced (never mutated) on each outcome."""

    concurrency: float
    rate: float | None  # requests/s; None = unpaced
    w_max: float | None = None  # the rate the endpoint accepted when it last throttled
    epoch: float = NO_TIME  # when the rate was last decreased (CUBIC's t = 0)
    guard_until: float = NO_TIME  # throttles before this belong to the last decrease's episode
    pause_cost: float = 0.0  # seconds the last decreasing throttle paused the endpoint for
    concurrency_epoch: float = NO_TIME  # when concurrency was last decreased
    paused_until: float = NO_TIME  # Retry-After / exhausted RateLimit quota
    quota_rate: float | None = None  # RateLimit-Remaining / RateLimit-Reset
    quota_until: float = NO_TIME
    budget: float = 0.0


class OutcomeKind(enum.Enum):
    SUCCESS = "success"  # the endpoint served the request (including 404s and other answers)
    THROTTLE = "throttle"  # 429, 503 SlowDown: slow the rate down
    TRANSIENT = "transient"  # timeout, reset, other 5xx: reduce concurrency
    NEUTRAL = "neutral"  # no signal (cancelled, or a failure of our own)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What one request's end tells the controller, with the measurements taken at that time."""

    kind: OutcomeKind
    now: float
    started_at: float  # when the request was admitted (its pacing turn was decided)
    in_flight: int  # requests being sent at ``now``, this one included
    accepted_rate: float  # measured successes/s over the meter window
    retry_after: float | None = None
    attempt_rate: float | None = None  # measured request starts/s over the meter window
    # successes in the last whole meter window, per second, even while the meter is younger than
    # a window (``accepted_rate`` is then over the time elapsed); measured for throttles only
    window_accepted_rate: float | None = None


def cubic_scale(config: ControlConfig, w_max: float, pause_cost: float = 0.0) -> float:
    """CUBIC's C for ``w_max``: ``cubic_scale``, made gentler at low rates so a cycle (throttle,
    back off, climb back to ``w_max``) lasts at least ``min_cycle_requests`` requests, and
    after a throttle that paused the endpoint for ``pause_cost`` seconds, at least
    ``pause_cycles`` such pauses.

    With a fixed C a cycle lasts about ``K = (w_max (1 - beta) / C)^(1/3)`` seconds and ends in a
    throttle; at 20 requests/s that is 1.7 s, 34 requests, so each throttle is 3% of them. The
    time-average of the cycle (``w_max (1 - (1 - beta) / 4)``) does not depend on C: a longer
    cycle keeps the goodput and throttles less often.
    """
    if w_max <= 0:
        return config.cubic_scale
    k_min = 0.0
    if config.min_cycle_requests > 0:
        # at most GENTLE_CYCLE_CAP seconds, so a very low rate still probes upwards in useful time
        k_min = min(config.min_cycle_requests / w_max, GENTLE_CYCLE_CAP)
    k_min = max(k_min, min(config.pause_cycles * pause_cost, PAUSE_CYCLE_CAP))
    if k_min <= 0:
        return config.cubic_scale
    return min(config.cubic_scale, w_max * (1.0 - config.rate_decrease) / k_min**3)


def cubic_k(config: ControlConfig, w_max: float, pause_cost: float = 0.0) -> float:
    """Seconds CUBIC takes to climb back from ``beta * w_max`` to ``w_max``."""
    scale = cubic_scale(config, w_max, pause_cost)
    return float((w_max * (1.0 - config.rate_decrease) / scale) ** (1.0 / 3.0))


def cubic_rate(config: ControlConfig, w_max: float, since_decrease: float, pause_cost: float = 0.0) -> float:
    k = cubic_k(config, w_max, pause_cost)
    return w_max + cubic_scale(config, w_max, pause_cost) * (since_decrease - k) ** 3


def initial_state(config: ControlConfig, now: float) -> ControlState:
    """A fresh controller. With ``initial_rate`` it starts on the CUBIC plateau at that rate."""
    state = ControlState(
        concurrency=float(config.initial_concurrency), rate=None, budget=config.retry_budget
    )
    if config.initial_rate is not None:
        w_max = config.initial_rate
        state = dataclasses.replace(
            state, rate=w_max, w_max=w_max, epoch=now - cubic_k(config, w_max)
        )
    return state


def effective_rate(state: ControlState, now: float) -> float | None:
    """The pacing rate in force at ``now`` (the tighter of ours and the server's quota)."""
    rates = [r for r in (state.rate,) if r is not None]
    if state.quota_rate is not None and now < state.quota_until:
        rates.append(state.quota_rate)
    return min(rates) if rates else None


def pacing_tolerance(state: ControlState, config: ControlConfig) -> float:
    """Seconds a paced turn may come early (``burst_seconds``); none once an overshoot costs a
    pause: with a sliding-window limit a burst of rate x burst_seconds trips it below the rate
    (W&B's 80/s run creation tripped at ~76/s)."""
    return 0.0 if state.pause_cost > 0 else config.burst_seconds


def concurrency_limit(state: ControlState) -> int:
    return max(1, math.floor(state.concurrency))


def next_state(state: ControlState, outcome: Outcome, config: ControlConfig) -> ControlState:
    """The controller's reaction to one request's outcome."""
    if outcome.kind is OutcomeKind.SUCCESS:
        return _on_success(state, outcome, config)
    if outcome.kind is OutcomeKind.THROTTLE:
        return _on_throttle(state, outcome, config)
    if outcome.kind is OutcomeKind.TRANSIENT:
        return _on_transient(state, outcome, config)
    return state


def _clamp_rate(config: ControlConfig, rate: float) -> float:
    rate = max(config.min_rate, rate)
    return rate if config.max_rate is None else min(config.max_rate, rate)


def _on_success(state: ControlState, outcome: Outcome, config: ControlConfig) -> ControlState:
    concurrency = state.concurrency
    # Grow only while the window is in use (Netflix AIMDLimit): an idle client proves nothing.
    if outcome.in_flight * 2 >= concurrency:
        concurrency = min(float(config.max_concurrency), concurrency + 1.0 / concurrency)
    rate = state.rate
    if state.w_max is not None:
        rate = cubic_rate(config, state.w_max, outcome.now - state.epoch, state.pause_cost)
        # Probe only with an allowance we use: a client held back by something else (CPU, its
        # own concurrency, idle workers) must not build up a rate it would then burst at.
        # (botocore caps at 2x the measured rate; we cap at 1.25x what we actually attempt.)
        if outcome.attempt_rate is not None:
            rate = min(rate, max(state.w_max, 1.25 * outcome.attempt_rate))
        else:
            rate = min(rate, max(state.w_max, 2.0 * outcome.accepted_rate))
        rate = _clamp_rate(config, rate)
    budget = min(config.retry_budget, state.budget + config.success_refund)
    return dataclasses.replace(state, concurrency=concurrency, rate=rate, budget=budget)


def _pause(state: ControlState, now: float, seconds: float | None, config: ControlConfig) -> float:
    if seconds is None or seconds <= 0:
        return state.paused_until
    return max(state.paused_until, now + min(seconds, config.max_pause))


def _on_throttle(state: ControlState, outcome: Outcome, config: ControlConfig) -> ControlState:
    paused_until = _pause(state, outcome.now, outcome.retry_after, config)
    if outcome.started_at <= state.epoch or outcome.now < state.guard_until:
        # Sent before our last decrease, at the old rate, or admitted just after it but queued
        # behind those (a busy event loop sends what it admitted in a clump): already answered.
        return dataclasses.replace(state, paused_until=paused_until)
    current = effective_rate(state, outcome.now)
    accepted = outcome.accepted_rate
    if paused_until > outcome.now and outcome.window_accepted_rate is not None:
        # A server that answers with a pause counts requests over a window: what it let through
        # in the last whole window is its limit. Over the time elapsed instead, a first burst
        # (80 run creations in 0.8 s against W&B's 80 per second) reads as 100/s and the next
        # cycle trips again at once.
        accepted = outcome.window_accepted_rate
    if current is None:
        basis = accepted
    else:
        basis = min(current, accepted) if accepted > 0 else current
    w_max = _clamp_rate(config, basis)
    return dataclasses.replace(
        state,
        w_max=w_max,
        rate=_clamp_rate(config, config.rate_decrease * w_max),
        epoch=outcome.now,
        guard_until=outcome.now + config.decrease_guard * (outcome.now - outcome.started_at),
        paused_until=paused_until,
        pause_cost=paused_until - outcome.now if paused_until > outcome.now else 0.0,
    )


def _on_transient(state: ControlState, outcome: Outcome, config: ControlConfig) -> ControlState:
    if outcome.started_at < state.concurrency_epoch:
        return state
    concurrency = max(float(config.min_concurrency), state.concurrency * config.concurrency_decrease)
    return dataclasses.replace(state, concurrency=concurrency, concurrency_epoch=outcome.now)


def apply_quota(
    state: ControlState, now: float, remaining: float, reset_after: float, config: ControlConfig
) -> ControlState:
    """Honour ``RateLimit-Remaining`` / ``RateLimit-Reset``: spread what is left until the reset."""
    reset_after = min(max(reset_after, 0.0), config.max_pause)
    if reset_after <= 0:
        return state
    if remaining <= 0:
        return dataclasses.replace(state, paused_until=_pause(state, now, reset_after, config))
    quota_rate = max(config.min_rate, remaining / reset_after)
    return dataclasses.replace(state, quota_rate=quota_rate, quota_until=now + reset_after)


def spend_retry(state: ControlState, config: ControlConfig, *, throttled: bool) -> tuple[bool, ControlState]:
    """Take a retry's cost from the budget; ``False`` (state unchanged) when it cannot pay."""
    cost = config.throttle_retry_cost if throttled else config.retry_cost
    if state.budget < cost:
        return False, state
    return True, dataclasses.replace(state, budget=state.budget - cost)


def backoff_delay(config: ControlConfig, attempt: int, previous: float, uniform: float) -> float:
    """Delay before retry number ``attempt`` (1-based); ``uniform`` is a draw from [0, 1)."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    base, cap = config.backoff_base, config.backoff_cap
    if config.jitter is Jitter.DECORRELATED:
        high = 3.0 * max(previous, base)
        return min(cap, base + uniform * (high - base))
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    if config.jitter is Jitter.NONE:
        return ceiling
    return uniform * ceiling
