"""The process-wide set of limiters: one per endpoint, created on first use, shared by all.

Endpoints are strings: ``scheme://host:port`` for HTTP APIs (``endpoint_of(url)``), and
``s3://host:port/bucket/prefix`` for object stores, whose limits are per key prefix. Overrides
configured for an endpoint also apply to every endpoint that starts with it, the longest match
winning, so ``s3://host:9000/bucket`` tunes all of that bucket's prefixes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ._clock import Clock, MonotonicClock
from ._limiter import EndpointLimiter, LimiterStatistics
from ._policy import ControlConfig

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def endpoint_of(url: str) -> str:
    """``scheme://host:port`` of a URL (default ports made explicit, host lower-cased)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"not an absolute URL: {url!r}")
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}" if port else f"{parts.scheme}://{host}"


class LimiterRegistry:
    """Limiters by endpoint, with defaults and per-endpoint overrides.

    Overrides come from the user (``[ratelimit.endpoints]``) and from adapters that know an
    endpoint's documented limit (``declare``): a user's override for the same endpoints or a
    narrower set of them wins over a declaration; fields a declaration does not name keep the
    user's broader override. ``seed`` makes retry jitter reproducible (each endpoint gets its
    own generator).
    """

    def __init__(
        self,
        *,
        default: ControlConfig | None = None,
        overrides: Mapping[str, ControlConfig] | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        self.default = default or ControlConfig()
        self._overrides = dict(overrides or {})
        self._declared: dict[str, dict[str, Any]] = {}
        self.clock = clock or MonotonicClock()
        self._seed = seed
        self._limiters: dict[str, EndpointLimiter] = {}

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], *, origin: str = "[ratelimit]", clock: Clock | None = None
    ) -> LimiterRegistry:
        """Build from a config table: ``ControlConfig`` keys as defaults, plus an ``endpoints``
        table of per-endpoint tables with the same keys. Raises ``ValueError`` naming the key (the
        config loader turns it into a ``ConfigError``: this package depends on nothing of ours)."""
        table = dict(table)
        endpoints = table.pop("endpoints", {}) or {}
        if not isinstance(endpoints, Mapping):
            raise ValueError(f"{origin}.endpoints must be a table of endpoint tables")
        default = _config_from(ControlConfig(), table, origin)
        overrides = {
            key: _config_from(default, value, f"{origin}.endpoints.{key!r}")
            for key, value in endpoints.items()
        }
        return cls(default=default, overrides=overrides, clock=clock)

    def declare(self, prefix: str, **changes: Any) -> None:
        """An adapter's known limits for the endpoints starting with ``prefix`` (``ControlConfig``
        fields, for example a documented quota as ``max_rate``). Takes effect for limiters not
        created yet; a later declaration of the same prefix replaces it."""
        ControlConfig().replace(**changes)  # a bad field or value fails here, where it is declared
        self._declared[prefix] = dict(changes)

    def config_for(self, endpoint: str) -> ControlConfig:
        user = _longest_match(self._overrides, endpoint)
        config = self.default if user is None else self._overrides[user]
        declared = _longest_match(self._declared, endpoint)
        if declared is None or (user is not None and len(user) >= len(declared)):
            return config
        try:
            return config.replace(**self._declared[declared])
        except ValueError:
            return config  # the user's settings contradict the declaration: theirs win

    def get(self, endpoint: str) -> EndpointLimiter:
        """The endpoint's limiter, created with its configuration on first use."""
        limiter = self._limiters.get(endpoint)
        if limiter is None:
            rng = random.Random(None if self._seed is None else f"{self._seed}:{endpoint}")
            limiter = EndpointLimiter(endpoint, self.config_for(endpoint), clock=self.clock, rng=rng)
            self._limiters[endpoint] = limiter
        return limiter

    def for_url(self, url: str) -> EndpointLimiter:
        return self.get(endpoint_of(url))

    def statistics(self) -> list[LimiterStatistics]:
        """Live figures of every endpoint used so far, sorted by endpoint."""
        return [self._limiters[key].statistics() for key in sorted(self._limiters)]

    def __repr__(self) -> str:
        return f"<LimiterRegistry [{len(self._limiters)} endpoints]>"


def _longest_match(table: Mapping[str, Any], endpoint: str) -> str | None:
    matches = [key for key in table if endpoint.startswith(key)]
    return max(matches, key=len) if matches else None


def _config_from(base: ControlConfig, values: Any, origin: str) -> ControlConfig:
    if not isinstance(values, Mapping):
        raise ValueError(f"{origin} must be a table")
    known = {f.name: f for f in dataclasses.fields(ControlConfig)}
    for key in values:
        if key not in known:
            raise ValueError(
                f"{origin}: unknown key {key!r}; expected one of: {', '.join(sorted(known))}"
            )
    try:
        return base.replace(**dict(values))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{origin}: {exc}") from exc
