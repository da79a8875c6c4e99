"""Metric histories read straight from a tracking server's SQLite database, read-only.

Why: through the REST API a tracking server spends tens of microseconds of CPU per point
(ORM objects, then JSON) on whatever workers it has, which makes reading the bound of any
MLflow migration; a query over the ``metrics`` table streams the same points many times
faster, and the server is not loaded at all. Runs, params, tags and artifacts still come
through the server -- only the bulk of the data takes the short way.

The points come in the REST API's order (keys sorted, then timestamp, step and value), so a
resume cursor in the ledger means the same point whichever way it was read. The file is opened
with SQLite's read-only mode (``mode=ro``) and ``query_only``: runferry never writes to its
source.

Reading goes through Arrow's ADBC SQLite driver, which hands over columns (Arrow record
batches) rather than one Python tuple per row: the standard ``sqlite3`` module spent ~2 us and
~250 bytes of transient objects per point building rows, more than the query itself, and held
the GIL while doing it. Each history read opens its own connection in a worker thread (the
driver releases the GIL while it steps the query, so runs read side by side), pages through
it and closes it even when the reader stops early.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import numpy as np
import pyarrow as pa

from engine.errors import ConfigError
from engine.model import HistoryChunk, history_batch

SCHEME = "sqlite:///"
# explicit casts: the driver types each column from the first rows it sees, SQLite from each value
_HISTORY_QUERY = (
    "SELECT key, CAST(step AS INTEGER), CAST(timestamp AS INTEGER), CAST(value AS REAL), "
    "CAST(is_nan AS INTEGER) FROM metrics WHERE run_uuid = ? "
    "ORDER BY key, timestamp, step, value, is_nan LIMIT -1 OFFSET ?"
)
_BUSY_TIMEOUT_MS = 30_000


def database_path(uri: str) -> Path:
    """``sqlite:////abs/mlflow.db`` (SQLAlchemy's spelling, as given to ``mlflow server``)."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"history_database must be a {SCHEME}<path> URI (SQLite only), got {uri.split(':')[0]}:")
    return Path(uri[len(SCHEME):])


class _Connection:
    """One read-only ADBC connection and its cursor; ``close()`` releases both (in order)."""

    def __init__(self, path: Path) -> None:
        import adbc_driver_sqlite.dbapi as adbc  # only sources with history_database pay the import

        self._connection = adbc.connect(f"file:{quote(str(path.resolve()))}?mode=ro")
        try:
            self.cursor = self._connection.cursor()
            self.cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self.cursor.execute("PRAGMA query_only = ON")
        except BaseException:
            self._connection.close()
            raise

    def rows(self, query: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.cursor.execute(query, parameters)
        return self.cursor.fetchall()

    def batches(self, query: str, parameters: tuple[Any, ...], batch_rows: int) -> pa.RecordBatchReader:
        self.cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        self.cursor.execute(query, parameters)
        return self.cursor.fetch_record_batch()

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            self._connection.close()


def _points(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A ``metrics`` batch (key, step, ms timestamp, value, is_nan) -> the engine's history batch."""
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


def _next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return None
        if batch.num_rows:
            return _points(batch)


class SqliteHistory:
    """Opened with ``check(experiments)``; then ``history(run_id, start, chunk_points)``."""

    def __init__(self, uri: str) -> None:
        self.path = database_path(uri)

    def _connect(self) -> _Connection:
        return _Connection(self.path)

    async def check(self, experiments: list[dict[str, Any]]) -> None:
        """The file must be this server's database: every selected experiment is in it under
        the same id and name (a wrong file would otherwise copy empty or foreign histories)."""
        where = "[source] history_database"
        if not self.path.is_file():
            raise ConfigError(f"{where}: no such file: {self.path}")

        def read_names() -> dict[str, str]:
            connection = self._connect()
            try:
                connection.rows("SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics LIMIT 1")
                rows = connection.rows("SELECT experiment_id, name FROM experiments")
                return {str(ident): name for ident, name in rows}
            finally:
                connection.close()

        import adbc_driver_sqlite.dbapi as adbc

        try:
            names = await anyio.to_thread.run_sync(read_names)
        except adbc.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{where}: {self.path} is not a readable MLflow database ({reason})") from None
        for experiment in experiments:
            ident = str(experiment.get("experiment_id"))
            if names.get(ident) != experiment.get("name"):
                raise ConfigError(
                    f"{where}: {self.path} is not this server's database "
                    f"(experiment {ident} {experiment.get('name')!r} is not in it)"
                )

    async def history(self, run_id: str, start: int, chunk_points: int) -> AsyncIterator[HistoryChunk]:
        """Points of the run from index ``start`` on, in chunks of ``chunk_points``."""
        connection = await anyio.to_thread.run_sync(self._connect)
        try:
            reader = await anyio.to_thread.run_sync(
                connection.batches, _HISTORY_QUERY, (run_id, start), max(1, chunk_points)
            )
            offset = start
            while (batch := await anyio.to_thread.run_sync(_next_batch, reader)) is not None:
                yield HistoryChunk(batch=batch, offset=offset)
                offset += batch.num_rows
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(connection.close)
