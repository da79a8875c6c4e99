"""The parquet history path: exported rows come from parquet, the live tail from GraphQL."""

from __future__ import annotations

import json
import math
import uuid

import aiohttp
import pyarrow.parquet as pq

from tests.wandb_server.wire import file_stream, gql, upsert_run


def row(step: int) -> dict:
    values = {0: math.nan, 1: math.inf, 2: -math.inf}
    media = {"_type": "image-file", "path": f"media/images/i_{step}.png", "size": step, "sha256": "ab" * 8}
    return {"_step": step, "loss": values.get(step, step / 10), "tag": f"s{step}" if step % 2 else None,
            "epoch": step // 10, "flag": step % 4 == 0, "image": media if step % 3 == 0 else None,
            "mixed": step if step % 5 else "five"}


def line(step: int) -> str:
    data = {k: v for k, v in row(step).items() if v is not None}
    return json.dumps(data)  # Python writes NaN/Infinity like the SDK does


async def write(server, run: str, steps: range, offset: int) -> None:
    async with aiohttp.ClientSession() as session:
        status, _, _ = await file_stream(
            session, server, run, {"files": {"wandb-history.jsonl": {"offset": offset, "content": [line(s) for s in steps]}}},
            project="parquet",
        )
        assert status == 200


PARQUET = """query P($e: String!, $p: String!, $r: String!) { project(name: $p, entityName: $e) {
  run(name: $r) { parquetHistory(liveKeys: ["_step"]) { parquetUrls liveData } } } }"""


async def test_scan_history_reads_parquet_export(wandb_server, public_api):
    """Like W&B, export a run once it is complete; wandb-core then reads only the parquet.

    The run's name is new every time: wandb-core caches exports by entity/project/run/index in
    the user's cache directory (its service process does not see the fixture's cache dir), so a
    name used before would be read from an earlier test run's file."""
    run = f"pq-{uuid.uuid4().hex[:12]}"
    async with aiohttp.ClientSession() as session:
        await upsert_run(session, wandb_server, run, project="parquet")
    await write(wandb_server, run, range(0, 30), 0)
    key = wandb_server.export_history("runferry", "parquet", run)
    schema = pq.read_schema(wandb_server.state.blob(key).path)
    assert [f.name for f in schema][0] == "_step" and str(schema.field("loss").type) == "double"
    assert {str(schema.field(k).type) for k in ("epoch", "flag", "tag")} == {"int64", "bool", "string"}
    assert str(schema.field("image").type).startswith("struct<")

    before = len(wandb_server.state.request_log)
    rows = list(public_api.run(f"runferry/parquet/{run}").scan_history())
    assert [r["_step"] for r in rows] == list(range(30))
    assert math.isnan(rows[0]["loss"]) and rows[1]["loss"] == math.inf and rows[2]["loss"] == -math.inf
    assert [r["loss"] for r in rows[3:]] == [s / 10 for s in range(3, 30)]
    # typed columns come back as the values logged (a key the row lacks reads as None)
    for got in rows:
        want = {k: v for k, v in row(got["_step"]).items() if v is not None and k not in ("loss", "mixed")}
        assert {k: v for k, v in got.items() if v is not None and k not in ("loss", "mixed")} == want
        assert type(got["epoch"]) is int and type(got["flag"]) is bool
    names = [name for _, name in wandb_server.state.request_log[before:]]
    assert "RunParquetHistory" in names and "HistoryPage" not in names  # nothing live to fetch


async def test_live_data_lists_rows_after_the_export(wandb_server):
    async with aiohttp.ClientSession() as session:
        await upsert_run(session, wandb_server, "pq2", project="parquet")
        await write(wandb_server, "pq2", range(0, 3), 0)
        wandb_server.export_history("runferry", "parquet", "pq2")
        await write(wandb_server, "pq2", range(3, 5), 3)
        status, body, _ = await gql(session, wandb_server, PARQUET, {"e": "runferry", "p": "parquet", "r": "pq2"})
    history = body["data"]["project"]["run"]["parquetHistory"]
    assert status == 200 and len(history["parquetUrls"]) == 1
    assert history["liveData"] == [{"_step": 3}, {"_step": 4}]
