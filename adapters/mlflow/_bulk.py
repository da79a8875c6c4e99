"""One metric key of many runs in one request, for runs read at the same time.

Why: a tracking server spends most of a ``metrics/get-history`` call on the call itself, not on
the points, and an experiment of many short runs costs one call per run and key. The server's
``get-history-bulk`` endpoint (the one MLflow's UI uses to compare runs; not the sampling
``get-history-bulk-interval``) answers every point of one key for up to a handful of runs,
sorted by run id, then timestamp, step and value -- the order ``get-history`` uses too.

Runs ask here for a key's whole history; asks for the same key that arrive while its requests
are in flight wait and go together in the next one (group commit: an asker leads, then hands
the lead to a waiter). Up to ``max_requests`` requests per key are in flight at once, so a
run of one key does not leave a server of several workers idle behind one request. Nothing
runs in the background, and a cancelled leader puts its batch back and passes the lead on.

The answer is cut at ``max_points`` (the server caps at 25,000; we ask for less, so a server
with any cap at or above ours is never read short). A cut answer is complete for every run
before the last one it mentions; the rest are asked again. A run that is cut while first in
its batch holds ``max_points`` or more points of that key on its own, so it is paged with
``get-history`` instead: whether a run's key is read in bulk depends on its data only, never
on its neighbours, which keeps the order of points -- and with it resume cursors -- stable.
Servers without the endpoint (404; Databricks) switch bulk reading off for the session, and
a server that refuses the batch size gets smaller batches.

Read-ahead: the engine names the runs it will read next (``expect``, from its queue of runs
not yet done), so a request sent for the runs asking now fills its spare places with the next
expected runs of the key. Their answers wait here (at most ``max_ahead_points`` points; the
oldest go first) until their runs ask, and cost no request then. Why: runs are read as the
destination frees places for them, one or two at a time, and an MLflow server pays about as
much for a request of one run as for one of fifty (on SQLite it scans every row of the key,
whichever runs are named). An expected run only ever rides along: it never sends a request,
and an answer cut before it simply forgets it (its run asks for itself later).
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
DEFAULT_MAX_RUNS = 50
DEFAULT_MAX_REQUESTS = 2
DEFAULT_MAX_AHEAD_POINTS = 20_000

Points = list[dict[str, Any]]
Fetch = Callable[[str, list[str], int], Awaitable[Points]]


@dataclass(eq=False)
class _Ask:
    run_id: str
    wake: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False
    finished: bool = False
    points: Points | None = None  # None when finished: page this key instead
    ahead: bool = False  # read ahead for an expected run: no caller waits, its run adopts it
    dropped: bool = False  # an ahead ask left unanswered: its run asks for itself
    held: int = 0  # points of an answered ahead ask counted against max_ahead_points


class BulkHistory:
    """Coalesces ``history(run_id, key)`` calls into ``get-history-bulk`` requests.

    :param fetch: ``(key, run_ids, max_points) -> points`` (each point names its ``run_id``)
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
        max_runs: int = DEFAULT_MAX_RUNS,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_ahead_points: int = DEFAULT_MAX_AHEAD_POINTS,
    ) -> None:
        self._fetch = fetch
        self.max_points = max_points
        self.max_runs = max_runs
        self.max_requests = max_requests
        self.max_ahead_points = max_ahead_points
        self.enabled = True
        self.requests = 0  # for tests and reports: how many bulk requests were sent
        self.ahead_answers = 0  # for tests and reports: asks answered by a read-ahead
        self._expected: dict[str, dict[str, None]] = {}  # key -> runs to be read soon, in order
        self._ahead: dict[str, dict[str, _Ask]] = {}  # key -> run -> its read-ahead (in flight or answered)
        self._ahead_points = 0
        self._queues: dict[str, list[_Ask]] = {}
        self._leaders: dict[str, int] = {}  # key -> asks leading it now (at most max_requests)
        self._gathering: dict[str, _Ask] = {}  # key -> its leader whose batch is not out yet

    def expect(self, run_id: str, keys: list[str]) -> None:
        """``run_id`` will ask for these keys soon: it may ride along in others' requests.
        Only the newest ``4 * max_runs`` expected runs of a key are kept (a hint, never owed)."""
        if not self.enabled:
            return
        for key in keys:
            runs = self._expected.setdefault(key, {})
            runs[run_id] = None
            if len(runs) > 4 * self.max_runs:
                del runs[next(iter(runs))]

    async def history(self, run_id: str, key: str) -> Points | None:
        """Every point of ``key`` in the run, in the server's order; None: page it instead."""
        if not self.enabled:
            return None
        self._expected.get(key, {}).pop(run_id, None)
        ahead = self._ahead.get(key, {}).pop(run_id, None)
        if ahead is not None:
            if not ahead.finished and not ahead.dropped:
                await ahead.wake.wait()  # its request is in flight
            if ahead.finished:
                self._ahead_points -= ahead.held
                self.ahead_answers += 1
                return ahead.points
        ask = _Ask(run_id)
        self._queues.setdefault(key, []).append(ask)
        self._promote(key)
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
        first = True
        try:
            await anyio.lowlevel.checkpoint()  # asks made in this same turn of the loop join the first batch
            while not leader.finished:
                batch = self._take(key, leader, read_ahead=first)  # a cut answer's rest: no riders
                first = False
                if self._gathering.get(key) is leader:  # its batch is out: a next one may gather
                    del self._gathering[key]
                    self._promote(key)
                await self._send(key, batch)  # puts back whatever it did not answer
                batch = []
        finally:
            # a failed or cancelled request's batch goes back for the next leader (not the
            # leader's own ask: its caller gets the error)
            for ask in batch:
                if ask.ahead and not ask.finished:
                    self._drop(key, ask)
            queue = self._queues.get(key, [])
            queue[:] = [ask for ask in [*batch, *queue] if not ask.finished and not ask.ahead and ask is not leader]
            self._pass_lead(key, leader)

    def _abandon(self, key: str, ask: _Ask) -> None:
        queue = self._queues.get(key, [])
        if ask in queue:
            queue.remove(ask)
        if ask.lead:  # promoted, but gone before acting on it
            self._pass_lead(key, ask)

    def _promote(self, key: str) -> None:
        """The first waiting ask leads (and gathers the next batch) when ``key`` has fewer
        than ``max_requests`` leaders and none of them is still gathering its batch; a lane
        beside one in flight opens only for half a batch or more, so a trickle of asks does
        not cost the server a request each."""
        leaders = self._leaders.get(key, 0)
        if key in self._gathering or leaders >= self.max_requests:
            return
        waiting = [ask for ask in self._queues.get(key, ()) if not ask.lead]
        if waiting and (not leaders or len(waiting) >= max(1, self.max_runs // 2)):
            first = waiting[0]
            first.lead = True
            self._leaders[key] = leaders + 1
            self._gathering[key] = first
            first.wake.set()

    def _pass_lead(self, key: str, leader: _Ask) -> None:
        """``leader`` stops leading and a waiting ask may take its place; a key nobody leads
        has nobody waiting either, and is forgotten."""
        leader.lead = False
        self._leaders[key] -= 1
        if self._gathering.get(key) is leader:
            del self._gathering[key]
        self._promote(key)
        if not self._leaders[key]:
            del self._leaders[key]
            self._queues.pop(key, None)

    def _take(self, key: str, leader: _Ask, *, read_ahead: bool) -> list[_Ask]:
        """The leader, up to ``max_runs - 1`` waiting asks, then expected runs in spare places
        (while answered read-aheads hold less than ``max_ahead_points``)."""
        queue = self._queues[key]
        others = [ask for ask in queue if not ask.lead][: self.max_runs - 1]  # other leaders ask for themselves
        taken = {id(ask) for ask in others} | {id(leader)}
        queue[:] = [ask for ask in queue if id(ask) not in taken]
        batch = [leader, *others]
        expected = self._expected.get(key)
        if not read_ahead or not expected or self._ahead_points >= self.max_ahead_points:
            return batch
        asking = {ask.run_id for ask in batch}
        riding = self._ahead.setdefault(key, {})
        while expected and len(batch) < self.max_runs:
            run_id = next(iter(expected))
            del expected[run_id]
            if run_id not in asking and run_id not in riding:
                riding[run_id] = ask = _Ask(run_id, ahead=True)
                batch.append(ask)
        return batch

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
            for ask in batch:
                if ask.ahead:
                    self._drop(key, ask)
            self._queues[key][:0] = [ask for ask in batch if not ask.ahead]
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
            if ask.run_id in complete or ask.run_id == paged:
                self._finish(ask, by_run.get(ask.run_id, []) if ask.run_id in complete else None)
                if ask.ahead:
                    self._hold(key, ask)
            elif ask.ahead:
                self._drop(key, ask)
            else:
                retry.append(ask)
        self._queues[key][:0] = retry

    def _finish(self, ask: _Ask, points: Points | None) -> None:
        ask.points, ask.finished = points, True
        if not ask.lead:
            ask.wake.set()

    def _hold(self, key: str, ask: _Ask) -> None:
        """An answered read-ahead waits for its run (unless the run already took it); the
        oldest held answers are forgotten while they hold more than ``max_ahead_points``."""
        if self._ahead.get(key, {}).get(ask.run_id) is not ask:
            return
        ask.held = len(ask.points or ())
        self._ahead_points += ask.held
        for riding in self._ahead.values():
            for run_id, old in list(riding.items()):
                if self._ahead_points <= self.max_ahead_points:
                    return
                if old.finished:
                    del riding[run_id]
                    self._ahead_points -= old.held

    def _drop(self, key: str, ask: _Ask) -> None:
        """A read-ahead that got no answer: forgotten, and a run already waiting on it asks itself."""
        ask.dropped = True
        riding = self._ahead.get(key, {})
        if riding.get(ask.run_id) is ask:
            del riding[ask.run_id]
        ask.wake.set()

    def _switch_off(self, batch: list[_Ask]) -> None:
        """No usable bulk endpoint here: every ask, now and later, pages instead."""
        self.enabled = False
        for ask in [*batch, *(ask for queue in self._queues.values() for ask in queue)]:
            self._finish(ask, None)
        for queue in self._queues.values():
            queue.clear()
        self._expected.clear()
