"""Metric histories read straight from a tracking server's backend store (SQLite or
PostgreSQL), read-only.

Why: through the REST API a tracking server spends tens of microseconds of CPU per point
(ORM objects, then JSON) on whatever workers it has, which makes reading the bound of any
MLflow migration; a query over the ``metrics`` table streams the same points many times
faster, and the server is not loaded at all. Runs, params, tags and artifacts still come
through the server -- only the bulk of the data takes the short way.

The points come in the REST API's order (keys in code-point order, then timestamp, step and
value), so a resume cursor in the ledger means the same point whichever way it was read.
runferry never writes to its source: a SQLite file is opened with SQLite's read-only mode
(``mode=ro``) and ``query_only``; a PostgreSQL session is made read-only
(``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY``) before its first query, and only
reads (``SELECT``, and a cursor over one) are sent.

Reading goes through Arrow's ADBC drivers (SQLite, PostgreSQL), which hand over columns (Arrow
record batches) rather than one Python tuple per row: the standard ``sqlite3`` module spent
~2 us and ~250 bytes of transient objects per point building rows, more than the query itself,
and held the GIL while doing it. Each history read opens its own connection in a worker thread
(the drivers release the GIL while they wait, so runs read side by side), pages through it
and closes it even when the reader stops early. What differs between the two engines --
connecting, the read-only set-up, the query text and its parameter style, paging -- lives in
one small connection class each; the rest is shared.

A PostgreSQL URI may hold a password: it is shown as ``***`` in every message runferry writes
(libpq's ``PGPASSWORD`` or ``~/.pgpass`` keep it out of the configuration altogether).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread
import numpy as np
import pyarrow as pa

from core.errors import ConfigError
from core.model import HistoryChunk, history_batch

SQLITE_SCHEME = "sqlite:///"
# libpq's schemes, and SQLAlchemy's postgresql+<driver> as given to ``mlflow server``
_POSTGRES_SCHEME = re.compile(r"(?:postgresql(?:\+\w+)?|postgres)://")
_USERINFO = re.compile(r"(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@")  # SQLAlchemy's URL pattern
_WHERE = "[source] history_database"
_KEEP_IDLE = 16  # connections kept open between reads

# Both engines: is it an MLflow database at all, and which experiments does it hold.
_PROBE_QUERY = "SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics LIMIT 1"
_EXPERIMENTS_QUERY = "SELECT experiment_id, name FROM experiments"


def backend_store(uri: str) -> SqliteStore | PostgresStore:
    """The backend store a ``history_database`` URI names, spelled as given to ``mlflow server``
    (``sqlite:////abs/mlflow.db``, ``postgresql[+driver]://user@host:port/db``); ValueError
    for anything else. Nothing is opened."""
    if uri.startswith(SQLITE_SCHEME):
        return SqliteStore(Path(uri[len(SQLITE_SCHEME):]))
    if scheme := _POSTGRES_SCHEME.match(uri):
        return PostgresStore.parse(uri[scheme.end():])
    raise ValueError(
        "history_database must be a sqlite:///<path> or postgresql://<user>@<host>/<database> URI "
        f"(SQLite or PostgreSQL only), got {uri.split(':')[0]}:"
    )


@dataclass(frozen=True)
class SqliteStore:
    """A SQLite database file."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def missing(self) -> str | None:
        """Why it cannot be there at all (checked before connecting), or None."""
        return None if self.path.is_file() else f"no such file: {self.path}"

    def redact(self, text: str) -> str:
        return text

    def connect(self) -> _Connection:
        return _SqliteConnection(self.path)


@dataclass(frozen=True)
class PostgresStore:
    """A PostgreSQL database; ``uri`` is libpq's spelling of it and may hold a password, so only
    ``shown`` (password as ``***``) goes into messages."""

    uri: str = field(repr=False)
    shown: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def parse(cls, rest: str) -> PostgresStore:
        """``rest``: the URI after its scheme. User info is read as SQLAlchemy reads it (which
        agrees with libpq on any URI libpq accepts, and also takes a ``/`` in the password);
        the password goes to libpq percent-encoded. ``password=`` may also be a query parameter."""
        secrets: list[str] = []
        for_libpq = shown = rest
        if (userinfo := _USERINFO.match(rest)) and userinfo["password"] is not None:
            password, after = unquote(userinfo["password"]), rest[userinfo.end():]
            encoded = quote(password, safe="")
            secrets += [userinfo["password"], password, encoded]
            for_libpq = f"{userinfo['user']}:{encoded}@{after}"
            shown = f"{userinfo['user']}:***@{after}"
        base, question, query = shown.partition("?")
        if question:
            params = []
            for param in query.split("&"):
                name, equals, value = param.partition("=")
                if name == "password" and equals:
                    secrets += [value, unquote(value)]
                    param = "password=***"
                params.append(param)
            shown = f"{base}?{'&'.join(params)}"
        return cls(
            uri=f"postgresql://{for_libpq}",
            shown=f"postgresql://{shown}",
            secrets=tuple(sorted({s for s in secrets if s}, key=len, reverse=True)),  # longest first
        )

    def __str__(self) -> str:
        return self.shown

    def missing(self) -> str | None:
        return None

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def connect(self) -> _Connection:
        return _PostgresConnection(self)


class _Connection:
    """One read-only ADBC connection and its cursor; ``close()`` releases both (in order).
    Subclasses open the connection, set the session up before any query (``_set_up``: read-only
    first of all) and say how a run's history is paged (``history``)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        try:
            self.cursor = connection.cursor()
            self._set_up()
        except BaseException:
            connection.close()
            raise

    def _set_up(self) -> None:
        raise NotImplementedError

    def history(self, run_id: str, start: int, batch_rows: int) -> Callable[[], pa.RecordBatch | None]:
        """Start reading the run's ``metrics`` rows (key, step, ms timestamp, value, is_nan) in
        the API's order from index ``start``; the callable returns the next batch of at most
        ``batch_rows`` rows, None at the end."""
        raise NotImplementedError

    def rows(self, query: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.cursor.execute(query, parameters)
        rows: list[tuple[Any, ...]] = self.cursor.fetchall()
        return rows

    def end_history(self) -> None:
        """A history was read to its end: make the connection ready for the next one."""

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            self._connection.close()


class _SqliteConnection(_Connection):
    # explicit casts: the driver types each column from the first rows it sees, SQLite from each value
    HISTORY_QUERY = (
        "SELECT key, CAST(step AS INTEGER), CAST(timestamp AS INTEGER), CAST(value AS REAL), "
        "CAST(is_nan AS INTEGER) FROM metrics WHERE run_uuid = ? "
        "ORDER BY key, timestamp, step, value, is_nan LIMIT -1 OFFSET ?"
    )
    BUSY_TIMEOUT_MS = 30_000

    def __init__(self, path: Path) -> None:
        import adbc_driver_sqlite.dbapi as adbc  # only sources with history_database pay the import

        super().__init__(adbc.connect(f"file:{quote(str(path.resolve()))}?mode=ro"))

    def _set_up(self) -> None:
        self.cursor.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
        self.cursor.execute("PRAGMA query_only = ON")

    def history(self, run_id: str, start: int, batch_rows: int) -> Callable[[], pa.RecordBatch | None]:
        self.cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        self.cursor.execute(self.HISTORY_QUERY, (run_id, start))
        batches = iter(self.cursor.fetch_record_batch())
        return lambda: next(batches, None)


class _PostgresConnection(_Connection):
    """Autocommit session made read-only before anything else; a history is paged through a
    server-side cursor (``FETCH``), so neither side holds a whole run: the driver would turn
    a parameterised query's result into one batch."""

    # COLLATE "C": code-point order of keys, as the API's; the database's collation may differ
    DECLARE_HISTORY = (
        "DECLARE runferry_history NO SCROLL CURSOR FOR "
        "SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = $1 "
        'ORDER BY key COLLATE "C", timestamp, step, value, is_nan OFFSET $2'
    )

    def __init__(self, store: PostgresStore) -> None:
        import adbc_driver_postgresql.dbapi as adbc  # only PostgreSQL history sources pay the import

        try:
            connection = adbc.connect(store.uri, autocommit=True)  # libpq reads PGPASSWORD, ~/.pgpass
        except adbc.Error as exc:
            raise ConnectionError(f"cannot connect to {store} ({store.redact(_first_line(exc))})") from None
        super().__init__(connection)

    def _set_up(self) -> None:
        self.cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        # plain results: COPY (the driver's default for unparameterised queries) cannot wrap FETCH
        self.cursor.adbc_statement.set_options(**{"adbc.postgresql.use_copy": "false"})

    def history(self, run_id: str, start: int, batch_rows: int) -> Callable[[], pa.RecordBatch | None]:
        self.cursor.execute("BEGIN READ ONLY")  # a cursor needs a transaction; closing the connection ends it
        self.cursor.execute(self.DECLARE_HISTORY, (run_id, start))
        fetch = f"FETCH FORWARD {int(batch_rows)} FROM runferry_history"

        def next_batch() -> pa.RecordBatch | None:
            self.cursor.execute(fetch)
            return next(iter(self.cursor.fetch_record_batch()), None)  # one batch per FETCH; none when done

        return next_batch

    def end_history(self) -> None:
        self.cursor.execute("ROLLBACK")  # ends the read-only transaction, and its cursor with it


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _points(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A ``metrics`` batch (key, step, ms timestamp, value, is_nan as int or bool) -> the
    engine's history batch."""
    key, step, millis, value, is_nan = batch.columns
    floats = value.to_numpy(zero_copy_only=False)
    nan = is_nan.to_numpy(zero_copy_only=False).astype(bool)
    if nan.any():
        floats = floats.copy()
        floats[nan] = np.nan  # NaN is stored as 0 with is_nan set
    return history_batch(
        key,
        step,
        millis.to_numpy(zero_copy_only=False) / 1000,  # the same division as ms / 1000 in Python
        floats,
    )


def _next_points(next_batch: Callable[[], pa.RecordBatch | None]) -> pa.RecordBatch | None:
    while (batch := next_batch()) is not None:
        if batch.num_rows:
            return _points(batch)
    return None


class HistoryDatabase:
    """The server's backend store (``history_database``). Opened with ``check(experiments)``;
    then ``history(run_id, start, chunk_points)``."""

    def __init__(self, uri: str) -> None:
        self.store = backend_store(uri)
        self._idle: list[_Connection] = []  # connections between two reads; closed by aclose()

    def _connect(self) -> _Connection:
        return self.store.connect()

    async def _borrow(self) -> _Connection:
        """An idle connection, or a new one: opening a PostgreSQL connection costs ~40 ms (a
        server process, then the driver's type catalogue), more than reading a small run."""
        return self._idle.pop() if self._idle else await anyio.to_thread.run_sync(self._connect)

    async def _give_back(self, connection: _Connection, *, reusable: bool) -> None:
        """Keep a connection whose read ended cleanly; close one left mid-read (or one too many)."""
        if reusable and len(self._idle) < _KEEP_IDLE:
            self._idle.append(connection)
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(connection.close)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            for connection in idle:
                await anyio.to_thread.run_sync(connection.close)

    async def check(self, experiments: list[dict[str, Any]]) -> None:
        """It must be this server's database: every selected experiment is in it under the same
        id and name (a wrong one would otherwise copy empty or foreign histories)."""
        from adbc_driver_manager import Error as DriverError

        if (missing := self.store.missing()) is not None:
            raise ConfigError(f"{_WHERE}: {missing}")

        def read_names(connection: _Connection) -> dict[str, str]:
            connection.rows(_PROBE_QUERY)
            return {str(ident): name for ident, name in connection.rows(_EXPERIMENTS_QUERY)}

        try:
            connection = await self._borrow()
            names: dict[str, str] | None = None
            try:
                names = await anyio.to_thread.run_sync(read_names, connection)
            finally:
                await self._give_back(connection, reusable=names is not None)
        except ConnectionError as exc:
            raise ConfigError(f"{_WHERE}: {exc}") from None
        except DriverError as exc:
            reason = self.store.redact(_first_line(exc))
            raise ConfigError(f"{_WHERE}: {self.store} is not a readable MLflow database ({reason})") from None
        for experiment in experiments:
            ident = str(experiment.get("experiment_id"))
            if names.get(ident) != experiment.get("name"):
                raise ConfigError(
                    f"{_WHERE}: {self.store} is not this server's database "
                    f"(experiment {ident} {experiment.get('name')!r} is not in it)"
                )

    async def history(self, run_id: str, start: int, chunk_points: int) -> AsyncGenerator[HistoryChunk, None]:
        """Points of the run from index ``start`` on, in chunks of at most ``chunk_points``."""
        connection = await self._borrow()
        ended = False
        try:
            next_batch = await anyio.to_thread.run_sync(connection.history, run_id, start, max(1, chunk_points))
            offset = start
            while (batch := await anyio.to_thread.run_sync(_next_points, next_batch)) is not None:
                yield HistoryChunk(batch=batch, offset=offset)
                offset += batch.num_rows
            await anyio.to_thread.run_sync(connection.end_history)
            ended = True
        finally:
            await self._give_back(connection, reusable=ended)
