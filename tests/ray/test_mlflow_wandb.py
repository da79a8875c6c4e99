"""MLflow -> W&B-compatible server on Ray gives exactly what the local executor gives, also when
the limiter actor dies mid-migration (workers fall back to their share and finish exactly).

A real ``mlflow server`` holds 8 runs in two experiments (history with NaN/inf and two values at
one step, params, tags, a note, terminal states, nested artifact files); the W&B-compatible
server (``tests/servers/wandb``) receives one migration by the local executor (projects
``local-*``) and the Ray ones (``ray-*``, ``fallback-*``: 3 worker actors, one run per shard, so 8
shards). Both destinations are read back through the official ``wandb.Api()`` (``bench.wandb_data
.run_view``: every history row with ``_step`` and ``_timestamp``, system lines, config, summary,
tags, notes, state, created time, files with size and MD5, artifacts) and must be equal.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.ray.conftest import NO_RAY, WANDB_ENTITY, WANDB_KEY, WANDB_KEY_ENV

ray = pytest.importorskip("ray", reason=NO_RAY)

from bench.wandb_data import differences, namespace_view
from engine.config import load_config
from engine.pipeline import migrate
from engine.progress import Progress
from scaleout.executor import migrate_on_ray
from scaleout.limiter import AUTHORITY_NAME
from tests.ray.test_executor import write
from tests.servers.mlflow_server import MlflowServer
from tests.servers.wandb import WandbServer, start_wandb_server

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(600)]

EXPERIMENTS = ("vision", "text")
RUNS_PER_EXPERIMENT = 4
STEPS = 120
T0_MS = 1_700_000_000_000
RATE = 300.0  # every endpoint's configured rate: the limiter actor paces it, the fallback splits it


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, WandbServer]]:
    root = tmp_path_factory.mktemp("mlflow-wandb")
    with MlflowServer(root / "mlflow") as mlflow_server, start_wandb_server(keys={WANDB_KEY: [WANDB_ENTITY]}) as wandb_server:
        _seed(mlflow_server.url, root / "artifacts")
        yield mlflow_server, wandb_server


def _seed(url: str, scratch: Path) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    for e, experiment in enumerate(EXPERIMENTS):
        exp = client.create_experiment(f"ray-src-{experiment}")
        for r in range(RUNS_PER_EXPERIMENT):
            start = T0_MS + 1000 * (e * 10 + r)
            run = client.create_run(exp, run_name=f"{experiment} {r}", start_time=start,
                                    tags={"team": experiment, "mlflow.note.content": f"note {r}"})
            rid = run.info.run_id
            client.log_batch(rid, params=[Param("lr", str(0.001 * (r + 1))), Param("layers", str(4 + r))])
            metrics = []
            for step in range(STEPS):
                special = [float("nan"), float("inf"), float("-inf")][step % 3]
                loss = special if step % 41 == 7 else (r + 1) / (step + 1)
                metrics.append(Metric("train/loss", loss, start + step * 10, step))
                metrics.append(Metric("acc", step / STEPS + r, start + step * 10, step))
            metrics.append(Metric("train/loss", 42.5, start + 31, 3))  # a second value at step 3
            client.log_batch(rid, metrics=metrics)
            files = scratch / rid
            for rel, data in {"model/weights.bin": os.urandom(3000 + r), "model/deep/cfg.json": b'{"a": 1}',
                              "README.txt": f"run {r}".encode()}.items():
                (files / rel).parent.mkdir(parents=True, exist_ok=True)
                (files / rel).write_bytes(data)
            client.log_artifacts(rid, str(files))
            client.set_terminated(rid, "FAILED" if r == RUNS_PER_EXPERIMENT - 1 else "FINISHED", end_time=start + 60_000)


_configs = itertools.count()


def config_for(tmp_path: Path, servers: tuple[MlflowServer, WandbServer], prefix: str, *, on_ray: bool) -> Path:
    mlflow_server, wandb_server = servers
    tables: dict[str, dict[str, Any]] = {
        "source": {"type": "mlflow", "tracking_uri": mlflow_server.url, "experiments": ["ray-src-*"]},
        "destination": {"type": "wandb", "base_url": wandb_server.base_url, "api_key_env": WANDB_KEY_ENV,
                        "entity": WANDB_ENTITY, "project": prefix + "-{project}"},
        "transfer": {"ledger": str(tmp_path / f"{prefix}.jsonl")},
        "ratelimit": {"initial_rate": RATE, "max_rate": RATE},
    }
    if on_ray:
        tables["transfer"]["executor"] = "ray"
        tables["ray"] = {"workers": 3, "shard_runs": 1, "ledger": str(tmp_path / f"{prefix}-ledger.d"),
                         "lease_seconds": 5}
    return write(tmp_path / f"{prefix}-{next(_configs)}.toml", **tables)


def view(servers: tuple[MlflowServer, WandbServer], prefix: str) -> dict[str, dict[str, Any]]:
    """Every destination run of ``prefix-*`` as ``wandb.Api()`` reads it, keyed without the prefix."""
    import wandb

    wandb_server = servers[1]
    api = wandb.Api(api_key=WANDB_KEY, overrides={"base_url": wandb_server.base_url}, timeout=60)
    projects = [f"{prefix}-ray-src-{e}" for e in EXPERIMENTS]
    runs = namespace_view(api, WANDB_ENTITY, projects)
    return {path.removeprefix(prefix + "-"): run for path, run in runs.items()}


@pytest.fixture(scope="module")
def local_view(servers: tuple[MlflowServer, WandbServer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The local executor's destination: what every Ray migration must equal."""
    config = config_for(tmp_path_factory.mktemp("local"), servers, "local", on_ray=False)
    report = anyio.run(lambda: migrate(load_config(config), progress=Progress.quiet()))
    assert report.exit_code == 0 and report.progress.totals.runs_done == 8
    got = view(servers, "local")
    assert len(got) == 8 and all(len(run["rows"]) == STEPS + 1 for run in got.values())
    return got


FIELDS: dict[str, Any] = dict.fromkeys(
    ("rows", "system", "config", "summary", "tags", "notes", "group", "job_type", "state", "name", "files",
     "logged", "artifact_bytes", "used"))
"""Everything ``run_view`` reads but ``created``: the server stamps it when the run is created
(the source's start time is in ``config._wandb.runferry_times``, compared)."""


def test_mlflow_to_wandb_on_ray_equals_the_local_executor(servers, local_view, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = config_for(tmp_path, servers, "ray", on_ray=True)
    report = anyio.run(lambda: migrate_on_ray(load_config(config), progress=Progress.quiet()))
    assert report.exit_code == 0
    totals = report.progress.totals
    assert (totals.runs_selected, totals.runs_done, totals.runs_failed) == (8, 8, 0)
    got = view(servers, "ray")
    assert differences(local_view, got, FIELDS, limit=50) == []
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "ray-ledger.d").rglob("*.jsonl")
                  if ".e" in p.name) == [f"g000001-s{i:06d}" for i in range(8)]  # 8 shards, each leased once


class KillLimiterAfterFirstRun(Progress):
    """The driver's progress; at the first finished run it kills the limiter actor for good."""

    def __init__(self) -> None:
        super().__init__(mode="quiet")
        self.done_after_kill = 0
        self.killed = False

    def event(self, name: str, **fields: Any) -> None:
        super().event(name, **fields)
        if name != "run_done":
            return
        if self.killed:
            self.done_after_kill += 1
            return
        ray.kill(ray.get_actor(AUTHORITY_NAME), no_restart=True)
        self.killed = True


def test_the_limiter_dying_mid_migration_still_gives_exactly_the_local_result(servers, local_view, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = config_for(tmp_path, servers, "fallback", on_ray=True)
    progress = KillLimiterAfterFirstRun()
    report = anyio.run(lambda: migrate_on_ray(load_config(config), progress=progress))
    assert report.exit_code == 0 and progress.killed
    assert progress.done_after_kill == 7  # every other run finished with the limiter gone
    assert report.progress.totals.runs_failed == 0
    with pytest.raises(ValueError):
        ray.get_actor(AUTHORITY_NAME)  # it stayed dead: the rest ran on the workers' shares
    got = view(servers, "fallback")
    assert differences(local_view, got, FIELDS, limit=50) == []
