"""One metric key of many runs in one request, for runs read at the same time.

Why: a tracking server spends most of a ``metrics/get-history`` call on the call itself, not on
the points, and an experiment of many short runs costs one call per run and key. The server's
``get-history-bulk`` endpoint (the one MLflow's UI uses to compare runs; not the sampling
``get-history-bulk-interval``) answers every point of one key for up to a handful of runs,
sorted by run id, then timestamp, step and value -- the order ``get-history`` uses too.

Runs ask here for a key's whole history; asks for the same key that arrive while a request
for it is in flight wait and go together in the next one (group commit: the first asker leads,
then hands the lead to a waiter). Nothing runs in the background, and a cancelled leader puts
its batch back and passes the lead on.

The answer is cut at ``max_points`` (the server caps at 25,000; we ask for less, so a server
with any cap at or above ours is never read short). A cut answer is complete for every run
before the last one it mentions; the rest are asked again. A run that is cut while first in
its batch holds ``max_points`` or more points of that key on its own, so it is paged with
``get-history`` instead: whether a run's key is read in bulk depends on its data only, never
on its neighbours, which keeps the order of points -- and with it resume cursors -- stable.
Servers without the endpoint (404; Databricks) switch bulk reading off for the session, and
a server that refuses the batch size gets smaller batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from core.errors import FatalError, NotFoundError

BULK_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
DEFAULT_MAX_POINTS = 10_000
DEFAULT_MAX_RUNS = 20

Points = list[dict[str, Any]]
Fetch = Callable[[str, list[str], int], Awaitable[Points]]


@dataclass(eq=False)
class _Ask:
    run_id: str
    wake: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False
    finished: bool = False
    points: Points | None = None  # None when finished: page this key instead


class BulkHistory:
    """Coalesces ``history(run_id, key)`` calls into ``get-history-bulk`` requests.

    :param fetch: ``(key, run_ids, max_points) -> points`` (each point names its ``run_id``)
    """

    def __init__(self, fetch: Fetch, *, max_points: int = DEFAULT_MAX_POINTS, max_runs: int = DEFAULT_MAX_RUNS) -> None:
        self._fetch = fetch
        self.max_points = max_points
        self.max_runs = max_runs
        self.enabled = True
        self.requests = 0  # for tests and reports: how many bulk requests were sent
        self._queues: dict[str, list[_Ask]] = {}
        self._leading: set[str] = set()

    async def history(self, run_id: str, key: str) -> Points | None:
        """Every point of ``key`` in the run, in the server's order; None: page it instead."""
        if not self.enabled:
            return None
        ask = _Ask(run_id)
        self._queues.setdefault(key, []).append(ask)
        if key not in self._leading:
            self._leading.add(key)
            ask.lead = True
        while not ask.finished:
            if ask.lead:
                await self._lead(key, ask)
            else:
                try:
                    await ask.wake.wait()
                except BaseException:  # cancelled while waiting: leave, and pass on a lead just given
                    self._abandon(key, ask)
                    raise
                ask.wake = anyio.Event()
        return ask.points

    async def _lead(self, key: str, leader: _Ask) -> None:
        """Send batches for ``key`` until the leader's own answer is in, then pass the lead."""
        batch: list[_Ask] = []
        try:
            await anyio.lowlevel.checkpoint()  # asks made in this same turn of the loop join the first batch
            while not leader.finished:
                batch = self._take(key, leader)
                await self._send(key, batch)  # puts back whatever it did not answer
                batch = []
        finally:
            # a failed or cancelled request's batch goes back for the next leader (not the
            # leader's own ask: its caller gets the error)
            queue = self._queues.get(key, [])
            queue[:] = [ask for ask in [*batch, *queue] if not ask.finished and ask is not leader]
            leader.lead = False
            self._pass_lead(key)

    def _abandon(self, key: str, ask: _Ask) -> None:
        queue = self._queues.get(key, [])
        if ask in queue:
            queue.remove(ask)
        if ask.lead:  # promoted, but gone before acting on it
            ask.lead = False
            self._pass_lead(key)

    def _pass_lead(self, key: str) -> None:
        """The first ask still queued for ``key`` leads next; with none, nobody leads it."""
        queue = self._queues.get(key, [])
        if queue:
            queue[0].lead = True
            queue[0].wake.set()
        else:
            self._queues.pop(key, None)
            self._leading.discard(key)

    def _take(self, key: str, leader: _Ask) -> list[_Ask]:
        queue = self._queues[key]
        others = [ask for ask in queue if ask is not leader][: self.max_runs - 1]
        taken = {id(ask) for ask in others} | {id(leader)}
        queue[:] = [ask for ask in queue if id(ask) not in taken]
        return [leader, *others]

    async def _send(self, key: str, batch: list[_Ask]) -> None:
        run_ids = sorted({ask.run_id for ask in batch})
        try:
            points = await self._fetch(key, run_ids, self.max_points)
        except NotFoundError:
            self._switch_off(batch)
            return
        except FatalError as exc:
            if exc.code != "INVALID_PARAMETER_VALUE":
                raise
            if len(run_ids) == 1:
                self._switch_off(batch)
                return
            self.max_runs = max(1, len(run_ids) // 2)  # a server that takes fewer run ids
            self._queues[key][:0] = batch
            return
        self.requests += 1
        by_run: dict[str, Points] = {}
        for point in points:
            by_run.setdefault(point.get("run_id", ""), []).append(point)
        complete, paged = set(run_ids), None
        if len(points) >= self.max_points:
            cut = points[-1].get("run_id", "")
            complete = {run_id for run_id in run_ids if run_id < cut}
            if not complete:  # the first run alone fills the answer
                paged = run_ids[0]
        retry: list[_Ask] = []
        for ask in batch:
            if ask.run_id in complete:
                self._finish(ask, by_run.get(ask.run_id, []))
            elif ask.run_id == paged:
                self._finish(ask, None)
            else:
                retry.append(ask)
        self._queues[key][:0] = retry

    def _finish(self, ask: _Ask, points: Points | None) -> None:
        ask.points, ask.finished = points, True
        if not ask.lead:
            ask.wake.set()

    def _switch_off(self, batch: list[_Ask]) -> None:
        """No usable bulk endpoint here: every ask, now and later, pages instead."""
        self.enabled = False
        for ask in [*batch, *(ask for queue in self._queues.values() for ask in queue)]:
            self._finish(ask, None)
        for queue in self._queues.values():
            queue.clear()
