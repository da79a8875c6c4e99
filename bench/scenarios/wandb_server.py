"""Ceilings of the W&B-compatible test server vs. the official SDK on it (write and read).

The server runs in its own process (``python -m tests.servers.wandb``) so the load
generator does not share its GIL. Measured: raw file_stream ingestion (lines/s, several runs
in parallel), storage PUT/GET (MB/s), run creation + ``Runs`` paging (runs/s), then the
official SDK writing and scanning one run (current wandb, and wandb==0.27.0 if its venv can
be built), each reported against the raw ingestion ceiling for the same line count.

    python -m bench wandb_server [--runs 8 --posts 40 --lines 1000 --sdk-steps 20000 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import REPO, child_env, print_table, rate, run_child
from bench.wandb_data import WandbServerProcess

SDK_SCRIPT = REPO / "tests" / "wandb_server" / "sdk_scripts" / "bench_log.py"
IMPORTER_SCRIPT = REPO / "tests" / "wandb_server" / "sdk_scripts" / "importer_send.py"
KEY = "b" * 40


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench wandb_server", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=8, help="runs streamed in parallel")
    p.add_argument("--posts", type=int, default=40, help="file_stream POSTs per run")
    p.add_argument("--lines", type=int, default=1000, help="history lines per POST")
    p.add_argument("--keys", type=int, default=10, help="metrics per history line")
    p.add_argument("--blob-mib", type=int, default=32)
    p.add_argument("--blobs", type=int, default=8)
    p.add_argument("--list-runs", type=int, default=1000)
    p.add_argument("--sdk-steps", type=int, default=20000)
    p.add_argument("--no-sdk", action="store_true")
    p.add_argument("--no-wandb027", action="store_true")
    return p.parse_args(argv)


def _headers() -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth("api", KEY)}


async def _gql(session, base, query, variables):
    async with session.post(f"{base}/graphql", json={"query": query, "variables": variables}, headers=_headers()) as r:
        body = await r.json()
        if r.status != 200 or "errors" in body:
            raise SystemExit(f"GraphQL failed: {r.status} {body}")
        return body["data"]


UPSERT = """mutation U($name: String, $project: String) { upsertBucket(input: {name: $name, modelName: $project,
  entityName: "bench"}) { bucket { id } } }"""
RUNS = """query Runs($cursor: String, $perPage: Int) { project(name: "listing", entityName: "bench") {
  runs(after: $cursor, first: $perPage) { edges { node { name config summaryMetrics } cursor } pageInfo { endCursor hasNextPage } } } }"""
FILES = """mutation F($run: String!, $files: [String!]!) { createRunFiles(input: {entityName: "bench", projectName: "blobs",
  runName: $run, files: $files}) { files { name uploadUrl } } }"""


async def _bounded(limit: int, coros) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(coro):
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def measure_file_stream(base: str, args) -> dict:
    line = json.dumps({**{f"k{i}": 0.123456789 + i for i in range(args.keys)}, "_step": 0, "_timestamp": 1.7e9})
    body_lines = [line] * args.lines
    async with aiohttp.ClientSession() as session:
        for r in range(args.runs):
            await _gql(session, base, UPSERT, {"name": f"fs{r}", "project": "ingest"})

        async def stream(r: int) -> None:
            for post in range(args.posts):
                payload = {"files": {"wandb-history.jsonl": {"offset": post * args.lines, "content": body_lines}}}
                async with session.post(f"{base}/files/bench/ingest/fs{r}/file_stream", json=payload, headers=_headers()) as resp:
                    assert resp.status == 200, resp.status

        started = time.perf_counter()
        await asyncio.gather(*(stream(r) for r in range(args.runs)))
        wall = time.perf_counter() - started
    lines = args.runs * args.posts * args.lines
    return {"what": f"file_stream {args.runs} runs x {args.posts} POSTs x {args.lines} lines", "count": lines,
            "wall_s": wall, "per_s": rate(lines, wall), "MB_s": rate(lines * (len(line) + 3) / 1e6, wall)}


async def measure_storage(base: str, args) -> list[dict]:
    blob = os.urandom(args.blob_mib << 20)
    async with aiohttp.ClientSession() as session:
        await _gql(session, base, UPSERT, {"name": "blobs", "project": "blobs"})
        data = await _gql(session, base, FILES, {"run": "blobs", "files": [f"b{i}" for i in range(args.blobs)]})
        urls = [f["uploadUrl"] for f in data["createRunFiles"]["files"]]

        async def put(url):
            async with session.put(url, data=blob) as resp:
                assert resp.status == 200

        async def get(url):
            async with session.get(url) as resp:
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                assert size == len(blob)

        rows = []
        for name, op in (("PUT", put), ("GET", get)):
            started = time.perf_counter()
            await asyncio.gather(*(op(u) for u in urls))
            wall = time.perf_counter() - started
            total = len(urls) * len(blob)
            rows.append({"what": f"storage {name} {args.blobs} x {args.blob_mib} MiB", "count": len(urls),
                         "wall_s": wall, "per_s": rate(len(urls), wall), "MB_s": rate(total / 1e6, wall)})
    return rows


async def measure_runs(base: str, args) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await _bounded(16, [_gql(session, base, UPSERT, {"name": f"r{i:06d}", "project": "listing"}) for i in range(args.list_runs)])
        create = time.perf_counter() - started
        started, cursor, seen = time.perf_counter(), None, 0
        while True:
            page = (await _gql(session, base, RUNS, {"cursor": cursor, "perPage": 200}))["project"]["runs"]
            seen += len(page["edges"])
            if not page["pageInfo"]["hasNextPage"]:
                break
            cursor = page["pageInfo"]["endCursor"]
        listing = time.perf_counter() - started
    assert seen == args.list_runs, seen
    return [
        {"what": "UpsertBucket create (16 in flight)", "count": args.list_runs, "wall_s": create, "per_s": rate(args.list_runs, create)},
        {"what": "Runs paging (200 per page)", "count": seen, "wall_s": listing, "per_s": rate(seen, listing)},
    ]


def measure_sdk(base: str, python: str, label: str, args, ceiling_lines_s: float, tmp: Path) -> list[dict]:
    env = child_env({"WANDB_BASE_URL": base, "WANDB_API_KEY": KEY, "WANDB_MODE": "online", "WANDB_SILENT": "true",
                     "WANDB_DIR": str(tmp), "WANDB_CACHE_DIR": str(tmp / "cache"), "WANDB_CONFIG_DIR": str(tmp / "config"),
                     "WANDB_DATA_DIR": str(tmp / "data"), "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                     "WANDB_CONSOLE": "off", "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true"})
    env.pop("PYTHONPATH", None)
    run_id = f"sdk-{label.replace('.', '')}"
    rows = []
    for mode, extra in (("write", [str(args.sdk_steps), str(args.keys)]), ("scan", [])):
        if mode == "scan" and label != "current":
            continue  # 0.27.0 matters for its write path (bench compares its importer writing)
        result = run_child([python, str(SDK_SCRIPT), mode, "bench", "sdk", run_id, *extra], env=env).check()
        count = int(result.stdout.split("ROWS", 1)[1].split()[0])
        rows.append({"what": f"SDK {label} {mode} 1 run x {args.sdk_steps} steps x {args.keys} keys", "count": count,
                     "wall_s": result.wall_s, "per_s": rate(count, result.wall_s), "cpu_s": result.cpu_s,
                     "vs_ceiling": rate(count, result.wall_s) / ceiling_lines_s})
    return rows


def measure_importer(base: str, python: str, args, ceiling_lines_s: float, tmp: Path) -> list[dict]:
    """wandb 0.27.0's importer machinery (send_run: data, then one artifact), if provisioned."""
    from bench.wandb027 import importers_ready

    if not importers_ready(Path(python)):
        print("importer skipped: run `python -m bench.wandb027 --importers` first", file=sys.stderr)
        return []
    tmp.mkdir(parents=True, exist_ok=True)
    env = child_env({"WANDB_BASE_URL": base, "WANDB_API_KEY": KEY, "WANDB_SILENT": "true", "WANDB_DIR": str(tmp),
                     "WANDB_CACHE_DIR": str(tmp / "cache"), "WANDB_CONFIG_DIR": str(tmp / "config"),
                     "IMPORTER_STEPS": str(args.sdk_steps)})
    env.pop("PYTHONPATH", None)
    result = run_child([python, str(IMPORTER_SCRIPT), "bench", "importer", "imp-bench", str(tmp / "art")], cwd=tmp, env=env).check()
    steps = args.sdk_steps
    return [{"what": f"0.27.0 importer send_run 1 run x {steps} steps (+12 MiB artifact)", "count": steps,
             "wall_s": result.wall_s, "per_s": rate(steps, result.wall_s), "cpu_s": result.cpu_s,
             "vs_ceiling": rate(steps, result.wall_s) / ceiling_lines_s}]


def main(argv: list[str]) -> int:
    args = _args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-wandb-") as tmp, \
            WandbServerProcess({KEY: ["bench"]}, Path(tmp) / "server.log") as server:
        base = server.url
        ingest = asyncio.run(measure_file_stream(base, args))
        rows.append(ingest)
        rows += asyncio.run(measure_storage(base, args))
        rows += asyncio.run(measure_runs(base, args))
        if not args.no_sdk:
            rows += measure_sdk(base, sys.executable, "current", args, ingest["per_s"], Path(tmp) / "cur")
            if not args.no_wandb027:
                from bench.wandb027 import VenvUnavailable, ensure_wandb027

                try:
                    python = str(ensure_wandb027())
                except VenvUnavailable as exc:
                    print(f"wandb 0.27.0 skipped: {exc}", file=sys.stderr)
                else:
                    rows += measure_sdk(base, python, "0.27.0", args, ingest["per_s"], Path(tmp) / "w027")
                    rows += measure_importer(base, python, args, ingest["per_s"], Path(tmp) / "imp")
    print_table(rows, ["what", "count", "wall_s", "per_s", "MB_s", "cpu_s", "vs_ceiling"])
    print("\nper_s: lines, blobs or runs per second; vs_ceiling: SDK rows/s divided by raw file_stream lines/s")
    return 0
