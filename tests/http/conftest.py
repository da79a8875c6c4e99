from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.protocols import AdapterContext
from ratelimit import FakeClock, LimiterRegistry
from tests.servers.scripted_http import ScriptedServer


@pytest.fixture(scope="session")
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer().start()
    yield server
    server.stop()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, **fields: Any) -> None:
        self.events.append((name, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def events() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def context(events: Recorder, clock: FakeClock) -> AdapterContext:
    return AdapterContext(events=events, limiters=LimiterRegistry(clock=clock, seed=1))
