"""Fixtures: one W&B-compatible server per session (loopback), a destination factory, and a
reader that goes through the official ``wandb.Api`` like a user would."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from core.protocols import AdapterContext
from adapters.wandb import WandbDestination, WandbDestinationConfig
from ratelimit import FakeClock, LimiterRegistry
from tests.servers.wandb import WandbServer, start_wandb_server

KEY_ENV = "RUNFERRY_TEST_WANDB_KEY"
_counter = itertools.count()


@pytest.fixture(scope="session")
def wandb_server() -> Iterator[WandbServer]:
    with start_wandb_server() as server:
        os.environ[KEY_ENV] = server.api_key
        yield server


@pytest.fixture
def server(wandb_server: WandbServer) -> Iterator[WandbServer]:
    wandb_server.faults.reset()
    yield wandb_server
    wandb_server.faults.reset()


@pytest.fixture
def project() -> str:
    """A fresh project per test, so tests never see each other's runs."""
    return f"p{next(_counter)}-{os.getpid()}"


class Events:
    """Collects adapter events (``context.events``) for assertions."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, **fields: Any) -> None:
        self.items.append((name, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [f for n, f in self.items if n == name]


def make_destination(server: WandbServer, events: Events | None = None, *, clock: Any = None, **overrides: Any) -> WandbDestination:
    settings: dict[str, Any] = {
        "base_url": server.base_url, "api_key_env": KEY_ENV, "entity": server.entity, "filestream_rate": 1000.0,
    }
    settings.update(overrides)
    limiters = None if clock is None else LimiterRegistry(clock=clock)
    context = AdapterContext(events=events or Events(), limiters=limiters, clock=clock, source_uri="test://source")
    return WandbDestination(WandbDestinationConfig(**settings), context)


async def pieces(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def wandb_api(server: WandbServer) -> Any:
    import wandb

    return wandb.Api(api_key=server.api_key, overrides={"base_url": server.base_url}, timeout=60)


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (values read back through the SDK)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(start=1000.0)
