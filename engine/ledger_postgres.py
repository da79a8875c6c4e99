"""The ledger store for clusters: PostgreSQL, with lease fencing in SQL.

Three tables (created if missing)::

    runferry_plans   (pair, generation, body)                 the shards of each generation
    runferry_leases  (pair, shard, epoch, holder, expires, done)   one row per shard
    runferry_events  (id, pair, shard, epoch, run, body)      the journal, in insertion order

A journal line is inserted only ``WHERE EXISTS`` the shard's lease row with the writer's epoch
(taken ``FOR SHARE``, so a concurrent re-lease waits for the insert or the insert sees the new
epoch and inserts nothing): a write under a stale lease is refused, and the writer is told so
(``LeaseLost``). Lease changes are single ``UPDATE``s guarded on the epoch and the expiry.

Connections go through ADBC (``adbc-driver-postgresql``, already a dependency), in autocommit:
every line is durable when ``append`` returns. Calls are blocking (~1 ms on a LAN), one per
ledger line, i.e. per history chunk, file or run event, never per point; journal lines are sent
from the ledger's writer thread, lease calls from the worker's loop, so one lock serialises the
connection's use.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Collection
from typing import Any

from core.errors import ConfigError
from engine.ledger import Ledger
from engine.ledger_store import Lease, LeaseLost, Plan, Shard, StoreLedger

_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS runferry_plans (pair TEXT NOT NULL, generation INTEGER NOT NULL,"
    " body TEXT NOT NULL, PRIMARY KEY (pair, generation))"),
    ("CREATE TABLE IF NOT EXISTS runferry_leases (pair TEXT NOT NULL, shard TEXT NOT NULL,"
    " epoch INTEGER NOT NULL, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL,"
    " done BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (pair, shard))"),
    ("CREATE TABLE IF NOT EXISTS runferry_events (id BIGSERIAL PRIMARY KEY, pair TEXT NOT NULL,"
    " shard TEXT NOT NULL, epoch INTEGER NOT NULL, run TEXT NOT NULL, body TEXT NOT NULL)"),
    "CREATE INDEX IF NOT EXISTS runferry_events_run ON runferry_events (pair, run, id)",
)

_FENCED_INSERT = (
    "INSERT INTO runferry_events (pair, shard, epoch, run, body) SELECT $1, $2, $3, $4, $5"
    " WHERE EXISTS (SELECT 1 FROM runferry_leases WHERE pair = $1 AND shard = $2 AND epoch = $3"
    " AND NOT done FOR SHARE)"
)


class PostgresStore:
    def __init__(self, uri: str, *, password_env: str = "", clock: Any = time.time) -> None:
        import adbc_driver_postgresql.dbapi as adbc

        self.uri = uri
        self._clock = clock
        kwargs: dict[str, Any] = {}
        if password_env:
            kwargs["db_kwargs"] = {"password": os.environ.get(password_env, "")}
        try:
            self._conn = adbc.connect(uri, autocommit=True, **kwargs)
        except adbc.Error as exc:
            raise ConfigError(f"[ray] ledger: cannot connect to PostgreSQL ({type(exc).__name__})") from None
        self._lock = threading.Lock()
        self._cursor = self._conn.cursor()
        self._cursor.adbc_statement.set_options(**{"adbc.postgresql.use_copy": "false"})
        for statement in _SCHEMA:
            self._cursor.execute(statement)

    def describe(self) -> str:
        return self.uri

    def _rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._cursor.execute(query, params or None)
            rows: list[tuple[Any, ...]] = self._cursor.fetchall()
        return rows

    def _execute(self, query: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            self._cursor.execute(query, params)

    def _count(self, query: str, params: tuple[Any, ...]) -> int:
        """Rows a guarded INSERT/UPDATE touched (``RETURNING 1`` counts them portably)."""
        return len(self._rows(query + " RETURNING 1", params))

    # -- journal -------------------------------------------------------------------------------
    def read(self, pair: str | None, runs: Collection[str] | None = None) -> Ledger:
        ledger = Ledger(self.uri, pair or "")  # type: ignore[arg-type]
        ledger.fold_lines(self._bodies(pair, runs), pair, runs)
        return ledger

    def _bodies(self, pair: str | None, runs: Collection[str] | None) -> list[str]:
        if pair is None:
            return [r[0] for r in self._rows("SELECT body FROM runferry_events ORDER BY id")]
        if runs is None:
            return [r[0] for r in self._rows("SELECT body FROM runferry_events WHERE pair = $1 ORDER BY id", (pair,))]
        return [r[0] for r in self._rows(
            "SELECT body FROM runferry_events WHERE pair = $1 AND run = ANY($2::text[]) ORDER BY id",
            (pair, "{" + ",".join(json.dumps(r) for r in runs) + "}"))]

    def shard_ledger(self, pair: str, shard: Shard, epoch: int) -> Ledger:
        ledger = StoreLedger(pair, lambda run, line, sync: self._append(pair, shard.key, epoch, run, line),
                             self.uri, clock=self._clock)
        ledger.fold_lines(self._bodies(pair, shard.runs), pair, shard.runs)
        return ledger

    def _append(self, pair: str, shard: str, epoch: int, run: str, line: str) -> None:
        if not self._count(_FENCED_INSERT, (pair, shard, epoch, run, line)):
            raise LeaseLost(f"shard {shard}: lease epoch {epoch} is no longer current; write refused")

    # -- plan ----------------------------------------------------------------------------------
    def latest_plan(self, pair: str) -> Plan | None:
        rows = self._rows("SELECT generation, body FROM runferry_plans WHERE pair = $1"
                          " ORDER BY generation DESC LIMIT 1", (pair,))
        if not rows:
            return None
        return Plan(int(rows[0][0]), tuple(Shard.from_json(s) for s in json.loads(rows[0][1])["shards"]))

    def save_plan(self, pair: str, plan: Plan) -> None:
        body = json.dumps({"pair": pair, "generation": plan.generation, "shards": [s.to_json() for s in plan.shards]})
        self._execute("INSERT INTO runferry_plans (pair, generation, body) VALUES ($1, $2, $3)",
                             (pair, plan.generation, body))

    # -- leases --------------------------------------------------------------------------------
    def leases(self, pair: str, generation: int) -> dict[str, Lease]:
        rows = self._rows("SELECT shard, epoch, holder, expires, done FROM runferry_leases"
                          " WHERE pair = $1 AND shard LIKE $2", (pair, f"g{generation:06d}-%"))
        return {r[0]: Lease(r[0], int(r[1]), r[2], float(r[3]), bool(r[4])) for r in rows}

    def grant(self, pair: str, shard: str, holder: str, ttl: float) -> int | None:
        now = self._clock()
        self._execute("INSERT INTO runferry_leases (pair, shard, epoch, holder, expires, done)"
                             " VALUES ($1, $2, 0, '', 0, FALSE) ON CONFLICT DO NOTHING", (pair, shard))
        rows = self._rows("UPDATE runferry_leases SET epoch = epoch + 1, holder = $3, expires = $4"
                          " WHERE pair = $1 AND shard = $2 AND NOT done AND expires <= $5 RETURNING epoch",
                          (pair, shard, holder, now + ttl, now))
        return int(rows[0][0]) if rows else None

    def renew(self, pair: str, shard: str, epoch: int, ttl: float) -> bool:
        return bool(self._count("UPDATE runferry_leases SET expires = $4 WHERE pair = $1 AND shard = $2"
                                " AND epoch = $3 AND NOT done", (pair, shard, epoch, self._clock() + ttl)))

    def complete(self, pair: str, shard: str, epoch: int) -> None:
        if not self._count("UPDATE runferry_leases SET done = TRUE WHERE pair = $1 AND shard = $2 AND epoch = $3",
                           (pair, shard, epoch)):
            raise LeaseLost(f"shard {shard}: lease epoch {epoch} is no longer current")

    def release(self, pair: str, shard: str, epoch: int, grace: float) -> None:
        self._execute("UPDATE runferry_leases SET expires = LEAST(expires, $4) WHERE pair = $1"
                             " AND shard = $2 AND epoch = $3 AND NOT done",
                             (pair, shard, epoch, self._clock() + grace))

    def close(self) -> None:
        with self._lock:
            self._cursor.close()
            self._conn.close()
