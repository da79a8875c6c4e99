"""wandb==0.27.0 (the last SDK with W&B's importers) writes through the fake server too.

bench compares runferry with that importer on this server, so its write path must work.
The venv is created on demand by ``bench.wandb027`` and cached in ``<repo>/.venv-wandb027``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from bench.wandb027 import VenvUnavailable, ensure_wandb027
from tests.wandb_server import dataset
from tests.wandb_server.conftest import run_sdk_writer

IMPORTER_SCRIPT = Path(__file__).parent / "sdk_scripts" / "importer_send.py"


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


@pytest.fixture(scope="module")
def importer_python():
    """The 0.27.0 venv with ``wandb[importers]`` (mlflow, polars...) and numpy<2.

    Installing the importer extra takes minutes (mlflow), so it is provisioned by
    ``python -m bench.wandb027 --importers`` (bench needs it anyway) or here when
    RUNFERRY_INSTALL_IMPORTERS=1; otherwise this test says how to enable it and skips.
    """
    from bench.wandb027 import importers_ready

    try:
        python = ensure_wandb027()
    except VenvUnavailable as exc:
        pytest.skip(f"pip install wandb==0.27.0 failed here, cannot test it: {exc}")
    if importers_ready(python):
        return python
    if os.environ.get("RUNFERRY_INSTALL_IMPORTERS") != "1":
        pytest.skip("wandb 0.27.0 importers not provisioned: run `python -m bench.wandb027 --importers`")
    try:
        return ensure_wandb027(importers=True)
    except VenvUnavailable as exc:
        pytest.skip(f"pip install wandb[importers]==0.27.0 failed here: {exc}")


def test_wandb027_importer_send_run(wandb_server, importer_python, tmp_path):
    """W&B's own importer machinery (RecordMaker + legacy SendManager) writes run + artifact."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_server.sdk_env(str(tmp_path)))
    done = subprocess.run(
        [str(importer_python), str(IMPORTER_SCRIPT), wandb_server.entity, "importer", "imp01", str(tmp_path / "art")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run = wandb_server.state.run(wandb_server.entity, "importer", "imp01")
    rows = [json.loads(line) for line in run.history]
    assert [row["_step"] for row in rows] == list(range(300))
    for row in rows:
        for key, value in dataset.history_row(row["_step"]).items():
            assert (math.isnan(row[key]) and math.isnan(value)) or row[key] == value
    assert (run.state, run.exitcode, run.display_name) == ("finished", 0, "Imported run")
    assert run.summary["best_acc"] == 0.99
    [art] = wandb_server.state.artifacts_of_collection(wandb_server.entity, "importer", "imported-artifacts")
    assert art.state == "COMMITTED" and sorted(art.aliases) == ["imported", "latest"]
    for path, content in dataset.artifact_files().items():
        assert wandb_server.state.blob(art.files[path].blob_key).hexmd5 == dataset.md5_hex(content)
    assert wandb_server.state.unknown_operations == []
