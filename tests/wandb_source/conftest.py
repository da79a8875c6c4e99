"""Fixtures: a W&B-compatible server holding a dataset written by the official SDK, the
``wandb.Api`` oracle on it, and helpers to run a ``WandbSource`` against it.

Why: the source must read what the real SDK writes, and the official public API reading the
same server is the oracle of what "what W&B holds" means.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.protocols import AdapterContext
from adapters.wandb import WandbSource, WandbSourceConfig
from tests.servers.wandb import WandbServer, start_wandb_server

HERE = Path(__file__).parent
WRITE_SCRIPT = HERE / "sdk_scripts" / "write_source_runs.py"
KEY = "0" * 8 + "runferrysrckey" + "0" * 18
ENTITY, OTHER_ENTITY = "runferry", "team2"
KEYS = {KEY: [ENTITY, OTHER_ENTITY], "e" * 40: ["stranger"]}
KEY_ENV = "RUNFERRY_TEST_WANDB_SOURCE_KEY"


@pytest.fixture(scope="package")
def wandb_server() -> WandbServer:
    with start_wandb_server(keys=KEYS) as server:
        yield server


@pytest.fixture(scope="package")
def sdk_dataset(wandb_server: WandbServer, tmp_path_factory) -> WandbServer:
    """The dataset of ``write_source_runs.py``, written once per test package."""
    wandb_dir = tmp_path_factory.mktemp("wandb-source-sdk")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_server.sdk_env(str(wandb_dir)))
    done = subprocess.run([sys.executable, str(WRITE_SCRIPT), ENTITY, OTHER_ENTITY], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"SDK writer failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert not wandb_server.state.unknown_operations
    return wandb_server


@pytest.fixture(scope="package")
def public_api(sdk_dataset: WandbServer, tmp_path_factory):
    """``wandb.Api`` on the dataset's server (cache and config dirs under a temp dir)."""
    import wandb

    cache = tmp_path_factory.mktemp("wandb-api")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"WANDB_CACHE_DIR": cache / "cache", "WANDB_CONFIG_DIR": cache / "config",
                           "WANDB_DATA_DIR": cache / "data", "WANDB_SILENT": "true"}.items():
            patch.setenv(key, str(value))
        yield wandb.Api(api_key=sdk_dataset.api_key, overrides={"base_url": sdk_dataset.base_url}, timeout=30)


@pytest.fixture
def key_env(monkeypatch, sdk_dataset: WandbServer) -> str:
    monkeypatch.setenv(KEY_ENV, sdk_dataset.api_key)
    return KEY_ENV


def source_config(server: WandbServer, **overrides: Any) -> WandbSourceConfig:
    values: dict[str, Any] = {"base_url": server.base_url, "api_key_env": KEY_ENV}
    values.update(overrides)
    return WandbSourceConfig(**values)


def make_source(
    server: WandbServer, *, chunk_points: int = 100_000, events=None, limiters=None, **overrides: Any
) -> WandbSource:
    context = AdapterContext(chunk_points=chunk_points, limiters=limiters)
    if events is not None:
        context = dataclasses.replace(context, events=events)
    return WandbSource(source_config(server, **overrides), context)


async def collect(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]
