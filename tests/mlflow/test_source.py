"""The MLflow source alone: selection, paging, filters, record mapping, history order and
resume offsets, the artifact walk."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from adapters.mlflow import MlflowSource
from core.errors import ConfigError
from core.model import RunState
from tests.adapters.contract import (
    all_files,
    all_refs,
    assert_history_equal,
    read_bytes,
    read_history,
)
from tests.mlflow.fault_proxy import FaultProxy
from tests.mlflow.helpers import context, source_config
from tests.mlflow.seed import ARTIFACT_FILES, EDGE_POINTS, T0, Seeded
from tests.servers.mlflow_server import MlflowServer


async def test_runs_of_every_page_in_start_order(source_server: MlflowServer, seeded: Seeded) -> None:
    cfg = source_config(source_server.url, experiments=[seeded.many_name], page_size=5)
    async with MlflowSource(cfg, context()) as source:
        refs = await all_refs(source)
    assert [r.id for r in refs] == seeded.many_runs  # 23 runs over 5 pages, oldest first
    assert [r.name for r in refs] == [f"r{i:02d}" for i in range(23)]
    assert {str(r.namespace) for r in refs} == {seeded.many_name}


async def test_filter_is_pushed_down_and_deleted_runs_skipped(source_server: MlflowServer, seeded: Seeded) -> None:
    cfg = source_config(source_server.url, experiments=[seeded.many_name], filter="params.i = '7'")
    async with MlflowSource(cfg, context()) as source:
        assert [r.id for r in await all_refs(source)] == [seeded.many_runs[7]]
    async with MlflowSource(source_config(source_server.url, experiments=[seeded.edge_name]), context()) as source:
        active = {r.id for r in await all_refs(source)}
    assert seeded.runs["deleted"] not in active and seeded.runs["edge"] in active
    cfg = source_config(source_server.url, experiments=[seeded.edge_name], include_deleted=True)
    async with MlflowSource(cfg, context()) as source:
        assert seeded.runs["deleted"] in {r.id for r in await all_refs(source)}


async def test_experiments_by_id_name_and_glob(source_server: MlflowServer, seeded: Seeded) -> None:
    cfg = source_config(source_server.url, experiments=[seeded.many_experiment, f"edge-*{seeded.suffix}"])
    async with MlflowSource(cfg, context()) as source:
        assert [e["name"] for e in source.experiments] == [seeded.many_name, seeded.edge_name]
    with pytest.raises(ConfigError, match="no-such-experiment"):
        async with MlflowSource(source_config(source_server.url, experiments=["no-such-experiment"]), context()):
            pass


async def test_record_mapping(source_server: MlflowServer, seeded: Seeded) -> None:
    cfg = source_config(source_server.url, experiments=[seeded.edge_name], include_deleted=True)
    async with MlflowSource(cfg, context()) as source:
        refs = {r.id: r for r in await all_refs(source)}
        edge = await source.get_run(refs[seeded.runs["edge"]])
        child = await source.get_run(refs[seeded.runs["child"]])
        running = await source.get_run(refs[seeded.runs["running"]])
        deleted = await source.get_run(refs[seeded.runs["deleted"]])
    assert edge.display_name == "edge run ✓"
    assert edge.state is RunState.FAILED
    assert edge.start_time == T0 / 1000 and edge.end_time == (T0 + 99_999) / 1000
    assert edge.user == "alice"
    assert edge.notes == "a note\nwith two lines"
    assert edge.git_commit == "0123456789abcdef0123456789abcdef01234567"
    assert edge.program == "train.py"
    assert len(edge.config) == 152 and edge.config["p007"] == "value-7" and edge.config["long"] == "x" * 5000
    assert edge.tags["team"] == "vision" and edge.tags["mlflow.source.type"] == "LOCAL"
    assert edge.summary["acc"] == 2.499 and edge.summary["loss"] == 1 / 300
    assert edge.inputs[0]["dataset"]["name"] == "train-set"
    assert edge.inputs[0]["tags"] == [{"key": "mlflow.data.context", "value": "training"}]
    assert child.parent_id == seeded.runs["parent"]
    assert running.state is RunState.RUNNING and running.end_time is None
    assert deleted.system["lifecycle_stage"] == "deleted"


@pytest.mark.parametrize("bulk", [True, False], ids=["get-history-bulk", "get-history-paged"])
async def test_history_order_values_and_resume_offsets(source_server: MlflowServer, seeded: Seeded, bulk: bool) -> None:
    cfg = source_config(
        source_server.url, experiments=[seeded.edge_name], history_page_size=333, key_concurrency=2, bulk_history=bulk
    )
    async with MlflowSource(cfg, context(chunk_points=700)) as source:
        ref = next(r for r in await all_refs(source) if r.id == seeded.runs["edge"])
        record = await source.get_run(ref)
        full, offsets = await read_history(source, record)
        assert offsets == list(range(0, full.num_rows, 700))
        for start in (1, 699, 700, 2500, 2501, full.num_rows - 1, full.num_rows):
            tail, _ = await read_history(source, record, start)
            assert_history_equal(tail, full.slice(start))
        again, _ = await read_history(source, record)
    assert_history_equal(again, full)  # the same order every time
    keys = full.column("key").to_pylist()
    assert keys == ["acc"] * 2500 + ["edge"] * len(EDGE_POINTS) + ["loss"] * 300
    edge = full.filter(pa.compute.equal(full.column("key"), "edge"))
    got = sorted(
        zip(edge.column("step").to_pylist(), edge.column("timestamp").to_pylist(), edge.column("value").to_pylist()),
        key=lambda p: (p[0], p[1], repr(p[2])),
    )
    nan = [p for p in got if math.isnan(p[2])]
    assert [(s, t) for s, t, _ in nan] == [(0, (T0 + 1) / 1000)]
    # The SQL store keeps +-inf as +-max float; values are copied exactly as stored
    assert (1, (T0 + 2) / 1000, 1.7976931348623157e308) in got
    assert (1, (T0 + 3) / 1000, -1.7976931348623157e308) in got
    assert (9_000_000_000, (T0 + 7) / 1000, 7.25) in got
    assert all(full.column("value_json").null_count == full.num_rows for _ in [0])


async def test_artifact_walk_and_bytes(source_server: MlflowServer, seeded: Seeded) -> None:
    cfg = source_config(source_server.url, experiments=[seeded.edge_name])
    async with MlflowSource(cfg, context()) as source:
        ref = next(r for r in await all_refs(source) if r.id == seeded.runs["edge"])
        record = await source.get_run(ref)
        files = await all_files(source, record)
        assert sorted(f.path for f in files) == sorted(ARTIFACT_FILES)
        assert {f.path: f.size for f in files} == {k: len(v) for k, v in ARTIFACT_FILES.items()}
        for file in files:
            assert await read_bytes(source, record, file) == ARTIFACT_FILES[file.path]
    async with MlflowSource(source_config(source_server.url, experiments=[seeded.edge_name], artifacts=False), context()) as source:
        assert await all_files(source, record) == []


async def test_a_proxied_root_is_walked_through_the_artifact_proxy(source_server: MlflowServer, seeded: Seeded) -> None:
    """A ``mlflow-artifacts:`` root is listed through the server's artifact proxy (no database
    lookup per call, unlike ``artifacts/list``): the same tree, nested and oddly named entries
    included, and ``artifacts/list`` never asked."""
    proxy = FaultProxy(source_server.url).start()
    try:
        async with MlflowSource(source_config(proxy.url, experiments=[seeded.edge_name]), context()) as source:
            ref = next(r for r in await all_refs(source) if r.id == seeded.runs["edge"])
            record = await source.get_run(ref)
            assert str(record.system["artifact_uri"]).startswith("mlflow-artifacts:/")
            files = await all_files(source, record)
            assert proxy.count("/api/2.0/mlflow-artifacts/artifacts") > 1 and proxy.count("artifacts/list") == 0
            walked, folders = [], [""]  # the same walk through artifacts/list, as a root outside the proxy takes
            while folders:
                for entry in await source.rest.list_artifacts(ref.id, folders.pop()):
                    if entry.get("is_dir"):
                        folders.append(entry["path"])
                    else:
                        walked.append((entry["path"], int(entry.get("file_size", 0))))
    finally:
        proxy.stop()
    assert proxy.count("artifacts/list") > 1
    assert sorted((f.path, f.size) for f in files) == sorted(walked) == sorted((k, len(v)) for k, v in ARTIFACT_FILES.items())
