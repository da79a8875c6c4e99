"""The adapter contract (tests/adapters/contract.py) applied to the synthetic and local adapters.

Other adapters subclass the same mixins in their own test directories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from core.protocols import AdapterContext
from adapters.local import LocalDestination, LocalSource
from tests.adapters.contract import (
    DestinationCase,
    DestinationContract,
    SourceCase,
    SourceContract,
    all_refs,
    contract_source,
    copy_run,
)


class TestSyntheticSource(SourceContract):
    @pytest.fixture
    async def source_case(self) -> AsyncIterator[SourceCase]:
        async with contract_source(runs=3) as source:
            yield SourceCase(source=source)


class TestLocalSource(SourceContract):
    @pytest.fixture
    async def source_case(self, tmp_path: Path) -> AsyncIterator[SourceCase]:
        async with contract_source(runs=3) as source, LocalDestination(LocalDestination.Config(path=str(tmp_path))) as d:
            for ref in await all_refs(source):
                await copy_run(source, await source.get_run(ref), d)
            await d.finalize()
        context = AdapterContext(chunk_points=45, part_bytes=100_000)  # starts land inside row groups
        async with LocalSource(LocalSource.Config(path=str(tmp_path)), context) as local:
            yield SourceCase(source=local)


class TestLocalDestination(DestinationContract):
    source_settings: ClassVar[dict[str, int]] = {}  # for the contract's source

    @pytest.fixture
    async def destination_case(self, tmp_path: Path) -> AsyncIterator[DestinationCase]:
        config = LocalDestination.Config(path=str(tmp_path / "export"))
        async with LocalDestination(config) as destination:
            yield DestinationCase(
                destination=destination,
                open_reader=lambda: LocalSource(LocalSource.Config(path=config.path)),
                source_settings=dict(self.source_settings),
            )


class TestLocalDestinationWithConsoleLog(TestLocalDestination):
    """Runs with a console log (a file with role ``console``) and ``system/`` metrics: the
    export keeps the log under ``console/`` and gives it back with its role."""

    source_settings = {"console_lines": 5000, "system_keys": 2}


class TestSyntheticSourceWithConsoleLog(SourceContract):
    @pytest.fixture
    async def source_case(self) -> AsyncIterator[SourceCase]:
        async with contract_source(runs=2, console_lines=9000, system_keys=1) as source:
            yield SourceCase(source=source)
