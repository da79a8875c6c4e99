"""Histories read straight from a PostgreSQL backend store (``history_database =
"postgresql://..."``), against a real ``mlflow server --backend-store-uri postgresql+psycopg2://...``
on a throwaway PostgreSQL (pgserver, Unix socket), seeded like the SQLite source: the same
points in the same order as through the API, a session that cannot write, a wrong database or
wrong credentials refused before anything is copied, and a password never shown."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow import MlflowSource
from adapters.mlflow._database import HistoryDatabase, PostgresStore
from core.errors import ConfigError
from tests.adapters.contract import all_refs, read_history
from tests.mlflow.helpers import context, source_config
from tests.mlflow.seed import EDGE_POINTS, Seeded, seed_source
from tests.mlflow.test_database import assert_same_history_as_the_api
from tests.servers.mlflow_server import MlflowServer, free_port
from tests.servers.postgres_server import PostgresServer

READER, PASSWORD = "reader", "pw:Sëcret/42"  # a read-only role that must give its password


@dataclass
class PostgresBacked:
    postgres: PostgresServer
    server: MlflowServer
    seeded: Seeded

    @property
    def uri(self) -> str:
        """The backend store exactly as given to ``mlflow server`` (the superuser, SQLAlchemy's spelling)."""
        return self.server.database_uri

    def reader_uri(self, password: str | None = PASSWORD, database: str = "mlflow") -> str:
        return self.postgres.uri(database, user=READER, password=password)

    def digest(self) -> tuple[object, ...]:
        """Everything the tests could change: every metric row and experiment."""
        return tuple(
            self.postgres.execute(
                "SELECT (SELECT md5(string_agg(concat_ws(',', run_uuid, key, timestamp, step, value, is_nan), ';' "
                "ORDER BY run_uuid, key, timestamp, step, value, is_nan)) FROM metrics), "
                "(SELECT md5(string_agg(concat_ws(',', experiment_id, name), ';' ORDER BY experiment_id)) FROM experiments)",
                "mlflow",
            )[0]
        )


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresBacked]:
    """One PostgreSQL and one mlflow server on it for this module; ``other`` is a real MLflow
    database of the same server but an empty one."""
    root = tmp_path_factory.mktemp("mlflow-postgres")
    postgres = PostgresServer(root / "postgres").start()
    server: MlflowServer | None = None
    try:
        uri = postgres.mlflow_database("mlflow")
        postgres.execute("CREATE DATABASE other TEMPLATE mlflow")  # before the server holds connections to it
        postgres.require_password(READER, PASSWORD)
        postgres.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}", "mlflow")
        server = MlflowServer(root / "server", backend_store_uri=uri).start()
        seeded = seed_source(MlflowClient(server.url), root / "seed")
        yield PostgresBacked(postgres, server, seeded)
    finally:
        if server is not None:
            server.stop()
        postgres.stop()


@pytest.mark.parametrize("experiment", ["edge", "many"])
async def test_same_points_same_order_and_resume_offsets_as_the_api(backed: PostgresBacked, experiment: str) -> None:
    before = backed.digest()
    await assert_same_history_as_the_api(backed.server, backed.seeded, experiment, backed.uri)
    assert backed.digest() == before  # never written


async def test_a_password_is_used_and_pgpassword_too(backed: PostgresBacked, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-only role, its password in the URI (percent-encoded) or in libpq's PGPASSWORD."""
    edge = backed.seeded.runs["edge"]
    for uri, environment in ((backed.reader_uri(), None), (backed.reader_uri(password=None), PASSWORD)):
        if environment is not None:
            monkeypatch.setenv("PGPASSWORD", environment)
        cfg = source_config(backed.server.url, experiments=[backed.seeded.edge_name], history_database=uri)
        async with MlflowSource(cfg, context(700)) as source:
            record = await source.get_run(next(r for r in await all_refs(source) if r.id == edge))
            points, _ = await read_history(source, record, 2500)
            assert points.num_rows == 300 + len(EDGE_POINTS)


async def test_connections_cannot_write(backed: PostgresBacked) -> None:
    """Even as the superuser the server was given: the session itself is read-only."""
    import adbc_driver_postgresql.dbapi as adbc

    before = backed.digest()
    writes = (
        "DELETE FROM metrics",
        "UPDATE metrics SET value = 0",
        "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES ('x', 1, 1, 'r', 0, false)",
        "INSERT INTO experiments (name, lifecycle_stage) VALUES ('intruder', 'active')",
    )
    for write in writes:
        connection = HistoryDatabase(backed.uri)._connect()
        try:
            with pytest.raises(adbc.Error, match="read-only transaction"):
                connection.rows(write)
            next_batch = connection.history(backed.seeded.runs["edge"], 0, 100)  # inside the history's transaction
            assert next_batch() is not None
            with pytest.raises(adbc.Error, match="read-only transaction"):
                connection.rows(write)
        finally:
            connection.close()
    assert backed.digest() == before


async def test_a_wrong_database_or_credentials_are_refused_without_the_password(
    backed: PostgresBacked, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_password = "Wr0ng-pässword"
    wrong = [
        (backed.postgres.uri("other"), "is not this server's database"),  # MLflow's, but empty
        (backed.postgres.uri("postgres"), "is not a readable MLflow database"),  # no MLflow tables
        (backed.reader_uri(database="nosuchdb"), "cannot connect to"),
        (backed.reader_uri(password=wrong_password), "cannot connect to.*password authentication failed"),
        (backed.postgres.uri("mlflow", user=READER, password=wrong_password, scheme="postgresql+psycopg2"),
         "cannot connect to.*password authentication failed"),
        (f"postgresql://{READER}@/mlflow?host={backed.postgres.socket_dir}&password={wrong_password}",
         "cannot connect to.*password authentication failed"),
        (f"postgresql://{READER}@/mlflow?host={backed.postgres.socket_dir}&password=Bad%zz{wrong_password}",
         "cannot connect to.*invalid percent-encoded token"),  # libpq repeats the password: redacted
        (f"postgresql+psycopg2://{READER}:{wrong_password}/?@/mlflow?host={backed.postgres.socket_dir}",
         "cannot connect to.*password authentication failed"),  # SQLAlchemy takes / and ? in a password
        (f"postgresql://{READER}:{wrong_password}@127.0.0.1:{free_port()}/mlflow", "cannot connect to.*refused"),
        (f"postgresql://{READER}:{wrong_password}@/mlflow?host={tmp_path / 'no-server'}", "cannot connect to"),
    ]
    caplog.set_level(logging.DEBUG)
    for uri, message in wrong:
        cfg = source_config(backed.server.url, experiments=[backed.seeded.edge_name], history_database=uri)
        with pytest.raises(ConfigError, match=message) as caught:
            async with MlflowSource(cfg, context()):
                pass
        text = str(caught.value)
        assert text.startswith("[source] history_database: ") and "postgresql://" in text and "\n" not in text, text
        assert wrong_password not in text and PASSWORD not in text, text
    assert wrong_password not in caplog.text


def test_the_password_is_split_off_as_sqlalchemy_and_libpq_read_the_uri() -> None:
    store = PostgresStore.parse("alice:p%40ss:w0rd@db.example:5432/mlflow?sslmode=require")
    assert store.uri == "postgresql://alice:p%40ss%3Aw0rd@db.example:5432/mlflow?sslmode=require"
    assert store.shown == str(store) == "postgresql://alice:***@db.example:5432/mlflow?sslmode=require"
    assert store.redact('token "p%40ss:w0rd", then p@ss:w0rd') == 'token "***", then ***'
    assert "w0rd" not in repr(store)
    store = PostgresStore.parse("alice:pa/ss?@db/mlflow")  # raw / and ? in a password: SQLAlchemy takes them
    assert store.uri == "postgresql://alice:pa%2Fss%3F@db/mlflow"
    assert store.shown == "postgresql://alice:***@db/mlflow"
    store = PostgresStore.parse("alice@/mlflow?host=/run/pg&password=hunter2")
    assert store.shown == "postgresql://alice@/mlflow?host=/run/pg&password=***"
    assert store.redact("... hunter2 ...") == "... *** ..."
    store = PostgresStore.parse("alice@db/mlflow")  # no password: nothing to hide
    assert store.shown == store.uri == "postgresql://alice@db/mlflow" and store.secrets == ()
