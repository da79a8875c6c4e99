"""Crash and resume at the destination: replaying from the last checkpoint never stores a point
twice, and a checkpoint of another destination run is not trusted."""

from __future__ import annotations

import contextlib

import pytest
from mlflow.tracking import MlflowClient

from core.protocols import Checkpoint
from adapters.mlflow import MlflowDestination, MlflowSource
from tests.adapters.contract import all_refs
from tests.mlflow.helpers import (
    assert_same_run,
    context,
    dest_config,
    dest_run_for,
    history,
    source_config,
)
from tests.mlflow.seed import Seeded
from tests.servers.mlflow_server import MlflowServer


@pytest.mark.parametrize("server_dedupes", [True, False], ids=["sql-store-drops-repeats", "writer-filters-repeats"])
async def test_replay_after_crash_stores_no_duplicates(
    server_dedupes: bool,
    source_server: MlflowServer,
    dest_server: MlflowServer,
    seeded: Seeded,
    source_client: MlflowClient,
    dest_client: MlflowClient,
) -> None:
    src_cfg = source_config(source_server.url, experiments=[seeded.edge_name])
    dst_cfg = dest_config(dest_server.url, experiment=f"resume-{server_dedupes}-{{experiment}}")
    edge_id = seeded.runs["edge"]
    async with MlflowSource(src_cfg, context(700)) as source, MlflowDestination(dst_cfg, context(700)) as dest:
        ref = next(r for r in await all_refs(source) if r.id == edge_id)
        record = await source.get_run(ref)
        writer = await dest.open_run(record, None)
        checkpoints = []
        async with contextlib.aclosing(source.iter_history(record, 0)) as chunks:
            async for chunk in chunks:
                await writer.write_history(chunk)
                checkpoints.append(writer.checkpoint())
                if len(checkpoints) == 3:
                    break  # "crash": the third chunk is stored but its checkpoint never recorded
        await writer.aclose()
        recorded = checkpoints[1]
        assert recorded.history_points == 1400 and recorded.state == {"dest_run_id": writer.dest_id}
        stored = sum(len(dest_client.get_metric_history(writer.dest_id, k)) for k in ("acc", "edge", "loss"))
        assert stored == 2100

    async with MlflowSource(src_cfg, context(700)) as source, MlflowDestination(dst_cfg, context(700)) as dest:
        record = await source.get_run(ref)
        assert dest.server_dedupes is True  # server-info says SqlStore
        dest.server_dedupes = server_dedupes
        resumed = await dest.open_run(record, recorded)
        assert resumed.dest_id == writer.dest_id  # found by its source tag
        assert resumed.checkpoint().history_points == 1400
        async with contextlib.aclosing(source.iter_history(record, 1400)) as chunks:
            async for chunk in chunks:
                await resumed.write_history(chunk)
        await resumed.flush_history()
        assert resumed.replayed_points_skipped == (0 if server_dedupes else 700)
        await resumed.finish(record)
        await resumed.aclose()
        await dest.finalize()
    assert len(dest_run_for(dest_client, f"resume-{server_dedupes}-{seeded.edge_name}", edge_id)) == 1
    assert_same_run(source_client, dest_client, edge_id, writer.dest_id)
    assert len(history(dest_client, writer.dest_id, "acc")) == 2500


async def test_checkpoint_of_another_run_restarts_from_zero(
    source_server: MlflowServer, dest_server: MlflowServer, seeded: Seeded
) -> None:
    src_cfg = source_config(source_server.url, experiments=[seeded.many_name])
    dst_cfg = dest_config(dest_server.url, experiment="resume-other-{experiment}")
    async with MlflowSource(src_cfg, context()) as source, MlflowDestination(dst_cfg, context()) as dest:
        ref = (await all_refs(source))[0]
        record = await source.get_run(ref)
        first = await dest.open_run(record, None)
        await first.aclose()
        stale = Checkpoint(history_points=3, state={"dest_run_id": "0" * 32})
        again = await dest.open_run(record, stale)
        assert again.dest_id == first.dest_id
        assert again.checkpoint().history_points == 0
        await again.aclose()
