"""MLflow -> W&B end to end: a real ``mlflow server`` seeded with the official client, migrated
through the W&B-importer-shaped API (``engine.importers``), read back with ``wandb.Api`` and
compared with what the MLflow client reports, point by point and byte by byte."""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest

from engine.importers import MlflowImporter, Namespace

from .conftest import same_value, wandb_api

# A real MLflow server starts in seconds on an idle CI machine but can take minutes on a busy
# one (seeding 27k points is 28 log-batch calls); allow for it instead of failing spuriously.
pytestmark = pytest.mark.timeout(900)

LONG_KEY_POINTS = 25_500
WIDE_KEYS = 300
T0_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def mlflow_source(tmp_path_factory: pytest.TempPathFactory):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from tests.servers.mlflow_server import MlflowServer

    root = tmp_path_factory.mktemp("mlflow-src")
    with MlflowServer(root) as server:
        client = MlflowClient(server.url)
        exp = client.create_experiment("vision/exp A")
        run = client.create_run(exp, run_name="long and wide", start_time=T0_MS,
                                tags={"team": "vision", "mlflow.note.content": "notes here",
                                      "mlflow.source.git.commit": "deadbeef", "mlflow.source.name": "train.py"})
        rid = run.info.run_id
        client.log_batch(rid, params=[Param("lr", "0.001"), Param("layers", "12"), Param("optimizer", "adam")])
        metrics = []
        for step in range(LONG_KEY_POINTS):  # one long key, 25k+ points
            special = [float("nan"), float("inf"), float("-inf"), -0.0][(step // 1000) % 4]
            value = special if step % 1000 == 7 else step * 0.5
            metrics.append(Metric("train/loss", value, T0_MS + step * 10, step))
        for step in range(5):  # 300 keys in the same run
            for k in range(WIDE_KEYS):
                metrics.append(Metric(f"layer_{k:03d}/norm", k + step / 8, T0_MS + step * 10, step))
        metrics.append(Metric("train/loss", 99.0, T0_MS + 3 * 10 + 1, 3))  # second value at step 3
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000])
        art = root / "art"
        for rel, data in {"model/weights.bin": os.urandom(200_000), "model/nested/deep/cfg.json": b'{"a":1}',
                          "model/empty.txt": b"", "README.txt": b"hello"}.items():
            (art / rel).parent.mkdir(parents=True, exist_ok=True)
            (art / rel).write_bytes(data)
        client.log_artifacts(rid, str(art))
        client.set_terminated(rid, "FINISHED", end_time=T0_MS + 600_000)

        failed = client.create_run(exp, run_name="failed one", start_time=T0_MS)
        client.log_batch(failed.info.run_id, metrics=[Metric("acc", 0.25, T0_MS + 5, 0), Metric("acc", 0.5, T0_MS + 6, 1)])
        client.set_terminated(failed.info.run_id, "FAILED", end_time=T0_MS + 1000)
        running = client.create_run(exp, run_name="still running", start_time=T0_MS)
        client.log_metric(running.info.run_id, "acc", 0.1, timestamp=T0_MS, step=0)
        yield server, client, {"long": rid, "failed": failed.info.run_id, "running": running.info.run_id}, art


def mlflow_points(client, run_id: str) -> Counter:
    run = client.get_run(run_id)
    points: Counter = Counter()
    for key in run.data.metrics:
        for m in client.get_metric_history(run_id, key):
            points[(key, m.step, "nan" if math.isnan(m.value) else m.value)] += 1
    return points


def wandb_points(history: list[dict]) -> Counter:
    points: Counter = Counter()
    for line in history:
        for key, value in line.items():
            if not key.startswith("_"):
                points[(key, line["_step"], "nan" if isinstance(value, float) and math.isnan(value) else value)] += 1
    return points


def test_mlflow_to_wandb_through_the_importer_api(mlflow_source, server, project, tmp_path) -> None:
    mlflow_server, client, ids, art = mlflow_source
    importer = MlflowImporter(mlflow_tracking_uri=mlflow_server.url, dst_base_url=server.base_url,
                              dst_api_key=server.api_key, ledger=str(tmp_path / "ledger.jsonl"))
    runs = importer.collect_runs()
    assert {r.id for r in runs} == set(ids.values())
    report = importer.import_runs(runs, artifacts=True, namespace=Namespace(server.entity, project))
    assert report.exit_code == 0
    api = wandb_api(server)

    long_run = api.run(f"{server.entity}/{project}/{ids['long']}")
    assert long_run.name == "long and wide" and long_run.state == "finished"
    assert long_run.config["lr"] == "0.001" and long_run.config["layers"] == "12"
    assert long_run.config["source_tags"]["team"] == "vision"
    assert long_run.notes == "notes here"
    assert "team:vision" in long_run.tags
    history = list(long_run.scan_history(page_size=1000))
    got, want = wandb_points(history), mlflow_points(client, ids["long"])
    assert (want - got, got - want) == (Counter(), Counter())
    assert len(history) == LONG_KEY_POINTS + 1  # one extra line for the second value at step 3
    by_step = {}
    for line in history:
        by_step.setdefault(line["_step"], []).append(line)
    assert by_step[0][0]["_timestamp"] == T0_MS / 1000 and by_step[100][0]["_timestamp"] == (T0_MS + 1000) / 1000
    assert sorted(line["train/loss"] for line in by_step[3]) == [1.5, 99.0]
    assert len([k for k in by_step[2][0] if k.startswith("layer_")]) == WIDE_KEYS
    # NaN and the specials arrive as MLflow reports them (MLflow's SQL store itself turns +-inf
    # into +-1.7976931348623157e308 and -0.0 into 0.0 when logging; nothing of that is ours)
    reported = {m.step: m.value for m in client.get_metric_history(ids["long"], "train/loss") if m.step % 1000 == 7}
    assert math.isnan(reported[7])
    for step in (7, 1007, 2007, 3007):
        assert same_value(float(by_step[step][0]["train/loss"]), reported[step]), step
    summary = client.get_run(ids["long"]).data.metrics
    assert long_run.summary["train/loss"] == summary["train/loss"]

    files = {f.name for f in long_run.files()}
    assert "README.txt" in files
    (model,) = [a for a in long_run.logged_artifacts() if a.name.startswith("model")] or [None]
    if model is None:  # default layout: the whole tree as run files
        for rel in ("model/weights.bin", "model/nested/deep/cfg.json", "model/empty.txt"):
            assert rel in files
            f = long_run.file(rel)
            f.download(root=str(tmp_path / "dl"), replace=True)
            assert (tmp_path / "dl" / rel).read_bytes() == (art / rel).read_bytes()

    failed = api.run(f"{server.entity}/{project}/{ids['failed']}")
    assert failed.state == "failed"
    assert [(h["_step"], h["acc"]) for h in failed.scan_history()] == [(0, 0.25), (1, 0.5)]
    assert api.run(f"{server.entity}/{project}/{ids['running']}").state == "running"

    again = importer.import_runs(runs, artifacts=True, namespace=Namespace(server.entity, project))
    assert again.progress.totals.runs_skipped == 3  # the ledger makes re-runs incremental


def test_importer_takes_a_custom_iterable_of_runs(mlflow_source, server, project, tmp_path) -> None:
    mlflow_server, client, ids, _ = mlflow_source
    importer = MlflowImporter(mlflow_tracking_uri=mlflow_server.url, dst_base_url=server.base_url,
                              dst_api_key=server.api_key, ledger=str(tmp_path / "ledger.jsonl"))
    mlflow_run = client.get_run(ids["failed"])  # an MLflow Run object, as W&B users pass them
    report = importer.import_runs([mlflow_run], artifacts=False, namespace=Namespace(server.entity, project))
    assert report.exit_code == 0 and report.progress.totals.runs_done == 1
    (run,) = wandb_api(server).runs(f"{server.entity}/{project}")
    assert run.id == ids["failed"] and run.state == "failed"
    assert [(h["_step"], h["acc"], h["_timestamp"]) for h in run.scan_history()] == [
        (0, 0.25, (T0_MS + 5) / 1000), (1, 0.5, (T0_MS + 6) / 1000)]
