"""wandb==0.27.0 (the last SDK with W&B's importers) writes through the fake server too.

bench compares runferry with that importer on this server, so its write path must work.
The venv is created on demand by ``bench.wandb027`` and cached in ``<repo>/.venv-wandb027``.
"""

from __future__ import annotations

import json
import math

import pytest

from bench.wandb027 import VenvUnavailable, ensure_wandb027
from tests.wandb_server import dataset
from tests.wandb_server.conftest import run_sdk_writer


@pytest.fixture(scope="module")
def wandb027_write(wandb_server, tmp_path_factory):
    try:
        python = ensure_wandb027()
    except VenvUnavailable as exc:
        pytest.skip(f"pip install wandb==0.27.0 failed here, cannot test it: {exc}")
    return run_sdk_writer(wandb_server, str(python), "w027", "full", tmp_path_factory.mktemp("w027"))


def test_wandb027_writes_without_server_problems(wandb_server, wandb027_write):
    assert "WROTE 0.27.0" in wandb027_write.stdout
    assert wandb027_write.sdk_problems == []
    assert wandb_server.state.unknown_operations == []


def test_wandb027_history_summary_and_state(wandb_server, wandb027_write):
    run = wandb_server.state.run(wandb_server.entity, "w027", dataset.HISTORY_RUN)
    rows = [json.loads(line) for line in run.history]
    assert [row["_step"] for row in rows] == list(range(dataset.STEPS))
    for row in rows:
        for key, value in dataset.history_row(row["_step"]).items():
            assert (math.isnan(row[key]) and math.isnan(value)) or row[key] == value
    assert run.config_values()["opt"] == dataset.HISTORY_CONFIG["opt"]
    assert run.summary["best_acc"] == 0.99
    assert (run.state, run.exitcode) == ("finished", 0)
    failed = wandb_server.state.run(wandb_server.entity, "w027", dataset.FAILED_RUN)
    assert (failed.state, failed.exitcode) == ("failed", 1)
    resumed = wandb_server.state.run(wandb_server.entity, "w027", dataset.RESUMED_RUN)
    assert [json.loads(line)["x"] for line in resumed.history] == [s * 10 for s in range(10)]


def test_wandb027_artifact_bytes(wandb_server, wandb027_write):
    [art] = wandb_server.state.artifacts_of_collection(wandb_server.entity, "w027", "dataset")
    assert art.state == "COMMITTED"
    for path, content in dataset.artifact_files().items():
        assert wandb_server.state.blob(art.files[path].blob_key).hexmd5 == dataset.md5_hex(content)
