"""MLflow -> MLflow through the adapters (no engine), compared with the official client."""

from __future__ import annotations

import math
from pathlib import Path

from mlflow.tracking import MlflowClient

from adapters.mlflow import MlflowDestination, MlflowSource
from tests.mlflow.helpers import (
    Events,
    artifact_tree,
    assert_same_run,
    context,
    copy_all,
    dest_config,
    dest_run_for,
    history,
    source_config,
)
from tests.mlflow.seed import ARTIFACT_FILES, EDGE_POINTS, T0, Seeded
from tests.servers.mlflow_server import MlflowServer


async def test_edge_cases_round_trip(
    source_server: MlflowServer,
    dest_server: MlflowServer,
    seeded: Seeded,
    source_client: MlflowClient,
    dest_client: MlflowClient,
    tmp_path: Path,
) -> None:
    events = Events()
    src = MlflowSource(source_config(source_server.url, experiments=[seeded.edge_name], include_deleted=True), context(700, events))
    dst = MlflowDestination(dest_config(dest_server.url, experiment="rt-{experiment}"), context(700, events))
    async with src, dst:
        mapping = await copy_all(src, dst)
    assert set(mapping) == set(seeded.runs.values())
    for src_id, dst_id in mapping.items():
        assert_same_run(source_client, dest_client, src_id, dst_id, parent_map=mapping)

    edge_dst = mapping[seeded.runs["edge"]]
    run = dest_client.get_run(edge_dst)
    assert len(run.data.params) == 152
    assert run.info.status == "FAILED" and run.info.start_time == T0 and run.info.end_time == T0 + 99_999
    got = dest_client.get_metric_history(edge_dst, "edge")
    assert len(got) == len(EDGE_POINTS)
    nan_points = [p for p in got if math.isnan(p.value)]
    assert [(p.step, p.timestamp) for p in nan_points] == [(0, T0 + 1)]
    assert sorted((p.step, p.timestamp, p.value) for p in got if p.step in (3, 4)) == [
        (3, T0 + 5, 2.0), (3, T0 + 5, 2.5), (4, T0 + 6, 3.0), (4, T0 + 7, 3.0)
    ]
    assert len(history(dest_client, edge_dst, "acc")) == 2500
    # nested: the child was copied before its parent and points at the parent's new id
    child = dest_client.get_run(mapping[seeded.runs["child"]])
    assert child.data.tags["mlflow.parentRunId"] == mapping[seeded.runs["parent"]]
    assert "runferry.pending_parent" not in child.data.tags
    # deleted stays deleted, running stays running without an end time
    assert dest_client.get_run(mapping[seeded.runs["deleted"]]).info.lifecycle_stage == "deleted"
    running = dest_client.get_run(mapping[seeded.runs["running"]])
    assert running.info.status == "RUNNING" and running.info.end_time is None
    # artifacts, byte for byte
    assert artifact_tree(dest_server.url, edge_dst, tmp_path / "d") == ARTIFACT_FILES
    assert artifact_tree(source_server.url, seeded.runs["edge"], tmp_path / "s") == ARTIFACT_FILES
    assert events.named("value_truncated") == [] and events.named("key_dropped") == []


async def test_rerun_is_idempotent(
    source_server: MlflowServer, dest_server: MlflowServer, seeded: Seeded, dest_client: MlflowClient
) -> None:
    cfg_src = source_config(source_server.url, experiments=[seeded.edge_name], include_deleted=True)
    cfg_dst = dest_config(dest_server.url, experiment="idem-{experiment}")
    first = second = None
    for attempt in range(2):
        async with MlflowSource(cfg_src, context()) as src, MlflowDestination(cfg_dst, context()) as dst:
            mapping = await copy_all(src, dst, files=False)
        if attempt == 0:
            first = mapping
        else:
            second = mapping
    assert first == second
    for src_id in seeded.runs.values():
        found = dest_run_for(dest_client, f"idem-{seeded.edge_name}", src_id)
        assert len(found) == 1
    edge_dst = first[seeded.runs["edge"]]
    assert len(dest_client.get_metric_history(edge_dst, "acc")) == 2500
    assert len(dest_client.get_metric_history(edge_dst, "edge")) == len(EDGE_POINTS)


async def test_multipart_falls_back_to_one_put_when_the_store_lacks_it(
    source_server: MlflowServer, dest_server: MlflowServer, seeded: Seeded, tmp_path: Path
) -> None:
    """A local artifact store answers mpu/create with 501 NOT_IMPLEMENTED: the file goes in one
    streamed PUT, and later large files skip the multipart attempt."""
    only_edge = f"attributes.run_id = '{seeded.runs['edge']}'"
    cfg_src = source_config(source_server.url, experiments=[seeded.edge_name], filter=only_edge)
    cfg_dst = dest_config(dest_server.url, experiment="mpu-{experiment}", multipart_threshold=1 << 20)
    async with MlflowSource(cfg_src, context()) as src, MlflowDestination(cfg_dst, context()) as dst:
        assert dst.multipart_supported is False  # server-info: multipart_uploads_enabled false
        dst.multipart_supported = None  # as with a server without server-info: try, then fall back
        mapping = await copy_all(src, dst)
        assert dst.multipart_supported is False
    assert list(mapping) == [seeded.runs["edge"]]
    assert artifact_tree(dest_server.url, mapping[seeded.runs["edge"]], tmp_path / "d") == ARTIFACT_FILES
