"""Fixtures: the package's W&B-compatible server (fixtures of tests/wandb_server), the artifact
dataset written into it once by the official SDK, and runferry HTTP clients for it."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.protocols import AdapterContext
from adapters.http import HttpClient
from adapters.wandb import _gql
from tests.servers.wandb import WandbServer
from tests.wandb_server.conftest import public_api, sdk_log_problems, wandb_server  # noqa: F401 (fixtures)

HERE = Path(__file__).parent
SCRIPT = HERE / "sdk_scripts" / "write_artifacts.py"
SOURCE, OTHER = "arts-src", "arts-other"


@dataclass
class ArtifactDataset:
    entity: str
    project: str
    other: str
    sdk_problems: list[str]


@pytest.fixture(scope="package")
def artifact_dataset(wandb_server: WandbServer, tmp_path_factory) -> ArtifactDataset:  # noqa: F811
    wandb_dir = tmp_path_factory.mktemp("sdk-artifacts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_server.sdk_env(str(wandb_dir)))
    done = subprocess.run([sys.executable, str(SCRIPT), wandb_server.entity, SOURCE, OTHER], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"SDK writer failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return ArtifactDataset(wandb_server.entity, SOURCE, OTHER, sdk_log_problems(wandb_dir))


class Events:
    """Collects adapter events for assertions."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name: str, **fields) -> None:
        self.items.append((name, fields))

    def named(self, name: str) -> list[dict]:
        return [f for n, f in self.items if n == name]


@contextlib.asynccontextmanager
async def clients(server: WandbServer, events: Events | None = None) -> AsyncIterator[tuple[HttpClient, HttpClient]]:
    """(api, storage) HttpClients as the W&B adapters open them."""
    context = AdapterContext(events=events or Events())
    auth = {"Authorization": "Basic " + base64.b64encode(f"api:{server.api_key}".encode()).decode()}
    async with HttpClient(base_url=server.base_url, name="wandb", context=context, classify=_gql.classify_graphql,
                          headers=auth) as api, \
            HttpClient(base_url=server.base_url, name="wandb-storage", context=context) as storage:
        yield api, storage
