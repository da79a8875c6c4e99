"""A really overloaded MLflow server as the destination, ridden out with runferry's defaults.

The server is a real ``mlflow server`` on SQLite with two workers and a SQLAlchemy pool of one
connection plus one overflow per worker (``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE`` /
``_MAX_OVERFLOW``). As runferry creates its first run, a competing writer takes the database's
write lock (``BEGIN IMMEDIATE``: a long transaction, as a backup or another tool would hold) and
eight competing clients keep logging batches into runs of their own. Nothing is faked: every
write that reaches SQLite waits out MLflow's 20 s ``busy_timeout`` and is answered 503 "database
is locked"; every request that finds its worker's pool empty waits out SQLAlchemy's 30 s pool
timeout and is answered 400 "QueuePool limit ... reached". Both are forced by construction (more
requests in flight than connections, a lock nobody else can take), and the lock is released
only once runferry has met several overload answers and both kinds have been answered (or once
the migration has ended, which then fails the test).

runferry migrates with its default settings (``python -m engine migrate``, no [ratelimit], no
timeouts changed) through a front that only relays and counts. It must end exact: the official
``mlflow`` client reads every run's params, tags and whole history back equal to a calm copy of
the same runs made beforehand, ``python -m engine verify`` finds every run identical, and the
report's throttles (and retries) equal the overload answers the front relayed to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from mlflow.tracking import MlflowClient

from tests.e2e.test_cli import write_config
from tests.reliability.servers import ROOT, engine, mlflow_histories
from tests.servers.loop_thread import ForwardingServer
from tests.servers.mlflow_server import MlflowServer

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

RUNS = 3
SYNTHETIC = {
    "type": "synthetic", "seed": 5, "runs": RUNS, "projects": 1, "steps": 400, "keys": 3, "params": 6,
    "console_lines": 3, "file_sizes": [3000], "artifact_sizes": [],
}
WORKERS = 2
POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "1", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "1"}
COMPETITORS = 8  # with runferry's requests: more in flight per worker than its 2 connections + 2 waiters
RUNFERRY_OVERLOADS = 3  # the lock stays until runferry met this many overload answers

LOCKED = "database is locked"
POOL_DRY = "QueuePool limit"


def overload_kind(status: int, body: bytes) -> str | None:
    """Which overload an answer reports (the server's own words), if any."""
    if status < 400:
        return None
    text = body.decode("utf-8", "replace")
    return LOCKED if LOCKED in text else POOL_DRY if POOL_DRY in text else None


class Overload:
    """The competing long transaction and the competing clients, and every overload answer seen
    (by runferry through the front, or by a competitor)."""

    def __init__(self, server: MlflowServer, competitor_runs: list[str]) -> None:
        self.server = server
        self.competitor_runs = competitor_runs
        self.changed = threading.Condition()
        self.answers: Counter[tuple[str, str]] = Counter()  # (who, kind) -> n
        self.engaged = False
        self.migration_ended = False
        self._stop = threading.Event()
        self._lock: sqlite3.Connection | None = None
        self._threads: list[threading.Thread] = []

    def engage(self) -> None:
        """Take the write lock and set the competitors going (once)."""
        with self.changed:
            if self.engaged:
                return
            self._lock = sqlite3.connect(self.server.root / "mlflow.db", timeout=120, isolation_level=None,
                                         check_same_thread=False)
            self._lock.execute("BEGIN IMMEDIATE")
            self.engaged = True
        for run_id in self.competitor_runs:
            thread = threading.Thread(target=self._compete, args=(run_id,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def note(self, who: str, kind: str | None) -> None:
        if kind is None:
            return
        with self.changed:
            self.answers[(who, kind)] += 1
            self.changed.notify_all()

    def seen(self, *, who: str | None = None, kind: str | None = None) -> int:
        with self.changed:
            return sum(n for (w, k), n in self.answers.items() if who in (None, w) and kind in (None, k))

    def ripe(self) -> bool:
        """Enough overload to have proved something (called with ``changed`` held)."""
        runferry = sum(n for (w, _), n in self.answers.items() if w == "runferry")
        kinds = {k for (_, k) in self.answers}
        return runferry >= RUNFERRY_OVERLOADS and kinds == {LOCKED, POOL_DRY}

    def hold_until_ripe(self) -> None:
        """Keep the lock until ``ripe()`` (or the migration ended), then let everything through."""
        with self.changed:
            self.changed.wait_for(lambda: self.ripe() or self.migration_ended)
        self.release()

    def release(self) -> None:
        self._stop.set()
        with self.changed:
            lock, self._lock = self._lock, None
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
        for thread in self._threads:
            thread.join(120)

    def _compete(self, run_id: str) -> None:
        step = 0
        while not self._stop.is_set():
            body = {"run_id": run_id, "metrics": [{"key": "load", "value": float(step), "timestamp": step, "step": step}]}
            status, payload = post(self.server.url, "runs/log-batch", body)
            self.note("competitor", overload_kind(status, payload))
            step += 1


def post(url: str, path: str, body: dict[str, object]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class CountingFront(ForwardingServer):
    """Relays runferry's requests untouched and counts the overload answers it relays; holds
    runferry's first ``runs/create`` until ``engage`` has taken the lock (so the migration's
    writes all meet it)."""

    def __init__(self, upstream: str, overload: Overload, engage: Callable[[], None]) -> None:
        super().__init__("counting-front")
        self.upstream = upstream
        self.overload = overload
        self.engage = engage
        self.errors: Counter[tuple[int, str]] = Counter()  # every non-2xx answer relayed: (status, kind)
        self._arming: asyncio.Lock | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.endswith("/runs/create"):
            self._arming = self._arming or asyncio.Lock()
            async with self._arming:
                await asyncio.to_thread(self.engage)
        status, headers, payload = await self.relay(request, self.upstream + request.path_qs, body)
        kind = overload_kind(status, payload)
        if status >= 400:
            self.errors[(status, kind or payload[:80].decode("utf-8", "replace"))] += 1
        self.overload.note("runferry", kind)
        return web.Response(status=status, headers=headers, body=payload)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path / "mlflow", workers=WORKERS, env=POOL) as started:
        yield started


def _runs(url: str, prefix: str) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Every run's params and tags (MLflow's own ``mlflow.*`` tags left out), by run name."""
    client = MlflowClient(url)
    ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    return {
        run.info.run_name: (run.data.params, {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})
        for run in client.search_runs(ids, max_results=1000)
    }


def test_a_migration_into_an_overloaded_mlflow_ends_exact_and_counts_what_it_rode_out(server: MlflowServer,
                                                                                     tmp_path: Path) -> None:
    calm = write_config(tmp_path / "calm.toml", SYNTHETIC,
                        {"type": "mlflow", "tracking_uri": server.url, "experiment": "calm-{experiment}"},
                        {"ledger": str(tmp_path / "calm.jsonl")})
    seeded = engine("migrate", str(calm))
    assert seeded.returncode == 0, seeded.stderr[-3000:]

    client = MlflowClient(server.url)
    load = client.create_experiment("competing-load")
    overload = Overload(server, [client.create_run(load).info.run_id for _ in range(COMPETITORS)])
    front = CountingFront(server.url, overload, overload.engage).start()
    stdout, stderr = tmp_path / "storm.stdout", tmp_path / "storm.stderr"
    config = write_config(tmp_path / "storm.toml", SYNTHETIC,
                          {"type": "mlflow", "tracking_uri": front.url, "experiment": "storm-{experiment}"},
                          {"ledger": str(tmp_path / "storm.jsonl")})
    try:
        with open(stdout, "w") as out, open(stderr, "w") as err:
            migration = subprocess.Popen(
                [sys.executable, "-m", "engine", "migrate", str(config), "--log-format", "json"],
                stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

            def ended() -> None:
                migration.wait()
                with overload.changed:
                    overload.migration_ended = True
                    overload.changed.notify_all()

            waiter = threading.Thread(target=ended, daemon=True)
            waiter.start()
            overload.hold_until_ripe()
            assert migration.wait(timeout=600) == 0, stderr.read_text()[-3000:]
            waiter.join(10)
        relayed_errors = dict(front.errors)
        verified = engine("verify", str(config))  # reads back through the (calm) front the ledger names
    finally:
        overload.release()
        front.stop()

    # the overload was real, and runferry met it
    assert overload.seen(who="runferry") >= RUNFERRY_OVERLOADS, overload.answers
    assert overload.seen(kind=LOCKED) > 0 and overload.seen(kind=POOL_DRY) > 0, overload.answers
    # ... and counted exactly what it rode out (nothing else failed but "no such experiment" lookups)
    report = next(json.loads(line) for line in stdout.read_text().splitlines() if '"event": "report"' in line)
    relayed = overload.seen(who="runferry")
    others = {key: n for key, n in relayed_errors.items() if key[1] not in (LOCKED, POOL_DRY) and key[0] != 404}
    assert others == {}, others
    assert report["throttles"] == relayed and report["retries"] == relayed, (report, overload.answers)
    assert report["runs_done"] == RUNS and report["runs_failed"] == 0, report

    # exact, as the official client reads it: the same runs as the calm copy, and as verify reads them
    calm_runs = _runs(server.url, "calm-")
    assert len(calm_runs) == RUNS and _runs(server.url, "storm-") == calm_runs
    assert mlflow_histories(server.url, "storm-") == mlflow_histories(server.url, "calm-")
    assert verified.returncode == 0 and f"runs identical:      {RUNS}" in verified.stdout, verified.stdout[-3000:]
