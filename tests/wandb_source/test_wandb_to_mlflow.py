"""W&B -> MLflow through the engine: runs the official SDK wrote are migrated into a real
``mlflow server`` and read back with the official ``mlflow`` client: every numeric history value
with its step and millisecond timestamp, the non-numeric ones in ``wandb/history_nonnumeric.jsonl``,
system metrics as ``system/...`` metrics, flattened params, status, files and console log."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import anyio
import pytest

from adapters.mlflow._wandb import mlflow_name
from engine.config import parse_config
from engine.pipeline import migrate
from tests.servers.mlflow_server import MlflowServer
from tests.wandb_source.conftest import ENTITY, KEY_ENV
from tests.wandb_source.oracle import sdk_view

RUNS = [f"{ENTITY}/alpha/rich", f"{ENTITY}/alpha/failed", f"{ENTITY}/alpha/resumed"]
STATUS = {"finished": "FINISHED", "failed": "FAILED", "crashed": "FAILED", "killed": "KILLED"}


def _mlflow_value(value: float) -> float:
    return math.copysign(sys.float_info.max, value) if math.isinf(value) else float(value)


def _numeric(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def mlflow_dest(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("w2m-mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def migrated(sdk_dataset, mlflow_dest, tmp_path_factory):
    os.environ[KEY_ENV] = sdk_dataset.api_key
    config = parse_config({
        "source": {"type": "wandb", "base_url": sdk_dataset.base_url, "api_key_env": KEY_ENV,
                   "namespaces": [f"{ENTITY}/alpha"]},
        "destination": {"type": "mlflow", "tracking_uri": mlflow_dest.url, "experiment": "{entity}-{experiment}"},
        "transfer": {"ledger": str(tmp_path_factory.mktemp("w2m") / "ledger.jsonl")},
    })
    try:
        return anyio.run(migrate, config)
    finally:
        os.environ.pop(KEY_ENV, None)


def _mlflow_run(client, run_id: str):
    experiment = client.get_experiment_by_name(f"{ENTITY}-alpha")
    [run] = client.search_runs([experiment.experiment_id], f"tags.`wandb.run_id` = '{run_id}'")
    return run


@pytest.mark.parametrize("path", RUNS)
def test_mlflow_reads_what_wandb_holds(migrated, public_api, mlflow_dest, path):
    from mlflow.tracking import MlflowClient

    assert migrated.exit_code == 0, migrated.progress.totals.failures
    client = MlflowClient(mlflow_dest.url)
    src = sdk_view(public_api, path)
    run = _mlflow_run(client, path.rsplit("/", 1)[1])
    assert run.info.run_name == src["name"] and run.info.status == STATUS[src["state"]]

    want: dict[str, list[tuple]] = {}
    nonnumeric = 0
    for row in src["rows"]:
        for key, value in row.items():
            if key in ("_step", "_timestamp"):
                continue
            if _numeric(value):
                point = (row["_step"], round(row["_timestamp"] * 1000), _mlflow_value(value))
                want.setdefault(mlflow_name(key), []).append(point)
            else:
                nonnumeric += 1
    for index, line in enumerate(src["system"]):
        for key, value in line.items():
            if key.startswith("system."):
                want.setdefault("system/" + key[len("system."):], []).append(
                    (index, round(line["_timestamp"] * 1000), _mlflow_value(value)))
    for key, points in want.items():
        have = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))
        expected = sorted(points)
        assert len(have) == len(expected), key
        for a, b in zip(have, expected, strict=True):
            assert a[:2] == b[:2] and (a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2]))), (key, a, b)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(run.info.run_id, "", tmp))
        files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    if nonnumeric:
        lines = files["wandb/history_nonnumeric.jsonl"].decode().splitlines()
        assert len(lines) == nonnumeric
    config = json.loads(files["wandb/config.json"])
    assert config == src["config"]
    for name, data in src["files"].items():
        assert files[name] == data, name
    flat_lr = run.data.params.get("lr")
    if "lr" in src["config"]:
        assert flat_lr == str(src["config"]["lr"])
