"""Metric histories read straight from a tracking server's SQLite database, read-only.

Why: through the REST API a tracking server spends tens of microseconds of CPU per point
(ORM objects, then JSON) on whatever workers it has, which makes reading the bound of any
MLflow migration; a cursor over the ``metrics`` table streams the same points many times
faster, and the server is not loaded at all. Runs, params, tags and artifacts still come
through the server -- only the bulk of the data takes the short way.

The points come in the REST API's order (keys sorted, then timestamp, step and value), so a
resume cursor in the ledger means the same point whichever way it was read. The file is opened
with SQLite's read-only mode (``mode=ro``): runferry never writes to its source. Each history
read opens its own connection in a worker thread (SQLite connections are not shared between
threads), pages through it and closes it even when the reader stops early.
"""

from __future__ import annotations

import sqlite3
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
_ORDER = "ORDER BY key, timestamp, step, value, is_nan"
_BUSY_TIMEOUT_S = 30.0


def database_path(uri: str) -> Path:
    """``sqlite:////abs/mlflow.db`` (SQLAlchemy's spelling, as given to ``mlflow server``)."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"history_database must be a {SCHEME}<path> URI (SQLite only), got {uri.split(':')[0]}:")
    return Path(uri[len(SCHEME):])


class SqliteHistory:
    """Opened with ``check(experiments)``; then ``history(run_id, start, chunk_points)``."""

    def __init__(self, uri: str) -> None:
        self.path = database_path(uri)
        # one fetching thread at a time: building rows needs the GIL, and several threads
        # handing it back and forth for every row are slower than one
        self._reader = anyio.CapacityLimiter(1)

    def _connect(self) -> sqlite3.Connection:
        target = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        connection = sqlite3.connect(target, uri=True, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)
        connection.execute("PRAGMA query_only = ON")
        return connection

    async def check(self, experiments: list[dict[str, Any]]) -> None:
        """The file must be this server's database: every selected experiment is in it under
        the same id and name (a wrong file would otherwise copy empty or foreign histories)."""
        where = "[source] history_database"
        if not self.path.is_file():
            raise ConfigError(f"{where}: no such file: {self.path}")

        def read_names() -> dict[str, str]:
            connection = self._connect()
            try:
                connection.execute("SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics LIMIT 1").fetchall()
                rows = connection.execute("SELECT experiment_id, name FROM experiments").fetchall()
                return {str(ident): name for ident, name in rows}
            finally:
                connection.close()

        try:
            names = await anyio.to_thread.run_sync(read_names)
        except sqlite3.Error as exc:
            raise ConfigError(f"{where}: {self.path} is not a readable MLflow database ({exc})") from None
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
            cursor = await anyio.to_thread.run_sync(
                connection.execute,
                f"SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = ? {_ORDER} LIMIT -1 OFFSET ?",
                (run_id, start),
            )
            offset = start
            while True:
                rows = await anyio.to_thread.run_sync(cursor.fetchmany, chunk_points, limiter=self._reader)
                if not rows:
                    return
                keys, steps, times, values, nans = zip(*rows)
                floats = np.array(values, dtype=np.float64)
                floats[np.array(nans, dtype=bool)] = np.nan  # NaN is stored as 0 with is_nan set
                batch = history_batch(
                    pa.array(keys, pa.string()),
                    np.array(steps, dtype=np.int64),
                    np.array(times, dtype=np.int64) / 1000,  # the same division as ms / 1000 in Python
                    floats,
                )
                yield HistoryChunk(batch=batch, offset=offset)
                offset += batch.num_rows
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(connection.close)
