"""A throwaway PostgreSQL server for tests: ``pgserver``'s bundled PostgreSQL 16 in a directory
of ours, reachable on a Unix socket only (no TCP port).

Its ``initdb`` trusts every local connection; ``require_password`` puts one role in front of
that rule, so wrong credentials are really refused. ``stop()`` stops the server (pgserver's
``cleanup_mode='stop'``: the data directory stays, under the test's temporary directory).

Usage::

    server = PostgresServer(tmp_path / "pg").start()
    try:
        server.execute("CREATE DATABASE mlflow")
        uri = server.uri("mlflow")  # postgresql://postgres@/mlflow?host=/socket/dir
    finally:
        server.stop()
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import psycopg2

with warnings.catch_warnings():  # pgserver picks its lock directory at import; XDG_RUNTIME_DIR is often unset
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
    import pgserver


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._server: Any = None

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.root / "pgdata", cleanup_mode="stop")
        return self

    @property
    def socket_dir(self) -> str:
        return parse_qs(urlsplit(self._server.get_uri()).query)["host"][0]

    def uri(self, database: str = "postgres", *, user: str = "postgres", password: str | None = None,
            scheme: str = "postgresql") -> str:
        """libpq's URI form (``scheme`` may be SQLAlchemy's ``postgresql+psycopg2``)."""
        credentials = user if password is None else f"{user}:{quote(password, safe='')}"
        return f"{scheme}://{credentials}@/{database}?host={self.socket_dir}"

    def execute(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """One statement as the superuser, outside a transaction (so CREATE DATABASE works)."""
        connection = psycopg2.connect(self.uri(database))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def mlflow_database(self, database: str = "mlflow") -> str:
        """Create ``database`` with MLflow's tables in it (empty); its backend-store URI as
        ``mlflow server`` takes it (SQLAlchemy 2.1's plain ``postgresql://`` means psycopg 3,
        which is not installed: ``postgresql+psycopg2``)."""
        from tests.servers.mlflow_server import migrate

        self.execute(f"CREATE DATABASE {database}")
        uri = self.uri(database, scheme="postgresql+psycopg2")
        migrate(uri)
        return uri

    def require_password(self, user: str, password: str) -> None:
        """Create a login role that must give ``password`` (scram), whatever the trust rules say."""
        escaped = password.replace("'", "''")
        self.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{escaped}'")
        hba = self.root / "pgdata" / "pg_hba.conf"
        hba.write_text(f"local all {user} scram-sha-256\n" + hba.read_text())  # the first match wins
        self.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()
