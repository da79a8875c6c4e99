"""A real ``mlflow server`` on a free loopback port, for tests and bench (SQLite + local artifacts;
or another backend store given as ``backend_store_uri``, e.g. PostgreSQL, migrated beforehand with
``migrate``).

A fresh SQLite database takes 10-20 s of schema migrations on a small machine, so the migrated
empty database is built once per MLflow version and copied for every server (startup then takes
a few seconds). The server runs with ``--serve-artifacts`` (proxied ``mlflow-artifacts:/`` roots)
and one worker. Readiness is polled on ``/health`` with a deadline while checking that our own
process is still alive (another process on the port would answer too). ``stop()`` ends the
server's own process group (uvicorn plus its job-runner child), nothing else.

Usage::

    with MlflowServer(tmp_path / "src") as server:
        client = mlflow.tracking.MlflowClient(server.url)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow

STARTUP_DEADLINE = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_TEMPLATE_LOCK = threading.Lock()


def template_database() -> Path:
    """An empty, fully migrated MLflow SQLite database (built once per MLflow version; servers
    started from several threads at once wait for one build)."""
    with _TEMPLATE_LOCK:
        return _build_template()


def _build_template() -> Path:
    cache = Path(os.environ.get("RUNFERRY_CACHE", Path(tempfile.gettempdir()) / "runferry-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if path.exists():
        return path
    building = cache / f"mlflow-{mlflow.__version__}-{os.getpid()}-{threading.get_ident()}.building.db"
    migrate(f"sqlite:///{building}")
    os.replace(building, path)
    return path


def migrate(backend_store_uri: str) -> None:
    """Create MLflow's tables in an empty database (what ``mlflow server`` does at first start)."""
    script = (
        "import sys, tempfile\n"
        "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore\n"
        "SqlAlchemyStore(sys.argv[1], tempfile.mkdtemp())\n"
    )
    subprocess.run([sys.executable, "-c", script, backend_store_uri], check=True, capture_output=True, timeout=300)


class MlflowServer:
    """Start with ``start()`` (or ``with``); ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(
        self,
        root: Path,
        *,
        artifacts_destination: str | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        workers: int = 1,
        backend_store_uri: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.backend_store_uri = backend_store_uri  # None: a SQLite file under root
        self.port = 0
        self.artifacts_destination = artifacts_destination or str(self.root / "artifacts")
        self.extra_args = extra_args
        self.env = env or {}
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def database_uri(self) -> str:
        """The backend store, spelled as ``mlflow server --backend-store-uri`` takes it."""
        return self.backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        database = self.root / "mlflow.db"
        if self.backend_store_uri is None and not database.exists():
            shutil.copyfile(template_database(), database)
        for _ in range(3):  # a free port can be taken between probing and binding
            self.port = free_port()
            if self._launch():
                return self
        raise RuntimeError(f"mlflow server did not start; see {self.log_path}")

    def _launch(self) -> bool:
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.database_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--serve-artifacts",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", str(self.workers),
            *self.extra_args,
        ]
        # MLflow >= 3.x also starts a job runner with about ten huey consumers (GenAI jobs, not
        # tracking): ~2 GB and idle CPU per server that no test uses; a test may still turn it on
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)  # polling a subprocess's readiness; no event to wait on
        self.stop()
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)  # our own session: the server and its children
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def basic_auth_server(root: Path, admin: tuple[str, str]) -> MlflowServer:
    """An ``mlflow server --app-name basic-auth`` (not started): users and permissions in their
    own SQLite file under ``root``, ``admin`` created at first start, every other user READ by
    default. Real 401s (wrong password) and 403s (a grant that denies) come from it."""
    root.mkdir(parents=True, exist_ok=True)
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "runferry-tests-csrf-key-0123456789"}
    return MlflowServer(root / "server", extra_args=("--app-name", "basic-auth"), env=env)


def as_user(url: str, user: tuple[str, str], path: str, body: dict[str, object]) -> dict[str, object]:
    """POST ``body`` to ``url + path`` with basic auth (what an admin does to set users up)."""
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        loaded: dict[str, object] = json.loads(answer.read() or b"{}")
        return loaded
