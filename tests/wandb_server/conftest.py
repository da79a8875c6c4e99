"""Fixtures: one fake W&B server for this test package, the SDK dataset written into it once.

Why: ``wandb.init`` costs about half a second per run, so the official SDK writes the whole
dataset in one subprocess per session and every read/write assertion reuses it.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.wandb import WandbServer, start_wandb_server

HERE = Path(__file__).parent
WRITE_SCRIPT = HERE / "sdk_scripts" / "write_runs.py"
OTHER_KEY = "f" * 40
KEYS = {
    "0" * 8 + "runferrytestkey" + "0" * 17: ["runferry", "team2"],
    OTHER_KEY: ["stranger"],
}


@dataclass
class SdkWrite:
    """Outcome of one SDK writer subprocess."""

    entity: str
    project: str
    wandb_dir: Path
    stdout: str
    sdk_problems: list[str]  # WARN/ERROR lines from the SDK's own logs


@pytest.fixture(scope="package")
def wandb_server() -> WandbServer:
    with start_wandb_server(keys=KEYS) as server:
        yield server


# Client-side notices that say nothing about the server (we disable job creation on purpose).
CLIENT_ONLY_WARNINGS = ("job builder disabled",)


def sdk_log_problems(wandb_dir: Path) -> list[str]:
    """WARN/ERROR records the SDK logged (debug-internal.log is JSON lines, debug.log text)."""
    problems = []
    for path in sorted(glob.glob(str(wandb_dir / "wandb" / "*" / "logs" / "*.log"))):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if any(notice in line for notice in CLIENT_ONLY_WARNINGS):
                    continue
                if '"level":"WARN' in line or '"level":"ERROR' in line or " ERROR " in line or " WARNING " in line:
                    problems.append(f"{Path(path).name}: {line.strip()}")
    return problems


def run_sdk_writer(
    server: WandbServer, python: str, project: str, mode: str, tmp: Path, timeout: float = 240
) -> SdkWrite:
    wandb_dir = tmp / f"wandb-{project}"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(server.sdk_env(str(wandb_dir)))
    done = subprocess.run(
        [python, str(WRITE_SCRIPT), server.entity, project, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"SDK writer failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return SdkWrite(server.entity, project, wandb_dir, done.stdout, sdk_log_problems(wandb_dir))


@pytest.fixture(scope="package")
def sdk_dataset(wandb_server: WandbServer, tmp_path_factory) -> SdkWrite:
    """The full dataset written by the installed (current) wandb SDK into project ``sdk``."""
    return run_sdk_writer(wandb_server, sys.executable, "sdk", "full", tmp_path_factory.mktemp("sdk"))


@pytest.fixture(scope="package")
def public_api(wandb_server: WandbServer, tmp_path_factory):
    """``wandb.Api`` pointed at the package's server (in-process; base URL and key passed
    explicitly, only cache/config dirs go through the environment, restored afterwards)."""
    import wandb

    cache = tmp_path_factory.mktemp("wandb-api")
    env = (
        {
            "WANDB_CACHE_DIR": str(cache / "cache"),
            "WANDB_CONFIG_DIR": str(cache / "config"),
            "WANDB_DATA_DIR": str(cache / "data"),
            "WANDB_ARTIFACT_DIR": str(cache / "artifacts"),
            "WANDB_SILENT": "true",
        }
    )
    with pytest.MonkeyPatch.context() as patch:  # restored when this test package ends
        for key, value in env.items():
            patch.setenv(key, value)
        yield wandb.Api(
            api_key=wandb_server.api_key, overrides={"base_url": wandb_server.base_url}, timeout=30
        )


def dump(value) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)
