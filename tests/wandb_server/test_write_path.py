"""The official SDK writes through the fake server; we check what the server stored."""

from __future__ import annotations

import json
import math

from tests.wandb_server import dataset


def stored_history(server, project, run_name):
    run = server.state.run(server.entity, project, run_name)
    return [json.loads(line) for line in run.history]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_sdk_reports_no_server_problems(wandb_server, sdk_dataset):
    assert "WROTE" in sdk_dataset.stdout
    assert sdk_dataset.sdk_problems == []
    assert wandb_server.state.unknown_operations == []


def test_history_every_step_with_nan_and_inf(wandb_server, sdk_dataset):
    rows = stored_history(wandb_server, "sdk", dataset.HISTORY_RUN)
    assert [row["_step"] for row in rows] == list(range(dataset.STEPS))
    for row in rows:
        expected = dataset.history_row(row["_step"])
        user_keys = {k: v for k, v in row.items() if not k.startswith("_")}
        assert user_keys.keys() == expected.keys()
        assert all(same(float(user_keys[k]), float(v)) for k, v in expected.items()), row
        assert isinstance(row["_timestamp"], float) and row["_timestamp"] > 1.7e9
    assert math.isnan(rows[10]["weird"])
    assert rows[11]["weird"] == math.inf
    assert rows[12]["weird"] == -math.inf


def test_run_metadata_summary_and_state(wandb_server, sdk_dataset):
    run = wandb_server.state.run(wandb_server.entity, "sdk", dataset.HISTORY_RUN)
    assert run.display_name == "History run"
    assert run.tags == dataset.HISTORY_TAGS
    assert run.notes == dataset.HISTORY_NOTES
    assert (run.group, run.job_type) == ("g1", "train")
    config = run.config_values()
    assert {k: config[k] for k in dataset.HISTORY_CONFIG} == dataset.HISTORY_CONFIG
    assert "_wandb" in config
    last = dataset.history_row(dataset.STEPS - 1)
    assert run.summary["loss"] == last["loss"]
    assert run.summary["acc"] == last["acc"]
    assert run.summary["_step"] == dataset.STEPS - 1
    assert {k: run.summary[k] for k in dataset.HISTORY_SUMMARY_EXTRA} == dataset.HISTORY_SUMMARY_EXTRA
    assert math.isnan(run.summary["weird"]) or math.isinf(run.summary["weird"])
    assert (run.state, run.exitcode) == ("finished", 0)


def test_failed_run_is_marked_failed(wandb_server, sdk_dataset):
    run = wandb_server.state.run(wandb_server.entity, "sdk", dataset.FAILED_RUN)
    assert (run.state, run.exitcode) == ("failed", 1)
    assert [json.loads(line)["loss"] for line in run.history] == [0.0, 1.0, 2.0]


def test_saved_run_file_bytes(wandb_server, sdk_dataset):
    run = wandb_server.state.run(wandb_server.entity, "sdk", dataset.HISTORY_RUN)
    name, content = dataset.SAVED_FILE
    assert {name, "config.yaml", "wandb-summary.json"} <= set(run.files)
    blob = wandb_server.state.blob(run.files[name].blob_key)
    assert blob.read_bytes() == content


def test_artifact_committed_with_exact_files(wandb_server, sdk_dataset):
    state = wandb_server.state
    [art] = state.artifacts_of_collection(wandb_server.entity, "sdk", "dataset")
    assert (art.state, art.version_index, art.type) == ("COMMITTED", 0, "dataset")
    assert sorted(art.aliases) == ["best", "latest"]
    expected = dataset.artifact_files()
    assert sorted(art.files) == sorted(expected)
    for path, content in expected.items():
        blob = state.blob(art.files[path].blob_key)
        assert blob.size == len(content) == art.files[path].size
        assert blob.hexmd5 == dataset.md5_hex(content)
    run = state.run(wandb_server.entity, "sdk", dataset.HISTORY_RUN)
    assert run.output_artifacts == [art.id]


def test_resume_continues_at_server_line_count(wandb_server, sdk_dataset):
    run = wandb_server.state.run(wandb_server.entity, "sdk", dataset.RESUMED_RUN)
    assert [json.loads(line)["_step"] for line in run.history] == list(range(10))
    assert run.state == "finished"
    names = [name for kind, name in wandb_server.state.request_log if kind == "graphql"]
    assert "RunResumeStatus" in names
