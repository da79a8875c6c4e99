"""A worker: today's pipeline, unchanged, on one leased shard at a time (no Ray import here).

``scaleout.executor`` wraps ``ShardWorker`` with ``ray.remote`` as an async actor: its methods run
on the actor's event loop, so the pipeline's anyio task groups work as they do in a local run (no
signal handlers there; the driver owns Ctrl-C). Progress events are buffered and handed to the
driver when it asks (``drain``), so bars, JSON lines and the report are the driver's, as in a
local migration. While a shard runs, its lease is renewed every third of ``lease_seconds``; if a
renewal is refused (the lease moved on) the shard's pipeline is cancelled at once and nothing
more is written.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import anyio

from engine.config import Config
from engine.ledger_store import LeaseLost, LedgerStore, Shard, open_store
from engine.pipeline import Pipeline, make_context, open_adapters
from engine.progress import Progress
from scaleout.shards import ShardSource

KILL_ENV = "RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE"


class ForwardingProgress(Progress):
    """Counts nothing itself worth showing; keeps every event for the driver to replay."""

    def __init__(self) -> None:
        super().__init__(mode="quiet")
        self.buffer: list[tuple[str, dict[str, Any]]] = []

    def event(self, name: str, **fields: Any) -> None:
        if name in ("points", "bytes") and self.buffer and self.buffer[-1][0] == name:
            self.buffer[-1][1]["n"] += int(fields.get("n", 0))  # a stream of counts, summed
        elif name != "run_selected":  # the driver selected the runs when it planned
            self.buffer.append((name, {k: _plain(v) for k, v in fields.items()}))

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.buffer = self.buffer, []
        return events


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class ShardWorker:
    """One worker's state across the shards it is leased (see the module docstring)."""

    def __init__(self, config: Config, name: str, *, limiters: Callable[[], Any] | None = None,
                 kill_at_line: int = 0) -> None:
        # The driver selected the runs: a shard is migrated whole, whatever max_runs said.
        self.config = dataclasses.replace(config, transfer=dataclasses.replace(config.transfer, max_runs=0))
        self.name = name
        self.progress = ForwardingProgress()
        self._limiters = limiters() if limiters is not None else None  # shared by all its shards
        self._store: LedgerStore | None = None
        if kill_at_line:  # fault injection for tests: this process dies before that ledger line
            os.environ[KILL_ENV] = str(kill_at_line)

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        return self.progress.drain()

    async def run_shard(self, pair: str, shard: Shard, epoch: int) -> list[tuple[str, dict[str, Any]]]:
        """Migrate the shard under lease ``epoch``; returns the events not drained yet."""
        if self._store is None:
            self._store = open_store(self.config)
        store = self._store
        context = make_context(self.config, self.progress)
        if self._limiters is not None:
            context = dataclasses.replace(context, limiters=self._limiters)
        source, destination = open_adapters(self.config, context)
        shard_source = ShardSource(source, shard.refs)
        ledger = store.shard_ledger(pair, shard, epoch)
        lost = False

        async def renew(scope: anyio.CancelScope) -> None:
            nonlocal lost
            period = self.config.ray.lease_seconds / 3
            while True:
                await anyio.sleep(period)
                if not store.renew(pair, shard.key, epoch, self.config.ray.lease_seconds):
                    lost = True
                    scope.cancel()
                    return

        async with shard_source, destination:
            ledger.open_for_append()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(renew, tg.cancel_scope)
                    await Pipeline(self.config, shard_source, destination, ledger, self.progress,
                                   limiters=context.limiters).run()
                    tg.cancel_scope.cancel()
            finally:
                ledger.close()
        if lost:
            raise LeaseLost(f"shard {shard.key}: lease epoch {epoch} was not renewed; stopped")
        return self.drain()
