"""Histories read straight from the server's SQLite file (``history_database``): the same points
in the same order as through the API (so resume cursors agree), read-only, and a wrong file is
a configuration error before anything is copied. (PostgreSQL: test_database_postgres.py, which
shares ``assert_same_history_as_the_api``.)"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from adapters.mlflow import MlflowSource
from adapters.mlflow._database import HistoryDatabase
from core.errors import ConfigError
from tests.adapters.contract import all_refs, assert_history_equal, read_history
from tests.mlflow.fault_proxy import FaultProxy
from tests.mlflow.helpers import context, source_config
from tests.mlflow.seed import EDGE_POINTS, Seeded
from tests.servers.mlflow_server import MlflowServer, template_database


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def snapshot(source_server: MlflowServer, tmp_path: Path) -> Path:
    """A copy of the server's database that nothing else writes to while a test reads it."""
    copy = tmp_path / "snapshot.db"
    with sqlite3.connect(source_server.root / "mlflow.db") as live, sqlite3.connect(copy) as target:
        live.backup(target)
    return copy


@pytest.mark.parametrize("experiment", ["edge", "many"])
async def test_same_points_same_order_and_resume_offsets_as_the_api(
    source_server: MlflowServer, seeded: Seeded, snapshot: Path, experiment: str
) -> None:
    before = digest(snapshot)
    await assert_same_history_as_the_api(source_server, seeded, experiment, f"sqlite:///{snapshot}")
    assert digest(snapshot) == before  # never written


async def assert_same_history_as_the_api(
    server: MlflowServer, seeded: Seeded, experiment: str, history_database: str
) -> None:
    """Every run of the experiment: the same points in the same order and chunks read from
    ``history_database`` as through the API, resumed reads included; no get-history request."""
    name = seeded.edge_name if experiment == "edge" else seeded.many_name
    through_api = source_config(server.url, experiments=[name], include_deleted=True, bulk_history=False)
    proxy = FaultProxy(server.url).start()  # counts what the database-backed source asks
    from_database = source_config(proxy.url, experiments=[name], include_deleted=True, history_database=history_database)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(proxy.stop)
        api = await stack.enter_async_context(MlflowSource(through_api, context(700)))
        database = await stack.enter_async_context(MlflowSource(from_database, context(700)))
        refs = await all_refs(api)
        assert [r.id for r in await all_refs(database)] == [r.id for r in refs]
        for ref in refs:
            record = await api.get_run(ref)
            expected, expected_offsets = await read_history(api, record)
            got, offsets = await read_history(database, await database.get_run(ref))
            assert_history_equal(got, expected)
            assert offsets == expected_offsets
            if ref.id == seeded.runs.get("edge"):
                assert expected.num_rows == 2500 + 300 + len(EDGE_POINTS)
                for start in (1, 699, 700, 2500, 2501, expected.num_rows - 1, expected.num_rows):
                    tail, _ = await read_history(database, record, start)
                    assert_history_equal(tail, expected.slice(start))
        assert proxy.count("runs/search") > 0 and proxy.count("get-history") == 0


async def test_reads_share_a_connection_and_one_left_midway_is_closed(
    source_server: MlflowServer, seeded: Seeded, snapshot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs read one after the other reuse one connection (opening one costs ~40 ms on
    PostgreSQL); a reader that stops early leaves its query mid-way, so that connection is
    closed, never handed on; the source closes the rest when it closes."""
    opened: list[object] = []
    closed: list[object] = []
    connect = HistoryDatabase._connect

    def counting(self: HistoryDatabase) -> object:
        connection = connect(self)
        opened.append(connection)
        close = connection.close
        connection.close = lambda: (closed.append(connection), close())[1]  # type: ignore[method-assign]
        return connection

    monkeypatch.setattr(HistoryDatabase, "_connect", counting)
    cfg = source_config(source_server.url, experiments=[seeded.many_name], history_database=f"sqlite:///{snapshot}")
    async with MlflowSource(cfg, context(700)) as source:
        refs = await all_refs(source)
        assert len(refs) > 2
        for ref in refs:
            history, _ = await read_history(source, await source.get_run(ref))
            assert history.num_rows > 0
        assert len(opened) == 1 and closed == []  # check() and every read on one connection
        async with contextlib.aclosing(source.iter_history(await source.get_run(refs[0]))) as chunks:
            async for _ in chunks:
                break
        assert closed == opened
        await read_history(source, await source.get_run(refs[1]))
        assert len(opened) == 2
    assert closed == opened  # the idle one, with the source


async def test_an_idle_connection_never_blocks_the_servers_writes(seeded: Seeded, snapshot: Path) -> None:
    """Kept between reads, a connection holds no read lock: the server (still running during a
    migration) commits its writes at once instead of failing with "database is locked"."""
    run_id = seeded.runs["edge"]

    def server_writes() -> None:
        writer = sqlite3.connect(snapshot, timeout=0)  # a lock held anywhere fails this at once
        try:
            writer.execute("UPDATE runs SET name = name WHERE run_uuid = ?", (run_id,))
            writer.commit()
        finally:
            writer.close()

    database = HistoryDatabase(f"sqlite:///{snapshot}")
    try:
        await database.check([])
        server_writes()
        async with contextlib.aclosing(database.history(run_id, 0, 700)) as chunks:
            points = sum([len(chunk) async for chunk in chunks])
        assert points > 0 and len(database._idle) == 1
        server_writes()
    finally:
        await database.aclose()


async def test_connections_cannot_write(snapshot: Path) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    before = digest(snapshot)
    connection = HistoryDatabase(f"sqlite:///{snapshot}")._connect()
    try:
        with pytest.raises(adbc.Error, match="readonly|query_only"):
            connection.rows("DELETE FROM metrics")
        connection.rows("PRAGMA query_only = OFF")  # the file itself is opened read-only too
        with pytest.raises(adbc.Error, match="readonly"):
            connection.rows("DELETE FROM metrics")
    finally:
        connection.close()
    assert digest(snapshot) == before


async def test_a_database_that_is_not_this_servers_is_refused(
    source_server: MlflowServer, seeded: Seeded, tmp_path: Path
) -> None:
    other = tmp_path / "other.db"
    shutil.copyfile(template_database(), other)  # a real MLflow database, but an empty one
    wrong = [
        (f"sqlite:///{other}", "is not this server's database"),
        (f"sqlite:///{tmp_path / 'missing.db'}", "no such file"),
    ]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    wrong.append((f"sqlite:///{garbage}", "is not a readable MLflow database"))
    for uri, message in wrong:
        cfg = source_config(source_server.url, experiments=[seeded.edge_name], history_database=uri)
        with pytest.raises(ConfigError, match=message):
            async with MlflowSource(cfg, context()):
                pass


def test_only_sqlite_and_postgresql_uris_are_accepted() -> None:
    for uri in (
        "sqlite:////srv/mlflow/mlflow.db",
        "postgresql://user@db:5432/mlflow",
        "postgresql+psycopg2://user:secret@db/mlflow",  # SQLAlchemy's spelling, as given to mlflow server
        "postgres://user@db/mlflow",
        "postgresql://user@/mlflow?host=/var/run/postgresql",  # libpq's Unix socket form
    ):
        source_config("http://127.0.0.1:5000", history_database=uri)
    for uri in ("mysql://user:secret@db/mlflow", "mssql+pyodbc://user:secret@db/mlflow", "/srv/mlflow/mlflow.db"):
        with pytest.raises(ValueError, match="SQLite or PostgreSQL only") as caught:
            source_config("http://127.0.0.1:5000", history_database=uri)
        assert "secret" not in str(caught.value)
