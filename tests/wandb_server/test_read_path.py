"""The official public API (``wandb.Api``) reads back exactly what the SDK wrote."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from tests.wandb_server import dataset

GRID = "runferry/sdk"


@pytest.fixture(scope="module")
def path(sdk_dataset):
    return f"{sdk_dataset.entity}/{sdk_dataset.project}"


def names(runs) -> list[str]:
    return [run.id for run in runs]


def test_runs_default_order_is_creation_across_pages(public_api, path):
    runs = public_api.runs(path, per_page=3)
    assert names(runs) == [dataset.HISTORY_RUN, dataset.FAILED_RUN, *dataset.GRID_RUNS, dataset.RESUMED_RUN]
    assert len(runs) == 3 + len(dataset.GRID_RUNS)


def test_runs_order_by_config_and_summary(public_api, path):
    grid = {"tags": {"$in": ["grid"]}}
    by_lr = names(public_api.runs(path, filters=grid, order="+config.lr.value", per_page=2))
    expected = [n for _, n in sorted(zip(dataset.GRID_LR, dataset.GRID_RUNS))]
    assert by_lr == expected
    by_acc = names(public_api.runs(path, filters=grid, order="-summary_metrics.acc", per_page=4))
    accs = {n: dataset.grid_acc(i) for i, n in enumerate(dataset.GRID_RUNS)}
    assert by_acc == sorted(dataset.GRID_RUNS, key=lambda n: (-accs[n], dataset.GRID_RUNS.index(n)))
    assert names(public_api.runs(path, filters=grid, order="-created_at")) == dataset.GRID_RUNS[::-1]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"state": "failed"}, [dataset.FAILED_RUN]),
        ({"config.lr": {"$gte": 0.1}}, ["grid00", "grid02", "grid04"]),
        ({"config.lr.value": {"$lt": 0.05}}, [dataset.HISTORY_RUN, "grid01", "grid03"]),
        ({"config.lr": {"$exists": False}}, [dataset.FAILED_RUN, dataset.RESUMED_RUN]),
        ({"$and": [{"tags": "grid"}, {"tags": {"$nin": ["even"]}}]}, ["grid01", "grid03", "grid05"]),
        ({"$or": [{"name": "grid00"}, {"displayName": "Failed run"}]}, [dataset.FAILED_RUN, "grid00"]),
        ({"$nor": [{"tags": "grid"}, {"state": "failed"}]}, [dataset.HISTORY_RUN, dataset.RESUMED_RUN]),
        ({"displayName": {"$regex": "^Grid [45]$"}}, ["grid04", "grid05"]),
        ({"summary_metrics.best_acc": {"$exists": True}}, [dataset.HISTORY_RUN]),
        ({"name": {"$in": ["grid02", "nope"]}, "state": {"$ne": "failed"}}, ["grid02"]),
        ({"summary_metrics.acc": {"$gt": 0.8, "$lte": 0.85}}, ["grid01"]),
        ({"createdAt": {"$gte": "2000-01-01T00:00:00"}, "name": {"$eq": "grid05"}}, ["grid05"]),
        ({"createdAt": {"$lt": "2000-01-01T00:00:00Z"}}, []),
    ],
)
def test_runs_filters(public_api, path, filters, expected):
    assert names(public_api.runs(path, filters=filters, per_page=2)) == expected


def test_run_config_summary_and_metadata(public_api, path):
    run = public_api.run(f"{path}/{dataset.HISTORY_RUN}")
    assert dict(run.config) == dataset.HISTORY_CONFIG
    assert run.name == "History run"
    assert run.tags == dataset.HISTORY_TAGS
    assert run.notes == dataset.HISTORY_NOTES
    assert run.state == "finished"
    summary = dict(run.summary)
    assert summary["best_acc"] == 0.99 and summary["label"] == "text"
    assert summary["loss"] == dataset.history_row(dataset.STEPS - 1)["loss"]
    assert public_api.run(f"{path}/{dataset.FAILED_RUN}").state == "failed"


def check_rows(rows: list[dict], steps: list[int]) -> None:
    assert [row["_step"] for row in rows] == steps
    for row in rows:
        expected = dataset.history_row(row["_step"])
        for key, value in expected.items():
            got = row[key]
            assert (math.isnan(got) and math.isnan(value)) or got == value, (row["_step"], key, got)
        assert all(row.get(k) is None for k in ("weird", "val") if k not in expected)


def test_scan_history_returns_every_step(public_api, path):
    run = public_api.run(f"{path}/{dataset.HISTORY_RUN}")
    rows = list(run.scan_history())
    check_rows(rows, list(range(dataset.STEPS)))
    special = {row["_step"]: row["weird"] for row in rows if row.get("weird") is not None}
    assert math.isnan(special[10]) and special[11] == math.inf and special[12] == -math.inf


def test_scan_history_with_keys_and_step_window(public_api, path):
    run = public_api.run(f"{path}/{dataset.HISTORY_RUN}")
    rows = list(run.scan_history(keys=["val"], min_step=200, max_step=601))
    assert [(r["_step"], r["val"]) for r in rows] == [(s, s * 0.5) for s in range(200, 601, 100)]


def test_history_samples(public_api, path):
    run = public_api.run(f"{path}/{dataset.HISTORY_RUN}")
    rows = run.history(samples=100, pandas=False)
    assert len(rows) == 100
    assert rows[0]["_step"] == 0 and rows[-1]["_step"] == dataset.STEPS - 1
    check_rows(rows, [r["_step"] for r in rows])
    keyed = run.history(keys=["val"], samples=1000, pandas=False)
    assert [(r["_step"], r["val"]) for r in keyed] == [(s, s * 0.5) for s in range(0, dataset.STEPS, 100)]


def test_run_files_and_download(public_api, path, tmp_path):
    run = public_api.run(f"{path}/{dataset.HISTORY_RUN}")
    files = {f.name: f for f in run.files()}
    name, content = dataset.SAVED_FILE
    assert {name, "config.yaml", "wandb-summary.json"} <= set(files)
    assert files[name].size == len(content)
    local = files[name].download(root=str(tmp_path), replace=True)
    local.close()
    assert Path(tmp_path, name).read_bytes() == content


def test_logged_artifact_downloads_byte_for_byte(public_api, path, tmp_path):
    run = public_api.run(f"{path}/{dataset.HISTORY_RUN}")
    [artifact] = list(run.logged_artifacts())
    assert (artifact.name, artifact.type) == ("dataset:v0", "dataset")
    assert sorted(artifact.aliases) == ["best", "latest"]
    assert artifact.metadata == {"rows": 2}
    root = Path(artifact.download(root=str(tmp_path / "art")))
    for rel, content in dataset.artifact_files().items():
        assert hashlib.md5((root / rel).read_bytes()).hexdigest() == hashlib.md5(content).hexdigest()
    same = public_api.artifact(f"{path}/dataset:best")
    assert same.id == artifact.id
    assert sorted(entry for entry in same.manifest.entries) == sorted(dataset.artifact_files())


def test_used_artifacts(public_api, path):
    run = public_api.run(f"{path}/{dataset.FAILED_RUN}")
    assert [a.name for a in run.used_artifacts()] == ["dataset:v0"]
    logged = public_api.run(f"{path}/{dataset.HISTORY_RUN}").logged_artifacts()
    assert [r.id for r in list(logged)[0].used_by()] == [dataset.FAILED_RUN]


def test_resumed_run_history_is_continuous(public_api, path):
    run = public_api.run(f"{path}/{dataset.RESUMED_RUN}")
    assert [(r["_step"], r["x"]) for r in run.scan_history()] == [(s, s * 10) for s in range(10)]


def test_projects_artifact_types_collections_and_versions(public_api, path):
    assert "sdk" in [p.name for p in public_api.projects("runferry")]
    assert [t.name for t in public_api.artifact_types(path)] == ["dataset"]
    assert [c.name for c in public_api.artifact_collections(path, "dataset")] == ["dataset"]
    collection = public_api.artifact_collection("dataset", f"{path}/dataset")
    assert [a.name for a in collection.artifacts()] == ["dataset:v0"]
    assert [a.name for a in public_api.artifacts("dataset", f"{path}/dataset")] == ["dataset:v0"]
    assert public_api.artifact_exists(f"{path}/dataset:v0")
    assert not public_api.artifact_exists(f"{path}/dataset:v7")
    assert public_api.artifact(f"{path}/dataset:v0").logged_by().id == dataset.HISTORY_RUN


def test_public_api_summary_and_config_updates_are_stored(public_api, path, wandb_server):
    run = public_api.run(f"{path}/{dataset.RESUMED_RUN}")
    run.summary.update({"added": 5})
    run.config["extra"] = "yes"
    run.update()
    fresh = public_api.run(f"{path}/{dataset.RESUMED_RUN}")
    assert fresh.summary["added"] == 5
    assert fresh.config["extra"] == "yes"
    stored = wandb_server.state.run(wandb_server.entity, "sdk", dataset.RESUMED_RUN)
    assert stored.config["extra"] == {"value": "yes", "desc": None} or stored.config["extra"]["value"] == "yes"
