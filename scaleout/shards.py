"""Shards: the fixed lists of run refs a scaled-out migration leases, and the source that serves one.

The driver pages through the source once (``plan_shards``) and writes the shards down before any
work starts, so a re-leased shard means exactly the same runs. A worker wraps the configured
source in a ``ShardSource``: the pipeline sees an ordinary ``Source`` whose ``list_runs`` yields
the shard's refs and nothing else, and runs unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, Self

from core.protocols import Source
from engine.ledger_store import Plan, Shard
from core.model import RunRef


def shard_key(generation: int, index: int) -> str:
    """Zero-padded so that keys (and the file names built from them) sort in plan order."""
    return f"g{generation:06d}-s{index:06d}"


async def plan_shards(source: Source, generation: int, shard_runs: int, *, limit: int = 0) -> Plan:
    """Page through ``source`` (at most ``limit`` runs, 0 = all) into shards of ``shard_runs``."""
    shards: list[Shard] = []
    current: list[RunRef] = []
    count = 0
    async with contextlib.aclosing(source.list_runs()) as refs:
        async for ref in refs:
            current.append(ref)
            count += 1
            if len(current) == shard_runs:
                shards.append(Shard(shard_key(generation, len(shards)), tuple(current)))
                current = []
            if limit and count >= limit:
                break
    if current:
        shards.append(Shard(shard_key(generation, len(shards)), tuple(current)))
    return Plan(generation, tuple(shards))


class ShardSource:
    """The configured source, listing only one shard's runs (everything else is delegated)."""

    def __init__(self, inner: Source, refs: Sequence[RunRef]) -> None:
        self.inner = inner
        self.refs = tuple(refs)

    def describe(self) -> str:
        return self.inner.describe()

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def list_runs(self) -> AsyncGenerator[RunRef, None]:
        for ref in self.refs:
            yield ref

    def __getattr__(self, name: str) -> Any:  # get_run, iter_history, list_files, read_file, extras
        return getattr(self.inner, name)
