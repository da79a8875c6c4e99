"""The W&B source never writes, rides out server faults with exact results, and migrates to a
local export (``python -m engine migrate``) that reads back equal to ``wandb.Api()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.protocols import AdapterContext
from adapters.local import LocalSource
from ratelimit import ControlConfig, LimiterRegistry
from tests.wandb_source.conftest import ENTITY, KEY_ENV, OTHER_ENTITY, collect, make_source
from tests.wandb_source.oracle import dump, read_run, rows_from_points, sdk_view

RICH = f"{ENTITY}/alpha/rich"
QUERIES = {"Viewer", "GetProjects", "Project", "Runs", "Run", "HistoryPage", "RunEvents", "RunFiles",
           "RunConsoleLogPage", "RunOutputArtifacts", "RunInputArtifacts", "RunExists", "FetchArtifactManifest",
           "ArtifactMembershipFiles", "RunParquetHistory"}


def fast_limiters() -> LimiterRegistry:
    return LimiterRegistry(default=ControlConfig(min_rate=200.0, backoff_base=0.01, backoff_cap=0.1))


def snapshot(state) -> str:
    """Everything the server stores about runs and blobs, as text."""
    with state.lock:
        runs = {
            "/".join(k): [r.history, r.events, r.logs, r.summary, r.config, r.tags, r.state, r.notes,
                          str(r.heartbeat_at), sorted((f.name, f.blob_key, f.uploaded) for f in r.files.values())]
            for k, r in sorted(state.runs.items())
        }
        return json.dumps([runs, sorted(state.blobs), sorted(state.artifacts), sorted(state.projects)],
                          default=str, allow_nan=True)


async def read_everything(server, **kwargs) -> dict:
    async with make_source(server, namespaces=["*/*"], chunk_points=5, **kwargs) as source:
        return {ref.id: await read_run(source, ref) for ref in await collect(source.list_runs())}


def comparable(runs: dict) -> dict:
    return {k: (dump(v["points"]), v["files"], dump(v["record"].config), dump(v["record"].summary))
            for k, v in runs.items()}


async def test_a_full_read_sends_only_queries(sdk_dataset, key_env):
    state = sdk_dataset.state
    before, log_start = snapshot(state), len(state.request_log)
    await read_everything(sdk_dataset)
    sent = state.request_log[log_start:]
    assert {kind for kind, _ in sent} == {"graphql"}
    assert {name for _, name in sent} <= QUERIES
    assert {"Runs", "HistoryPage", "RunEvents", "RunFiles"} <= {name for _, name in sent}
    assert all(state.documents[name].lstrip().startswith("query ") for _, name in sent)
    assert snapshot(state) == before


async def test_faults_are_ridden_out_with_exact_results(sdk_dataset, key_env):
    clean = comparable(await read_everything(sdk_dataset))
    faults = sdk_dataset.faults
    try:
        faults.script("graphql", [429, 500, "drop", 503, 502, 429, "drop", 500])
        faults.script("files", [500, "drop", 503])
        faults.latency_s = 0.01
        faulty = comparable(await read_everything(sdk_dataset, limiters=fast_limiters()))
        injected = dict(faults.injected)
    finally:
        faults.reset()
    assert faulty == clean
    assert injected, "no fault was injected"


async def test_reading_from_a_resume_point_continues_the_same_sequence(sdk_dataset, key_env):
    async with make_source(sdk_dataset, namespaces=[f"{ENTITY}/alpha"], chunk_points=6) as source:
        ref = next(r for r in await collect(source.list_runs()) if r.id == RICH)
        record = await source.get_run(ref)
        whole = [p for c in await collect(source.iter_history(record)) for p in c.batch.to_pylist()]
        chunks = await collect(source.iter_history(record, 17))
    assert chunks[0].offset == 17
    assert dump([p for c in chunks for p in c.batch.to_pylist()]) == dump(whole[17:])


def test_migrate_to_local_reads_back_equal_to_the_sdk(sdk_dataset, public_api, tmp_path):
    export = tmp_path / "export"
    config = tmp_path / "wandb_to_local.toml"
    config.write_text(
        "[source]\n"
        'type = "wandb"\n'
        f'base_url = "{sdk_dataset.base_url}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        f'namespaces = ["{ENTITY}/alpha", "{OTHER_ENTITY}/*"]\n'
        "[destination]\n"
        'type = "local"\n'
        f'path = "{export}"\n'
        "[transfer]\n"
        f'ledger = "{tmp_path / "ledger.jsonl"}"\n'
        "chunk_points = 10\n"
    )
    done = subprocess.run([sys.executable, "-m", "engine", "migrate", str(config)], capture_output=True, text=True,
                          env={**os.environ, KEY_ENV: sdk_dataset.api_key}, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    import anyio

    async def read_back() -> dict:
        async with LocalSource(LocalSource.Config(path=str(export)), AdapterContext()) as local:
            return {ref.id: await read_run(local, ref) for ref in await collect(local.list_runs())}

    copied = anyio.run(read_back)
    by_path = {f"{v['record'].system['entity']}/{v['record'].system['project']}/{v['record'].system['run_id']}": v
               for v in copied.values()}
    assert sorted(by_path) == sorted([RICH, f"{ENTITY}/alpha/failed", f"{ENTITY}/alpha/resumed",
                                      f"{OTHER_ENTITY}/gamma/other"])
    for path, mine in by_path.items():
        view = sdk_view(public_api, path)
        rows, system = rows_from_points(mine["points"])
        assert [dump(r) for r in rows] == [dump(r) for r in view["rows"]], path
        assert [dump(s) for s in system] == [dump(s) for s in view["system"] if len(s) > 1], path
        record = mine["record"]
        assert dump(record.config) == dump(view["config"]) and dump(record.summary) == dump(view["summary"])
        assert (record.labels, record.state.value, record.start_time) == (view["tags"], view["state"], view["created"])
        assert mine["files"] == view["files"], path


@pytest.mark.parametrize("include", ["include_files", "include_console", "include_system_metrics"])
async def test_include_toggles(sdk_dataset, key_env, include):
    async with make_source(sdk_dataset, namespaces=[f"{ENTITY}/alpha"], **{include: False}) as source:
        ref = next(r for r in await collect(source.list_runs()) if r.id == RICH)
        got = await read_run(source, ref)
    names = set(got["files"])
    keys = {p["key"] for p in got["points"]}
    if include == "include_files":
        assert names == {"output.log"}
    elif include == "include_console":
        assert "output.log" not in names and "notes.txt" in names
    else:
        assert not any(k.startswith("system/") for k in keys) and "loss" in keys


async def test_console_log_rebuilt_from_log_lines_when_the_run_has_no_output_log(sdk_dataset, key_env):
    """A crashed run may have streamed log lines but never uploaded ``output.log``: the source
    rebuilds it from ``logLines`` in the SDK's line format."""
    from tests.servers.wandb._state import Run, node_id

    state = sdk_dataset.state
    entity, project, name = ENTITY, "crashed", "c1"
    lines = ["2026-01-02T03:04:05.000001 hello", "ERROR 2026-01-02T03:04:06.5 [rank0] boom", "no time at all"]
    with state.lock:
        run = Run(entity=entity, project=project, name=name, storage_id=node_id("Run", name, project, entity),
                  seq=state.next_seq(), created_at=state.clock(), heartbeat_at=state.clock(), state="crashed",
                  logs=list(lines))
        state.runs[(entity, project, name)] = run
        state.runs_by_id[run.storage_id] = run
        state.projects.add((entity, project))
    try:
        async with make_source(sdk_dataset, namespaces=[f"{entity}/{project}"]) as source:
            (ref,) = await collect(source.list_runs())
            got = await read_run(source, ref)
        assert got["record"].state.value == "crashed"
        assert list(got["files"]) == ["output.log"] and got["refs"]["output.log"].role == "console"
        assert got["files"]["output.log"] == ("\n".join(lines) + "\n").encode()
    finally:
        with state.lock:
            state.runs.pop((entity, project, name))
            state.runs_by_id.pop(run.storage_id)
            state.projects.discard((entity, project))
