"""Adaptive rate limiting: pure policies, the limiter mechanism, clocks.

One ``EndpointLimiter`` per endpoint (from a process-wide ``LimiterRegistry``) is shared by every
worker: AIMD on concurrency against overload, CUBIC-recovering pacing against throttles,
``Retry-After`` / ``RateLimit-*`` honoured, jittered backoff and a retry budget. The policies in
``_policy`` are pure functions; time comes from an injected ``Clock``.
"""

from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import MonotonicClock as MonotonicClock
from ._clock import sleep_until as sleep_until
from ._limiter import AdjustableSemaphore as AdjustableSemaphore
from ._limiter import EndpointLimiter as EndpointLimiter
from ._limiter import LimiterStatistics as LimiterStatistics
from ._limiter import Ticket as Ticket
from ._meter import RateMeter as RateMeter
from ._policy import GENTLE_CYCLE_CAP as GENTLE_CYCLE_CAP
from ._policy import ControlConfig as ControlConfig
from ._policy import ControlState as ControlState
from ._policy import Jitter as Jitter
from ._policy import Outcome as Outcome
from ._policy import OutcomeKind as OutcomeKind
from ._policy import apply_quota as apply_quota
from ._policy import backoff_delay as backoff_delay
from ._policy import cubic_k as cubic_k
from ._policy import cubic_rate as cubic_rate
from ._policy import cubic_scale as cubic_scale
from ._policy import effective_rate as effective_rate
from ._policy import initial_state as initial_state
from ._policy import next_state as next_state
from ._policy import pacing_tolerance as pacing_tolerance
from ._policy import spend_retry as spend_retry
from ._registry import LimiterRegistry as LimiterRegistry
from ._registry import endpoint_of as endpoint_of
from ._retry import Retrying as Retrying

__all__ = [
    "GENTLE_CYCLE_CAP",
    "AdjustableSemaphore",
    "Clock",
    "ControlConfig",
    "ControlState",
    "EndpointLimiter",
    "FakeClock",
    "Jitter",
    "LimiterRegistry",
    "LimiterStatistics",
    "MonotonicClock",
    "Outcome",
    "OutcomeKind",
    "RateMeter",
    "Ticket",
    "apply_quota",
    "backoff_delay",
    "cubic_k",
    "cubic_rate",
    "cubic_scale",
    "effective_rate",
    "endpoint_of",
    "initial_state",
    "next_state",
    "pacing_tolerance",
    "sleep_until",
    "spend_retry",
]
