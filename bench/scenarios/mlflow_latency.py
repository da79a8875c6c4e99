"""MLflow round trips of MLflow's own client against servers of 1, 2 and 4 worker processes.

Why: a sequential tool (mlflow-export-import, W&B's MlflowImporter) pays every round trip in
full, so its speed follows the server's per-request latency rather than its CPU; runferry keeps
several requests in flight and follows the server's throughput. This measures the latency a
sequential client sees for a few typical calls, so the two ``mlflow_*`` scenarios' ratios can
be read against the server configuration they ran on.

The last two columns are runferry's own HTTP client asking ``runs/get`` one call at a time,
with and without acknowledging the answer's headers at once (``adapters.http.acknowledge_now``):
MLflow's uvicorn sends headers and body in two writes, Nagle's algorithm holds the body until
the headers are acknowledged, and Linux delays that ACK by ~40 ms on keep-alive connections.

    python -m bench mlflow_latency [--workers 1 2 4 --calls 30]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from bench.common import REPO, print_table


async def _runferry_get_run(url: str, run_id: str, calls: int, prompt_ack: bool) -> float:
    """Mean seconds per sequential ``runs/get`` through ``adapters.http.HttpClient``."""
    from unittest import mock

    from adapters import http
    from core.protocols import AdapterContext

    with contextlib.ExitStack() as stack:
        if not prompt_ack:
            stack.enter_context(mock.patch.object(http, "acknowledge_now", lambda response: None))
        async with http.HttpClient(base_url=url, name="latency", context=AdapterContext()) as client:
            params = {"run_id": run_id}
            await client.request_json("GET", "/api/2.0/mlflow/runs/get", params=params)  # warm
            started = time.perf_counter()
            for _ in range(calls):
                await client.request_json("GET", "/api/2.0/mlflow/runs/get", params=params)
            return (time.perf_counter() - started) / calls


def sequential_call_ms(call: Callable[[], object], calls: int) -> float:
    """Mean ms of ``calls`` calls of ``call`` one at a time, after one untimed call (lazy imports,
    the first connection): the latency a sequential client pays on every call."""
    call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1000


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench mlflow_latency", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--calls", type=int, default=30, help="timed calls of each kind (after one untimed)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    a = _args(argv)
    sys.path.insert(0, str(REPO))
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tests.servers.mlflow_server import MlflowServer

    rows = []
    for workers in a.workers:
        with tempfile.TemporaryDirectory(prefix="bench-mlflow-latency-") as tmp, MlflowServer(
            Path(tmp) / "server", workers=workers
        ) as server:
            client = MlflowClient(server.url)
            run_id = client.create_run(client.create_experiment("latency")).info.run_id
            client.log_batch(run_id, metrics=[Metric("loss", 1.0, 1, step) for step in range(50)])
            calls = {
                "get_run": lambda: client.get_run(run_id),
                "get_metric_history (50 points)": lambda: client.get_metric_history(run_id, "loss"),
                "set_tag": lambda: client.set_tag(run_id, "t", "v"),
                "log_batch (1 metric)": lambda: client.log_batch(run_id, metrics=[Metric("loss", 2.0, 2, 1)]),
            }
            row: dict[str, object] = {"workers": workers}
            for name, call in calls.items():
                row[f"{name} ms"] = round(sequential_call_ms(call, a.calls), 1)
            for prompt_ack in (True, False):
                label = "runferry runs/get ms" if prompt_ack else "runferry runs/get, ACK delayed ms"
                row[label] = round(anyio.run(_runferry_get_run, server.url, run_id, a.calls, prompt_ack) * 1000, 1)
            rows.append(row)
    print_table(rows)
    return 0
