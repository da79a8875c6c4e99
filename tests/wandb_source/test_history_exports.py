"""The parquet history path: rows a server exported are read from its parquet files, the rows
after them from ``HistoryPage``, and the points are the ones the JSON pages give."""

from __future__ import annotations

import json
import math
import random

import aiohttp
import pytest

from adapters.wandb._page_points import loads
from core.model import RunRef
from tests.servers.wandb import start_wandb_server
from tests.wandb_server.wire import file_stream, upsert_run
from tests.wandb_source.conftest import KEY_ENV, collect, make_source

PROJECT = "exports"


def _row(rng: random.Random, step: int) -> dict:
    row = {"_step": step, "_timestamp": 1.7e9 + step * 0.25 + rng.random() / 7, "_runtime": step * 0.25,
           "loss": rng.choice([rng.random(), -0.0, math.nan, math.inf, -math.inf, 1e-310]),
           "epoch": step // 7, "flag": step % 3 == 0, "phase": rng.choice(["train", "eval", "ünï"]),
           "mixed": step if step % 4 else "four", "huge": 2**62 + step}
    if step % 5 == 0:
        row["image"] = {"_type": "image-file", "path": f"media/images/i_{step}.png", "size": step, "width": 8}
    if step % 6 == 0:
        row["hist"] = {"_type": "histogram", "values": [1, 2, step], "bins": [0.0, 0.5, 1.0, 1.5]}
    if step % 2:
        row["sparse"] = rng.random()
        row["tags"] = ["a", step]
    return row


async def _write(server, run: str, rows: list[dict], offset: int) -> None:
    async with aiohttp.ClientSession() as session:
        lines = [json.dumps(r) for r in rows]  # NaN/Infinity as the SDK writes them
        status, _, _ = await file_stream(session, server, run, {"files": {"wandb-history.jsonl": {
            "offset": offset, "content": lines}}}, project=PROJECT)
        assert status == 200


@pytest.fixture(scope="module")
def exported_server():
    """One run exported after 2,500 rows (in steps with gaps, two files) plus 700 live rows,
    one run exported whole, one run never exported."""
    import anyio

    rng = random.Random(11)
    steps = sorted(rng.sample(range(9000), 3200))
    rows = [_row(rng, s) for s in steps]
    with start_wandb_server() as server:
        async def seed() -> None:
            async with aiohttp.ClientSession() as session:
                for run in ("partly", "whole", "never"):
                    await upsert_run(session, server, run, project=PROJECT)
            await _write(server, "partly", rows[:1200], 0)
            server.export_history(server.entity, PROJECT, "partly")
            await _write(server, "partly", rows[1200:2500], 1200)
            server.export_history(server.entity, PROJECT, "partly")  # one file covers both
            await _write(server, "partly", rows[2500:], 2500)
            await _write(server, "whole", rows[:2000], 0)
            server.export_history(server.entity, PROJECT, "whole")
            await _write(server, "never", rows[:2000], 0)

        anyio.run(seed)
        yield server


async def _points(server, run: str, *, exports: bool, chunk_points: int = 997, start: int = 0) -> list[tuple]:
    async with make_source(server, namespaces=[f"{server.entity}/{PROJECT}"], chunk_points=chunk_points,
                           history_exports=exports, include_system_metrics=False) as source:
        refs = [r for r in await collect(source.list_runs()) if r.run_id == run]
        record = await source.get_run(refs[0])
        chunks = await collect(source.iter_history(record, start))
    assert [c.offset for c in chunks] == [start + i * chunk_points for i in range(len(chunks))]
    return [tuple(p.values()) for c in chunks for p in c.batch.to_pylist()]


def _comparable(points: list[tuple]) -> list[tuple]:
    """NaN compared as text, -0.0 kept apart from 0.0."""
    def value(v):
        return repr(v) if isinstance(v, float) else v
    return [tuple(value(v) for v in p) for p in points]


@pytest.mark.parametrize("run", ["partly", "whole", "never"])
async def test_exports_give_the_points_json_pages_give(exported_server, monkeypatch, run) -> None:
    monkeypatch.setenv(KEY_ENV, exported_server.api_key)
    log = exported_server.state.request_log
    before = len(log)
    from_exports = await _points(exported_server, run, exports=True)
    asked = [name for _, name in log[before:]]
    from_pages = await _points(exported_server, run, exports=False)
    assert len(from_pages) > 10_000
    assert _comparable(from_exports) == _comparable(from_pages)
    pages = asked.count("HistoryPage")
    if run == "whole":
        assert pages <= 1  # nothing live: at most one empty window after the export
    elif run == "partly":
        assert 0 < pages < 4  # only the live tail
    assert ("RunParquetHistory" in asked) and (run == "never" or pages < 4)


async def test_resume_inside_the_export_and_inside_the_tail(exported_server, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, exported_server.api_key)
    whole = await _points(exported_server, "partly", exports=True, chunk_points=5000)
    for start in (1, 4999, 12_345, len(whole) - 3):
        tail = await _points(exported_server, "partly", exports=True, chunk_points=5000, start=start)
        assert _comparable(tail) == _comparable(whole[start:])


async def test_types_survive_the_export(exported_server, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, exported_server.api_key)
    points = await _points(exported_server, "whole", exports=True)
    by_key = {}
    for key, step, _ts, value, text in points:
        by_key.setdefault(key, (value, text, step))
    assert by_key["epoch"][1] == str(by_key["epoch"][2] // 7) and by_key["huge"][1] == str(2**62 + by_key["huge"][2])
    assert by_key["flag"][:2] in ((None, "true"), (None, "false"))
    assert loads(by_key["image"][1])["path"] == f"media/images/i_{by_key['image'][2]}.png"
    assert loads(by_key["tags"][1]) == ["a", by_key["tags"][2]]


async def test_exports_ride_out_storage_and_graphql_faults(exported_server, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, exported_server.api_key)
    clean = await _points(exported_server, "partly", exports=True)
    faults = exported_server.faults
    faults.script("storage", [503, "drop", 500, 429])
    faults.script("graphql", ["drop", 503])
    try:
        faulted = await _points(exported_server, "partly", exports=True)
        assert faults.injected  # the faults happened
    finally:
        faults.reset()
    assert _comparable(faulted) == _comparable(clean)


async def test_a_server_without_parquet_history_is_read_as_json(exported_server, monkeypatch) -> None:
    """An older server refuses the query (GraphQL validation: 400): the source reads JSON
    pages, asks only once per source, and gives the same points."""
    monkeypatch.setenv(KEY_ENV, exported_server.api_key)
    log = exported_server.state.request_log
    points = {}
    async with make_source(exported_server, namespaces=[f"{exported_server.entity}/{PROJECT}"], chunk_points=997,
                           include_system_metrics=False) as source:
        records = [await source.get_run(ref) for ref in await collect(source.list_runs())]
        before = len(log)
        exported_server.faults.script("graphql", [400])  # the next question: RunParquetHistory
        try:
            for record in records:
                points[record.ref.run_id] = [tuple(p.values()) for c in await collect(source.iter_history(record))
                                             for p in c.batch.to_pylist()]
            refused = sum(exported_server.faults.injected.values())
        finally:
            exported_server.faults.reset()
    asked = [name for _, name in log[before:]]  # the refused question is not in the log
    assert refused == 1 and "RunParquetHistory" not in asked and asked.count("HistoryPage") >= 9
    for run in ("partly", "whole", "never"):
        assert _comparable(points[run]) == _comparable(await _points(exported_server, run, exports=False))
