"""``executor = "ray"``: the driver. Plans once, leases shards to worker actors, aggregates progress.

1. Connect to Ray (``[ray] address``) or start a local cluster for this migration.
2. Open the configured source and destination here too (credentials are checked before any
   worker starts: a bad key is exit 2, as locally), and the shared ledger store.
3. The plan: the store's latest generation if some shard of it is unfinished (a driver that died
   is resumed by running the same command again), else a new generation planned from the source
   and written down before any work starts (an incremental re-run).
4. ``workers`` async actors (``num_cpus=0``: they are I/O-bound, and CPU requests beyond the
   cluster's would wait forever). Each free actor is leased the next shard whose lease is free or
   expired (epoch + 1) and runs it (``scaleout.worker``); its events are drained every
   ``POLL_SECONDS`` and replayed into the driver's ``Progress``: same bars, JSON lines, report and
   exit codes as a local migration.
5. An actor that dies (``ActorDiedError``; a lost node first shows ``ActorUnavailableError``) is
   replaced; its shard goes back to the queue and is leased again once its lease has expired, and
   the new holder resumes every run from the ledger. Ctrl-C kills the actors and ends their leases
   after a short grace, so the next run of the command starts at once.
6. ``destination.finalize()`` once, here, after every shard.
"""

from __future__ import annotations

import collections
import os
import signal
from typing import Any

import anyio

from engine.config import Config
from core.errors import AuthError, ConfigError
from engine.ledger import pair_key
from engine.ledger_store import LeaseLost, LedgerStore, Plan, Shard, open_store
from engine.pipeline import Report, _cancel_on_signal, make_context, open_adapters
from engine.progress import Progress
from scaleout.cluster import RayCluster
from scaleout.shards import plan_shards

POLL_SECONDS = 0.2
FAULT_ENV = "RUNFERRY_FAULT_KILL_WORKER_AT_LINE"
"""Tests: the first worker actor SIGKILLs itself before its N-th ledger line (mid-shard)."""
DRIVER_FAULT_ENV = "RUNFERRY_FAULT_KILL_DRIVER_AFTER_SHARDS"
"""Tests: the driver SIGKILLs itself once N shards are complete (others still leased, in flight)."""


async def migrate_on_ray(config: Config, *, progress: Progress | None = None, handle_signals: bool = False) -> Report:
    """The Ray counterpart of ``engine.pipeline.migrate`` (same arguments, same report)."""
    progress = progress or Progress(mode="plain")
    context = make_context(config, progress)
    source, destination = open_adapters(config, context)
    pair = pair_key(source.describe(), destination.describe())
    report = Report(progress)
    store = open_store(config)
    try:
        async with source, destination:
            plan = await _current_plan(config, store, pair, source, progress)
            with RayCluster(config.ray) as cluster:
                async with anyio.create_task_group() as tg:
                    if handle_signals:
                        tg.start_soon(_cancel_on_signal, tg.cancel_scope, report)
                    await ShardScheduler(config, cluster, store, pair, plan, progress).run()
                    tg.cancel_scope.cancel()
            if not report.interrupted:
                await destination.finalize()
    finally:
        store.close()
    return report


async def _current_plan(config: Config, store: LedgerStore, pair: str, source: Any, progress: Progress) -> Plan:
    plan = store.latest_plan(pair)
    if plan is not None:
        leases = store.leases(pair, plan.generation)
        unfinished = [s for s in plan.shards if not (s.key in leases and leases[s.key].done)]
        if unfinished:
            for shard in plan.shards:  # what a local re-run reports for runs already done
                for ref in shard.refs:
                    progress.event("run_selected", run=ref.id)
                    if shard not in unfinished:
                        progress.event("run_skipped", run=ref.id)
            return Plan(plan.generation, tuple(unfinished))
    generation = 1 if plan is None else plan.generation + 1
    plan = await plan_shards(source, generation, config.ray.shard_runs, limit=config.transfer.max_runs)
    store.save_plan(pair, plan)
    for shard in plan.shards:
        for ref in shard.refs:
            progress.event("run_selected", run=ref.id)
    return plan


class ShardScheduler:
    """Leases shards to ``workers`` actor slots until every shard is done (module docstring)."""

    def __init__(self, config: Config, cluster: RayCluster, store: LedgerStore, pair: str, plan: Plan,
                 progress: Progress) -> None:
        self.config = config
        self.cluster = cluster
        self.store = store
        self.pair = pair
        self.progress = progress
        self.pending: collections.deque[Shard] = collections.deque(plan.shards)
        self.in_flight = 0
        self.ttl = config.ray.lease_seconds
        self._kill_at = int(os.environ.get(FAULT_ENV, "0") or 0)
        self._die_after = int(os.environ.get(DRIVER_FAULT_ENV, "0") or 0)
        self._spawned = 0
        self._completed = 0

    async def run(self) -> None:
        if not self.pending:
            return
        self.cluster.start_limiter(self.config)
        async with anyio.create_task_group() as tg:
            for slot in range(min(self.config.ray.workers, len(self.pending))):
                tg.start_soon(self._slot, slot)

    def _spawn(self, slot: int) -> Any:
        kill_at, self._kill_at = self._kill_at, 0  # only the first actor is faulty
        self._spawned += 1
        return self.cluster.worker(self.config, f"runferry-worker-{slot}-{self._spawned}", kill_at_line=kill_at)

    async def _next(self, holder: str) -> tuple[Shard, int] | None:
        """The next shard this slot may lease, waiting for expiring leases; None when all are done."""
        while True:
            for _ in range(len(self.pending)):
                shard = self.pending.popleft()
                epoch = self.store.grant(self.pair, shard.key, holder, self.ttl)
                if epoch is not None:
                    self.in_flight += 1
                    return shard, epoch
                self.pending.append(shard)  # its dead holder's lease has not expired yet
            if not self.pending and not self.in_flight:
                return None
            await anyio.sleep(POLL_SECONDS)

    async def _slot(self, slot: int) -> None:
        import ray.exceptions

        actor: Any = None
        while True:
            if actor is None:
                actor = self._spawn(slot)
            holder = self.cluster.name_of(actor)
            picked = await self._next(holder)
            if picked is None:
                return
            shard, epoch = picked
            try:
                await self._run_on(actor, shard, epoch)
                self.store.complete(self.pair, shard.key, epoch)
                self._completed += 1
                if self._completed == self._die_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as exc:
                self.progress.event("worker_lost", shard=shard.key, error=type(exc).__name__)
                self.pending.append(shard)  # leased again once its lease expires
                actor = None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, LeaseLost):  # another driver took it over: not ours any more
                    self.progress.event("lease_lost", shard=shard.key)
                else:
                    self._release(shard, epoch)
                    if isinstance(cause, (ConfigError, AuthError)):  # the worker's one-line refusal
                        raise cause from None
                    raise
            except BaseException:  # cancelled (Ctrl-C) or failed here: stop the worker, free the shard
                self.cluster.kill(actor)  # synchronous: nothing here can be cancelled
                self._release(shard, epoch)
                raise
            finally:
                self.in_flight -= 1

    def _release(self, shard: Shard, epoch: int) -> None:
        self.store.release(self.pair, shard.key, epoch, grace=min(self.ttl, 2.0))

    async def _run_on(self, actor: Any, shard: Shard, epoch: int) -> None:
        """Run the shard, replaying its events every ``POLL_SECONDS``; returns as soon as it ends
        (the next shard starts without waiting for the next poll)."""
        import asyncio

        result = actor.run_shard.remote(self.pair, shard, epoch).as_future()
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if we stop waiting
        while True:
            with anyio.move_on_after(POLL_SECONDS):
                events = await asyncio.shield(result)
                break
            self._replay(await actor.drain.remote())
        self._replay(events)

    def _replay(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for name, fields in events:
            self.progress.event(name, **fields)
