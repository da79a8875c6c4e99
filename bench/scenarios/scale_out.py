"""Scale-out on Ray: one migration on 1, 2 and 4 worker actors against per-run limits, and the cost of executor = "ray".

The same synthetic -> W&B-compatible server migration (several projects) run by ``python -m
engine migrate`` with ``executor = "local"`` and with ``executor = "ray"`` on 1, 2 and 4 worker
actors (``[ray] address = ""``: each child starts its own local Ray cluster, on loopback, and
that start-up is in its time). The server enforces W&B's per-run file_stream limit
(``--filestream-rps-per-run``, default 2 requests/s, 429 + Retry-After above it) and the writer
sends small requests (``max_request_bytes`` 64 KiB), so every run needs many paced requests and
the limit, not the CPU, bounds a migration: a worker keeps ``shard_runs`` runs in flight
(``runs_concurrency`` = ``shard_runs``; the local executor the same number), so N workers may
send ``N * shard_runs * rate`` requests/s. The figures per tool:

- wall time (median and min-max of ``--repeats`` alternated samples);
- speed-up against 1 worker and its efficiency (speed-up / N);
- efficiency against the limit: the time the limit allows (accepted file_stream requests /
  (N * shard_runs * rate)) over the measured time;
- the overhead of ``executor = "ray"`` with one worker against the local executor: ``ray-1``
  starts and stops its own local cluster, ``ray-1-joined`` joins one the bench holds
  (``address = "auto"``, as on VMs or KubeRay, where the cluster is already up).

Every sample is verified BEFORE its time counts: ``python -m engine verify`` (every destination
run read back and compared with the source: metadata, every history point bit for bit, file
bytes) must report every run identical, and what ``wandb.Api()`` reads of the sample's projects
(``bench.wandb_data.run_view``: history rows with steps and timestamps, system lines, config,
summary, tags, notes, state, files, artifacts; not the server's creation time) must equal the
first local sample's. The server runs on a thread of the bench driver (it counts accepted and
throttled file_stream requests); the driver is idle while a child runs. CPU and peak RSS are the
driver child's own (Ray's raylet and workers are not in them).

    python -m bench scale_out [--projects 4 --runs 4 --steps 4000 --keys 10 --shard-runs 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import child_env, print_table, python_child, run_child, write_toml
from bench.results import Sample, package_version, run_alternated, summarize, write_result
from bench.wandb_data import differences, dump, namespace_view

KEY = "5" * 40
KEY_ENV = "BENCH_SCALE_OUT_KEY"
ENTITY = "scale"
EXCLUDED_FIELDS = ("created",)
"""Stamped by the server when the run is created (the source's times are in the config)."""


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench scale_out", description=__doc__.splitlines()[0])
    p.add_argument("--projects", type=int, default=4)
    p.add_argument("--runs", type=int, default=4, help="runs per project")
    p.add_argument("--steps", type=int, default=4000, help="history steps per run")
    p.add_argument("--keys", type=int, default=10, help="metrics per step")
    p.add_argument("--shard-runs", type=int, default=2, help="runs per shard = runs in flight per worker")
    p.add_argument("--workers", default="1,2,4", help="worker actor counts to measure")
    p.add_argument("--filestream-rps-per-run", type=float, default=2.0, help="the server's per-run limit")
    p.add_argument("--max-request-bytes", type=int, default=64 * 1024)
    p.add_argument("--no-joined", dest="joined", action="store_false",
                   help="skip ray-1-joined (1 worker on a cluster already running: no start-up in its time)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    p.add_argument("--variant", help="write bench/results/scale_out-VARIANT.json, not the headline scale_out.json")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    a = _args(argv)
    if a.workdir:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        return _drive(a, Path(a.workdir))
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        return _drive(a, Path(tmp))


def _tools(a: argparse.Namespace) -> list[str]:
    return (["local"] + (["ray-1-joined"] if a.joined else [])
            + [f"ray-{int(n)}" for n in a.workers.split(",") if n.strip()])


def _workers(tool: str) -> int:
    return 1 if tool == "local" else int(tool.split("-")[1])


def _projects(a: argparse.Namespace) -> list[str]:
    return [f"project-{i}" for i in range(a.projects)]


def _config(a: argparse.Namespace, home: Path, tool: str, tag: str, server_url: str) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "source": {"type": "synthetic", "seed": 13, "runs": a.runs * a.projects, "projects": a.projects,
                   "steps": a.steps, "keys": a.keys, "file_sizes": [2048], "artifact_sizes": []},
        "destination": {"type": "wandb", "base_url": server_url, "api_key_env": KEY_ENV, "entity": ENTITY,
                        "project": tag + "-{project}", "max_request_bytes": a.max_request_bytes},
        "transfer": {"ledger": str(home / "ledger.jsonl"), "runs_concurrency": a.shard_runs},
    }
    if tool != "local":
        tables["transfer"]["executor"] = "ray"
        tables["ray"] = {"workers": _workers(tool), "shard_runs": a.shard_runs, "ledger": str(home / "ledger.d"),
                         "address": "auto" if tool.endswith("-joined") else ""}
    return write_toml(home / "config.toml", tables)


def _env(home: Path, joined: str | None) -> dict[str, str]:
    return child_env({
        KEY_ENV: KEY,
        **LOOPBACK_RAY,
        "RAY_TMPDIR": str(home.parent / "ray"),  # its own session files
        **({"RAY_ADDRESS": joined} if joined else {}),
    })


LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
"""A local Ray cluster on loopback only, writing no ``~/.ray/auth_token``."""


@contextlib.contextmanager
def _running_cluster(workdir: Path, wanted: bool) -> Iterator[str | None]:
    """A Ray cluster held by this process for ``ray-1-joined`` (its GCS address), shut down after."""
    if not wanted:
        yield None
        return
    os.environ.update(LOOPBACK_RAY)  # read when Ray is imported
    os.environ[KEY_ENV] = KEY  # in every node's environment (its workers inherit it), as on VMs
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             _temp_dir=str(workdir / "ray-joined"), logging_level="WARNING")
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def _filestream_counts(server: Any) -> tuple[int, int]:
    with server.state.lock:
        accepted = sum(1 for kind, _ in server.state.request_log if kind == "filestream")
    return accepted, server.faults.injected.get("ratelimit:filestream", 0)


def _drive(a: argparse.Namespace, workdir: Path) -> int:
    from tests.servers.wandb import Faults, start_wandb_server

    import wandb

    tools = _tools(a)
    total_runs = a.runs * a.projects
    (workdir / "ray").mkdir(exist_ok=True)
    faults = Faults(filestream_rps_per_run=a.filestream_rps_per_run)
    reference: dict[str, dict[str, Any]] = {}
    fields = {name: None for name in ("rows", "system", "config", "summary", "tags", "notes", "group", "job_type",
                                      "state", "name", "files", "logged", "artifact_bytes", "used")}
    with start_wandb_server(keys={KEY: [ENTITY]}, faults=faults) as server, \
            _running_cluster(workdir, a.joined) as joined:
        api = wandb.Api(api_key=KEY, overrides={"base_url": server.base_url}, timeout=300)

        def measure(tool: str, repeat: int) -> Sample:
            tag = f"{tool.replace('-', '')}r{repeat}"
            home = workdir / tag
            home.mkdir()
            config = _config(a, home, tool, tag, server.base_url)
            env = _env(home, joined if tool.endswith("-joined") else None)
            load = os.getloadavg()[0]
            accepted, throttled = _filestream_counts(server)
            result = run_child(python_child("engine", "migrate", str(config), "--log-format", "plain",
                                            "--interval", "2"), cwd=home, env=env)
            (home / "migrate.log").write_text(result.stderr + result.stdout)
            result.check()
            accepted, throttled = (n - m for n, m in zip(_filestream_counts(server), (accepted, throttled), strict=True))
            verified = run_child(python_child("engine", "verify", str(config)), cwd=home, env=env)
            if verified.returncode != 0 or f"runs identical:      {total_runs}" not in verified.stdout:
                sys.stderr.write(verified.stdout[-3000:] + verified.stderr[-3000:])
                raise SystemExit(f"{tool} (round {repeat + 1}): verify found differences: no time reported")
            view = {path.removeprefix(tag + "-"): run
                    for path, run in namespace_view(api, ENTITY, [f"{tag}-{p}" for p in _projects(a)]).items()}
            if not reference:
                if tool != "local":
                    raise SystemExit("the first sample must be the local executor's (the reference)")
                reference.update(view)
            diffs = differences(reference, view, fields, limit=20)
            if diffs:
                sys.stderr.write("\n".join(diffs) + "\n")
                raise SystemExit(f"{tool} (round {repeat + 1}) differs from the local executor: no time reported")
            return Sample(tool, repeat, result.wall_s, result.cpu_s, result.peak_rss_mb,
                          {"filestream_accepted": accepted, "filestream_throttled": throttled,
                           "load_1m_before": round(load, 2), "load_1m_after": round(os.getloadavg()[0], 2)})

        samples = run_alternated(tools, a.repeats, measure, log=lambda line: print(line, flush=True))
        size = {"runs": len(reference), "rows": sum(len(v["rows"]) for v in reference.values()),
                "history_bytes": sum(len(dump(r)) for v in reference.values() for r in v["rows"])}
    return _report(a, tools, samples, size)


def _report(a: argparse.Namespace, tools: list[str], samples: list[Sample], size: dict[str, int]) -> int:
    summary = summarize(samples)
    one = summary["ray-1"].median if "ray-1" in summary else None
    rows, headline = [], {}
    for tool in tools:
        s = summary[tool]
        workers = _workers(tool)
        requests = statistics.median(x.extra["filestream_accepted"] for x in samples if x.tool == tool)
        bound = requests / (workers * a.shard_runs * a.filestream_rps_per_run)
        row: dict[str, Any] = {"tool": tool, "workers": workers, "wall_s": s.text(), "limit_bound_s": round(bound, 1),
                               "vs_limit": f"{bound / s.median:.0%}",
                               "throttled": sum(x.extra["filestream_throttled"] for x in samples if x.tool == tool)}
        if one is not None and tool not in ("local", "ray-1-joined"):
            row["speed_up"] = round(one / s.median, 2)
            row["efficiency"] = f"{one / s.median / workers:.0%}"
        rows.append(row)
        headline[tool] = {k: v for k, v in row.items() if k != "tool"}
    print_table(rows)
    for tool, how in (("ray-1", "starting its own local cluster"), ("ray-1-joined", "on a running cluster")):
        if tool in summary:
            overhead = summary[tool].median / summary["local"].median - 1
            headline[f"{tool}_overhead_vs_local"] = f"{overhead:+.1%}"
            print(f"executor = \"ray\", 1 worker {how}, vs local: {overhead:+.1%} wall time (target < 10 %)")
    notes = [
        f"per-run file_stream limit {a.filestream_rps_per_run} requests/s at the server; each worker keeps "
        f"shard_runs = {a.shard_runs} runs in flight (runs_concurrency {a.shard_runs}, the local executor too)",
        "limit_bound_s = accepted file_stream requests / (workers * shard_runs * rate): the time the limit allows",
        "ray-N children start their own local Ray cluster (address = \"\"): start-up and shutdown are in their time; "
        "ray-1-joined joins a cluster the bench holds (address = \"auto\"): only its actors' start is",
        "cpu_s / peak RSS are the driver process's own; Ray's raylet, GCS and worker processes are not included",
        "2 shared cores: other sessions ran on the machine; load_1m_before/after is in every sample",
    ]
    path = write_result(
        "scale_out",
        inputs={**{k: v for k, v in vars(a).items() if k not in ("workdir", "variant")}, "dataset": size},
        versions={"ray": package_version("ray"), "wandb": package_version("wandb")},
        samples=samples, headline=headline, notes=notes, variant=a.variant,
    )
    print(f"\nresult: {path}")
    return 0
