"""Session fixtures: two real MLflow servers (source, destination) started in parallel,
the source seeded once through the official client."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow.seed import Seeded, seed_source
from tests.servers.mlflow_server import MlflowServer


def _start_all(servers: list[MlflowServer]) -> None:
    errors: list[BaseException] = []

    def start(server: MlflowServer) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]


class _Running(MlflowServer):
    """A server someone else started (``RUNFERRY_MLFLOW_URLS=src_url,dst_url``, for quick
    local iterations); never stopped by the tests."""

    def __init__(self, url: str) -> None:
        super().__init__(Path("."))
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    def stop(self) -> None:
        return None


@pytest.fixture(scope="session")
def mlflow_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, MlflowServer]]:
    reuse = os.environ.get("RUNFERRY_MLFLOW_URLS")
    if reuse:
        src_url, dst_url = reuse.split(",")
        yield _Running(src_url), _Running(dst_url)
        return
    root = tmp_path_factory.mktemp("mlflow")
    source, destination = MlflowServer(root / "source"), MlflowServer(root / "destination")
    _start_all([source, destination])
    try:
        yield source, destination
    finally:
        _stop_all([source, destination])


def _stop_all(servers: list[MlflowServer]) -> None:
    threads = [threading.Thread(target=s.stop) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture(scope="session")
def source_server(mlflow_servers: tuple[MlflowServer, MlflowServer]) -> MlflowServer:
    return mlflow_servers[0]


@pytest.fixture(scope="session")
def dest_server(mlflow_servers: tuple[MlflowServer, MlflowServer]) -> MlflowServer:
    return mlflow_servers[1]


@pytest.fixture(scope="session")
def seeded(source_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    suffix = f"-{uuid.uuid4().hex[:6]}" if os.environ.get("RUNFERRY_MLFLOW_URLS") else ""
    return seed_source(MlflowClient(source_server.url), tmp_path_factory.mktemp("seed"), suffix=suffix)


@pytest.fixture(scope="session")
def source_client(source_server: MlflowServer) -> MlflowClient:
    return MlflowClient(source_server.url)


@pytest.fixture(scope="session")
def dest_client(dest_server: MlflowServer) -> MlflowClient:
    return MlflowClient(dest_server.url)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
