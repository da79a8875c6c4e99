"""The W&B source reads exactly what ``wandb.Api()`` reads of runs the official SDK wrote."""

from __future__ import annotations

import hashlib
import math

import pytest

from core.model import CONSOLE_LOG, RunState
from tests.wandb_source.conftest import ENTITY, OTHER_ENTITY, collect, make_source
from tests.wandb_source.oracle import dump, read_run, record_view, rows_from_points, sdk_view

RUNS = [f"{ENTITY}/alpha/rich", f"{ENTITY}/alpha/failed", f"{ENTITY}/alpha/resumed",
        *(f"{ENTITY}/beta/grid{i:02d}" for i in range(6)), f"{OTHER_ENTITY}/gamma/other"]


@pytest.fixture(scope="module")
def everything(sdk_dataset):
    import anyio
    import os

    from tests.wandb_source.conftest import KEY_ENV

    os.environ[KEY_ENV] = sdk_dataset.api_key

    async def read() -> dict:
        async with make_source(sdk_dataset, namespaces=["*/*"], chunk_points=7) as source:
            refs = await collect(source.list_runs())
            return {ref.id: await read_run(source, ref) for ref in refs}

    try:
        return anyio.run(read)
    finally:
        os.environ.pop(KEY_ENV, None)


def test_every_run_of_every_visible_project_once_in_order(everything):
    assert list(everything) == RUNS


@pytest.mark.parametrize("path", RUNS)
def test_history_rows_equal_scan_history_bit_for_bit(everything, public_api, path):
    rows, _ = rows_from_points(everything[path]["points"])
    expected = sdk_view(public_api, path)["rows"]
    assert [dump(r) for r in rows] == [dump(r) for r in expected]
    assert all(type(a["_timestamp"]) is float and a["_timestamp"] == b["_timestamp"] for a, b in zip(rows, expected))


def test_value_conventions(everything):
    points = everything[f"{ENTITY}/alpha/rich"]["points"]
    by = {(p["key"], p["step"]): p for p in points}
    big = by[("big", 0)]
    assert big["value"] == float(2**53) and big["value_json"] == str(2**53)
    assert by[("big", 10)]["value_json"] == str(2**53 + 1)  # not representable as a float: exact text
    assert by[("label", 0)] == {**by[("label", 0)], "value": None, "value_json": '"s0"'}
    assert by[("flag", 0)]["value"] is None and by[("flag", 0)]["value_json"] == "true"
    assert by[("vec", 10)]["value_json"] == "[1,1.5,null]"
    assert math.isnan(by[("nan", 30)]["value"]) and by[("nan", 30)]["value_json"] is None
    assert by[("inf", 30)]["value"] == math.inf and by[("ninf", 30)]["value"] == -math.inf
    assert by[("loss", 10)]["value"] == 0.5 and by[("loss", 10)]["value_json"] is None
    assert '"_type":"histogram"' in by[("hist", 50)]["value_json"]
    assert '"_type":"image-file"' in by[("img", 50)]["value_json"]
    assert not any(p["key"] in ("_step", "_timestamp", "_runtime") for p in points)
    # rows in step order, keys sorted within a row, history before system metrics
    history = [p for p in points if not p["key"].startswith("system/")]
    assert [p["step"] for p in history] == sorted(p["step"] for p in history)
    for step in {p["step"] for p in history}:
        keys = [p["key"] for p in history if p["step"] == step]
        assert keys == sorted(keys)
    first_system = next(i for i, p in enumerate(points) if p["key"].startswith("system/"))
    assert all(p["key"].startswith("system/") for p in points[first_system:])


def test_chunks_are_contiguous_and_sized(everything):
    offsets = everything[f"{ENTITY}/alpha/rich"]["offsets"]
    assert offsets[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(offsets, offsets[1:]))
    assert all(n == 7 for _, n in offsets[:-1]) and 1 <= offsets[-1][1] <= 7


@pytest.mark.parametrize("path", RUNS)
def test_system_metrics_equal_the_events_stream(everything, public_api, path):
    _, system = rows_from_points(everything[path]["points"])
    expected = [line for line in sdk_view(public_api, path)["system"] if len(line) > 1]
    assert [dump(line) for line in system] == [dump(line) for line in expected]
    if path.endswith("/rich"):
        assert len(system) >= 2


@pytest.mark.parametrize("path", RUNS)
def test_run_metadata_equals_the_public_api(everything, public_api, path):
    record = everything[path]["record"]
    view = sdk_view(public_api, path)
    mine = record_view(record)
    for field in ("config", "summary", "tags", "notes", "group", "job_type", "state", "created", "name"):
        assert dump(mine[field]) == dump(view[field]), field
    assert record.source_system == "wandb"
    assert record.ref.run_id == path.rsplit("/", 1)[1] and record.ref.id == path
    assert (record.system["entity"], record.system["project"]) == tuple(path.split("/")[:2])
    assert record.system["run_id"] == record.ref.run_id


def test_rich_run_details(everything):
    record = everything[f"{ENTITY}/alpha/rich"]["record"]
    assert record.config["optim"] == {"name": "adam", "betas": [0.9, 0.999]}
    metric_defs = record.config["_wandb"]["m"]
    assert {"1": "epoch", "6": [3], "7": []} in metric_defs
    assert any(d.get("2") == "val/*" and d.get("5") == 1 for d in metric_defs)
    assert record.summary["best"] == 0.75 and record.summary["note"] == "set directly"
    assert record.labels == ["rich", "baseline"] and record.group == "g-rich" and record.job_type == "train"
    assert record.host and record.program.endswith("write_source_runs.py")
    assert record.end_time == record.start_time + record.summary["_wandb"]["runtime"]
    assert record.history_points == sum(1 for p in everything[f"{ENTITY}/alpha/rich"]["points"]
                                        if not p["key"].startswith("system/"))
    assert everything[f"{ENTITY}/alpha/failed"]["record"].state is RunState.FAILED
    resumed = everything[f"{ENTITY}/alpha/resumed"]["points"]
    assert [p["step"] for p in resumed if p["key"] == "x"] == list(range(9))


@pytest.mark.parametrize("path", RUNS)
def test_files_and_console_equal_the_public_api(everything, public_api, path):
    mine = everything[path]
    expected = sdk_view(public_api, path)["files"]
    assert mine["files"] == expected
    for name, data in mine["files"].items():
        ref = mine["refs"][name]
        assert ref.size == len(data) and ref.md5 == hashlib.md5(data).hexdigest()
        assert ref.role == (CONSOLE_LOG if name == "output.log" else None)
    if path.endswith("/rich"):
        assert {"output.log", "notes.txt", "wandb-metadata.json"} <= set(mine["files"])
        assert any(n.startswith("media/images/") for n in mine["files"])
        assert b"hello from the rich run" in mine["files"]["output.log"]
