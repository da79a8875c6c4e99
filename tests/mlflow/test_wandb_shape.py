"""W&B-shaped runs into a real MLflow server, read back with the official ``mlflow`` client:
flattened params, tags, status, times, every metric point, the non-numeric history artifact,
config/summary documents, files; and a crash mid-history resumed without a point twice."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name

from adapters.mlflow import MlflowDestination
from adapters.mlflow._wandb import covers, mlflow_name, part_name, part_span
from core.model import RunRecord
from tests.adapters.contract import copy_run
from tests.engine.wandb_shaped import (
    ARTIFACT_FILES,
    CONSOLE_TEXT,
    FILES,
    LONG_KEY,
    STEPS,
    T0,
    WandbShapedSource,
    config_of,
    history_of,
    summary_of,
)
from tests.mlflow.helpers import Events, artifact_tree, context, copy_all, dest_config
from tests.mlflow.seed import float_bits
from tests.servers.mlflow_server import MlflowServer

RENAMED = {"bad@key": "bad_key"}


def expected_params(index: int) -> dict[str, str]:
    return {
        "lr": str(0.001 * (index + 1)),
        "batch_size": "32",
        "opt.name": "adam",
        "opt.beta1": "0.9",
        "opt.betas": "[0.9,0.999]",
        "opt.sched.warmup": "10",
        "layers": "[64,32]",
        "flag": "True",
        "nothing": "None",
        "bad key_1_": "5",
    }


def as_mlflow_stores(value: float) -> float:
    """MLflow's SQL store keeps +-inf as +-DBL_MAX (NaN stays NaN)."""
    return math.copysign(sys.float_info.max, value) if math.isinf(value) else value


def expected_metrics(index: int) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for key, step, ts, value, _ in history_of(index):
        if value is None or key == LONG_KEY:
            continue
        point = (step, round(ts * 1000), float_bits(as_mlflow_stores(value)))
        out.setdefault(RENAMED.get(key, key), []).append(point)
    last_ms = round((T0 + (STEPS - 1) * 0.25 + index) * 1000)
    for key, value in (("best_acc", 0.95), ("count", 7.0), ("not_a_number", math.nan)):
        out[key] = [(STEPS - 1, last_ms, float_bits(value))]  # set directly in the summary
    return {k: sorted(v) for k, v in out.items()}


def expected_side_lines(index: int) -> list[dict[str, Any]]:
    return [
        {"step": step, "timestamp": ts, "key": key, "value": json.loads(vj) if vj is not None else value}
        for key, step, ts, value, vj in history_of(index)
        if value is None or key == LONG_KEY
    ]


def side_lines(tree: dict[str, bytes]) -> list[dict[str, Any]]:
    text = tree["wandb/history_nonnumeric.jsonl"].decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_wandb_run(client: MlflowClient, url: str, run_id: str, index: int, tmp: Path) -> None:
    run = client.get_run(run_id)
    record_state = ("FINISHED", "finished") if index == 0 else ("FAILED", "crashed")
    assert run.info.run_name == ["bright-sun-1", "dark-moon-2"][index]
    assert (run.info.status, run.data.tags["wandb.state"]) == record_state
    assert run.info.start_time == round((T0 - 5 + index) * 1000)
    assert run.info.end_time == round((T0 + 100.5 + index) * 1000)
    assert run.info.user_id == "alice"
    assert run.data.params == expected_params(index)
    bare = ["abc123", "def456"][index]
    tags = {
        "mlflow.runName": run.info.run_name,
        "mlflow.user": "alice",
        "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567",
        "mlflow.source.name": "train.py",
        "wandb.run_id": bare,
        "wandb.path": f"team/proj/{bare}",
        "wandb.state": record_state[1],
        "wandb.host": "gpu-box-1",
        "wandb.url": f"http://127.0.0.1:9/team/proj/runs/{bare}",
        "runferry.source_run_id": f"team/proj/{bare}",
        "runferry.source": "wandb",
    }
    if index == 1:
        tags |= {
            "mlflow.note.content": "a note\nover lines",
            "wandb.group": "sweep-7",
            "wandb.job_type": "train",
            "wandb.tags": '["baseline","with space, comma"]',
        }
    assert run.data.tags == tags
    metrics = expected_metrics(index)
    assert set(run.data.metrics) == set(metrics)
    for key, points in metrics.items():
        stored = sorted((p.step, p.timestamp, float_bits(p.value)) for p in client.get_metric_history(run_id, key))
        assert stored == points, key
    tree = artifact_tree(url, run_id, tmp)
    assert side_lines(tree) == expected_side_lines(index)
    assert json.loads(tree["wandb/config.json"]) == config_of(index)
    summary = json.loads(tree["wandb/summary.json"])
    expected_summary = summary_of(index)
    assert math.isnan(summary.pop("not_a_number")) and math.isnan(expected_summary.pop("not_a_number"))
    assert summary == expected_summary
    files = {p: tree.pop(p) for p in list(tree) if not p.startswith("wandb/")}
    assert set(tree) == {"wandb/config.json", "wandb/summary.json", "wandb/history_nonnumeric.jsonl"}
    assert files == {
        **FILES,
        "output.log": CONSOLE_TEXT,
        **{f"mnist/v1/{p}": d for p, d in ARTIFACT_FILES.items()},
    }


async def test_wandb_runs_land_as_mlflow_runs(dest_server: MlflowServer, dest_client: MlflowClient, tmp_path: Path) -> None:
    events = Events()
    source = WandbShapedSource(context(100))
    config = dest_config(dest_server.url, experiment="wb-{entity}-{experiment}")
    async with MlflowDestination(config, context(100, events)) as dest:
        mapping = await copy_all(source, dest)  # type: ignore[arg-type]
    experiment = dest_client.get_experiment_by_name("wb-team-proj")
    assert experiment is not None
    for index, ref in enumerate(source.refs()):
        assert_wandb_run(dest_client, dest_server.url, mapping[ref.id], index, tmp_path / str(index))
        run_events = [(n, f) for n, f in events.seen if f.get("run") == ref.id]
        skipped = sorted((f["key"], f["reason"]) for n, f in run_events if n == "param_skipped")
        assert skipped == sorted([("huge", "value_too_long"), (LONG_KEY, "key_too_long")])
        assert [(f["key"], f["mlflow_key"]) for n, f in run_events if n == "param_renamed"] == [("bad key(1)", "bad key_1_")]
        assert [(f["key"], f["mlflow_key"]) for n, f in run_events if n == "metric_renamed"] == [("bad@key", "bad_key")]
        to_side = sum(f["n"] for n, f in run_events if n == "points_to_artifact")
        assert to_side == len(expected_side_lines(index))

    async with MlflowDestination(config, context(100)) as dest:  # again: found by tag, nothing doubled
        again = await copy_all(source, dest)  # type: ignore[arg-type]
    assert again == mapping
    assert_wandb_run(dest_client, dest_server.url, mapping[source.refs()[0].id], 0, tmp_path / "again")


@pytest.mark.parametrize("server_dedupes", [True, False], ids=["sql-store-drops-repeats", "writer-filters-repeats"])
async def test_wandb_resume_after_crash_stores_nothing_twice(
    server_dedupes: bool, dest_server: MlflowServer, dest_client: MlflowClient, tmp_path: Path
) -> None:
    source = WandbShapedSource(context(100))
    config = dest_config(dest_server.url, experiment=f"wb-resume-{server_dedupes}-{{experiment}}")
    ref = source.refs()[1]
    async with MlflowDestination(config, context(100)) as dest:
        record = await source.get_run(ref)
        # "crash": the fourth chunk is stored, its checkpoint never recorded
        writer, checkpoints = await copy_run(source, record, dest, stop_after_chunks=4)
    recorded = checkpoints[2]
    assert recorded.history_points == 300
    parts = "wandb/history_nonnumeric.parts"
    stored_parts = [f.path for f in dest_client.list_artifacts(writer.dest_id, parts)]
    assert stored_parts == [f"{parts}/{start:012d}-{start + 100:012d}.jsonl" for start in (0, 100, 200, 300)]

    source.context = context(70)  # the replay is cut differently
    async with MlflowDestination(config, context(70)) as dest:
        dest.server_dedupes = server_dedupes
        record = await source.get_run(ref)
        resumed = await dest.open_run(record, recorded)
        assert resumed.dest_id == writer.dest_id
        kept = [f.path for f in dest_client.list_artifacts(writer.dest_id, parts)]
        assert kept == stored_parts[:3]  # the part of the chunk never counted durable is gone
        async with contextlib.aclosing(source.iter_history(record, 300)) as chunks:
            async for chunk in chunks:
                await resumed.write_history(chunk)
        await resumed.flush_history()
        replayed = [r for r in history_of(1)[300:370] if r[3] is not None and r[0] != LONG_KEY]
        assert resumed.replayed_points_skipped == (0 if server_dedupes else len(replayed))
        async with contextlib.aclosing(source.list_files(record)) as listing:
            async for file in listing:
                async with contextlib.aclosing(source.read_file(record, file)) as data:
                    await resumed.write_file(file, data)
        await resumed.finish(record)
        await resumed.aclose()

        # a crash after the history was joined, while its parts were being deleted: flushing
        # again keeps the joined file as it is and deletes the leftover part
        total = record.history_points
        assert total is not None
        late = await dest.open_run(record, resumed.checkpoint())
        assert late.checkpoint().history_points == total
        await late.side.put(f"{parts}/{70:012d}-{140:012d}.jsonl", b'{"leftover": true}\n')
        await late.flush_history()
        assert dest_client.list_artifacts(writer.dest_id, parts) == []
        await late.finish(record)
    assert_wandb_run(dest_client, dest_server.url, writer.dest_id, 1, tmp_path)


async def test_summary_numbers_wait_for_known_history_keys(dest_server: MlflowServer, dest_client: MlflowClient) -> None:
    """Without ``metric_keys`` a writer that resumed mid-history cannot tell which summary keys
    were logged: it writes no summary metric (reported) rather than a wrong extra point; one
    that saw the whole history can."""
    events = Events()
    source = WandbShapedSource(context(100), metric_keys_known=False)
    config = dest_config(dest_server.url, experiment="wb-unknown-keys-{experiment}")
    ref = source.refs()[0]
    async with MlflowDestination(config, context(100, events)) as dest:
        record: RunRecord = await source.get_run(ref)
        first, checkpoints = await copy_run(source, record, dest, stop_after_chunks=1)
        await copy_run(source, record, dest, resume=checkpoints[-1], files=False)
        # a writer that saw the whole history knows the logged keys without being told
        whole, _ = await copy_run(source, await source.get_run(source.refs()[1]), dest, files=False)
    assert [(m.step, m.value) for m in dest_client.get_metric_history(whole.dest_id, "best_acc")] == [(STEPS - 1, 0.95)]
    assert len(dest_client.get_metric_history(whole.dest_id, "acc")) == STEPS  # logged: no extra point
    assert "best_acc" not in dest_client.get_run(first.dest_id).data.metrics
    assert events.named("summary_metrics_skipped") == [{"run": ref.id, "n": 5, "reason": "history keys unknown after resume"}]
    assert len(dest_client.get_metric_history(first.dest_id, "bad_key")) == STEPS


@pytest.mark.parametrize(
    "name",
    ["loss", "train/loss", "a b:c-d.e_f", "acc@1", "loss (val)", "a//b", "/lead", "trail/", "./x", "a/../b",
     "..", "...x", "", "é/ü", "a\\b", "tab\there"],
)  # fmt: skip
def test_mapped_names_are_accepted_by_mlflow(name: str) -> None:
    mapped = mlflow_name(name)
    _validate_metric_name(mapped)  # MLflow's own server-side check raises on a refused name
    try:
        _validate_metric_name(name)
    except Exception:
        assert mapped != name
    else:
        assert mapped == name  # names MLflow accepts are kept as they are


@pytest.mark.parametrize(
    ("spans", "total", "tiled"),
    [
        ([], 0, True),
        ([(0, 100), (100, 170)], 170, True),
        ([(0, 100), (100, 170)], 200, False),  # the last chunk's part is missing
        ([(100, 170)], 170, False),  # the first is missing
        ([(0, 100), (170, 240)], 240, False),  # a hole
        ([(0, 100), (70, 140)], 140, False),  # overlapping: a stale part
    ],
)
def test_parts_must_tile_the_history_before_they_are_joined(spans: list[tuple[int, int]], total: int, tiled: bool) -> None:
    assert covers(spans, total) is tiled
    assert [part_span(part_name(*span)) for span in spans] == spans
