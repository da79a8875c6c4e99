"""Histories read straight from the server's SQLite file (``history_database``): the same points
in the same order as through the API (so resume cursors agree), read-only, and a wrong file is
a configuration error before anything is copied."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from adapters.mlflow import MlflowSource
from adapters.mlflow._database import SqliteHistory
from engine.errors import ConfigError
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
    name = seeded.edge_name if experiment == "edge" else seeded.many_name
    through_api = source_config(source_server.url, experiments=[name], include_deleted=True, bulk_history=False)
    proxy = FaultProxy(source_server.url).start()  # counts what the database-backed source asks
    from_file = source_config(proxy.url, experiments=[name], include_deleted=True, history_database=f"sqlite:///{snapshot}")
    before = digest(snapshot)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(proxy.stop)
        api = await stack.enter_async_context(MlflowSource(through_api, context(700)))
        database = await stack.enter_async_context(MlflowSource(from_file, context(700)))
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
    assert digest(snapshot) == before  # never written


async def test_connections_cannot_write(snapshot: Path) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    before = digest(snapshot)
    connection = SqliteHistory(f"sqlite:///{snapshot}")._connect()
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


def test_only_sqlite_uris_are_accepted(source_server: MlflowServer) -> None:
    with pytest.raises(ValueError, match="SQLite only"):
        source_config(source_server.url, history_database="postgresql://user@db/mlflow")
