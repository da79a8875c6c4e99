"""MLflow -> W&B: runferry against W&B's own MlflowImporter (wandb 0.27.0) on the same servers.

One real ``mlflow server`` (SQLite, or PostgreSQL with ``--backend-store postgresql``;
``--server-workers`` processes, 4 by default like ``mlflow server`` itself) is seeded through the official client with ``--runs`` runs
of ``--keys`` x ``--steps`` points (every point of a step shares one timestamp, so both tools
can be exact). One W&B-compatible server (``python -m tests.servers.wandb``, its own process)
receives every migration, each into a fresh project. ``runferry`` and ``peer`` run ``--repeats``
times each (default 3), order alternated; each output is read back with ``wandb.Api`` and every
history point compared with MLflow BEFORE its time counts (a difference fails the bench):

- ``peer``: ``wandb.apis.importers.mlflow.MlflowImporter`` from wandb 0.27.0 (the last release
  that has it), in the venv ``python -m bench.wandb027 --importers`` makes: ``collect_runs()``
  then ``import_runs(runs, artifacts=..., namespace=...)``, its defaults otherwise;
- ``runferry``: ``python -m engine migrate`` with runferry's defaults (CLI, start-up included,
  like the peer; ``--runs-concurrency`` tunes it).

Then once each, in a table of their own: ``read-only`` (runferry draining the MLflow source
only, the source-side limit) and, with ``history_database`` (histories read straight from the
MLflow server's backend store, direct database access the peer has no equivalent of),
``read-only-db`` and ``runferry-db``. An unmeasured drain runs first: a fresh MLflow server's
first history requests are much slower (warm-up), and no measured child should pay for that.

With ``--artifact-bytes N`` every run also holds one artifact file of N bytes, copied by both
tools (runferry ``artifacts = true``, the peer ``artifacts=True``) and checked byte for byte
(size and MD5 of a run file or artifact entry of that name) before a time counts; the result
is the variant ``artifacts``.

    python -m bench mlflow_wandb [--runs 4 --keys 10 --steps 2000 --repeats 3 --artifact-bytes 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    ChildResult,
    child_env,
    print_table,
    python_child,
    run_child,
    write_toml,
)
from bench.results import (
    Sample,
    package_version,
    ratio_of_medians,
    run_alternated,
    summarize,
    write_result,
)

T0 = 1_700_000_000_000
API_KEY = "b" * 40
ENTITY = "bench"

PEER_SCRIPT = """
import os, sys
from wandb.apis.importers import Namespace
from wandb.apis.importers.mlflow import MlflowImporter
importer = MlflowImporter(dst_base_url=os.environ["WANDB_BASE_URL"], dst_api_key=os.environ["WANDB_API_KEY"],
                          mlflow_tracking_uri=sys.argv[1])
runs = list(importer.collect_runs())
artifacts = len(sys.argv) > 4 and sys.argv[4] == "1"
importer.import_runs(runs, artifacts=artifacts, namespace=Namespace(sys.argv[2], sys.argv[3]))
print(len(runs))
"""

READ_ONLY_SCRIPT = """
import sys, anyio, contextlib
import engine.__main__
engine.__main__._pyarrow_without_pandas()  # the command line's start-up, as migrate has it
from engine.config import load_config
from engine.pipeline import make_context, open_adapters
from engine.progress import Progress

async def main():
    config = load_config(sys.argv[1])
    source, _ = open_adapters(config, make_context(config, Progress(mode="plain")))
    points = 0
    # runs read side by side, as migrate does (0 = automatic admission there: 16 here, not 0 slots)
    limit = anyio.CapacityLimiter(config.transfer.runs_concurrency or 16)

    async def drain(ref):
        nonlocal points
        async with limit:
            record = await source.get_run(ref)
            async with contextlib.aclosing(source.iter_history(record)) as chunks:
                async for chunk in chunks:
                    points += len(chunk)

    async with source:
        async with anyio.create_task_group() as tg:
            async for ref in source.list_runs():
                tg.start_soon(drain, ref)
    print(points)

anyio.run(main)
engine.__main__._exit_now(0)  # and its quick exit
"""


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench mlflow_wandb", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--runs-concurrency", type=int, default=None, help="tune runferry (default: its automatic admission)")
    p.add_argument("--backend-store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the mlflow server's backend store: a SQLite file (default) or a local PostgreSQL (pgserver)")
    p.add_argument("--server-workers", type=int, default=4,
                   help="worker processes of the mlflow server (default 4, mlflow server's own default)")
    p.add_argument("--filestream-rps-per-run", type=float, default=None,
                   help="server-side per-run file_stream limit (W&B documents 2); default: none")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--artifact-bytes", type=int, default=0,
                   help="one artifact file of this size per run, copied by both tools (0 = none)")
    p.add_argument("--skip-peer", action="store_true", help="measure runferry only")
    p.add_argument("--workdir", help="keep servers' data here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    a = _args(argv)
    sys.path.insert(0, str(REPO))
    if a.workdir:
        workdir = Path(a.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return _drive(a, workdir)
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-wandb-") as tmp:
        return _drive(a, Path(tmp))


def _drive(a: argparse.Namespace, workdir: Path) -> int:
    from bench.wandb027 import ensure_wandb027

    peer_python = None if a.skip_peer else ensure_wandb027(importers=True)
    with contextlib.ExitStack() as stack:
        mlflow_server = stack.enter_context(_mlflow_server(workdir, a))
        wandb_url = stack.enter_context(_wandb_server(workdir, a))
        expected = _seed(mlflow_server.url, a)
        files = _seed_artifacts(mlflow_server.url, list(expected), a.artifact_bytes, workdir)
        artifacts = bool(files)
        points = sum(len(p) for p in expected.values())
        rows: list[dict[str, Any]] = []
        env = child_env({"WANDB_BASE_URL": wandb_url, "WANDB_API_KEY": API_KEY, "BENCH_WANDB_KEY": API_KEY})
        def config(name: str, project: str, **source: Any) -> Path:
            return write_toml(workdir / f"{name}.toml", {
                "source": {"type": "mlflow", "tracking_uri": mlflow_server.url, "artifacts": artifacts, **source},
                "destination": {"type": "wandb", "base_url": wandb_url, "api_key_env": "BENCH_WANDB_KEY",
                                "entity": ENTITY, "project": project},
                "transfer": {"ledger": str(workdir / f"{name}-ledger.jsonl"), "artifacts": artifacts, "incremental": False,
                             # runferry's default (automatic) unless --runs-concurrency tunes it
                             **({"runs_concurrency": a.runs_concurrency} if a.runs_concurrency else {})},
            })

        through_api = config("runferry-warm", "unused")
        # a fresh MLflow server answers its first history requests far slower (lazy imports,
        # cold SQLite pages): one unmeasured drain first, so no measured child pays for it
        run_child([sys.executable, "-c", READ_ONLY_SCRIPT, str(through_api)], env=env).check()
        peer_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        peer_env.update({"WANDB_SILENT": "true", "WANDB_MODE": "online"})

        def measure(tool: str, repeat: int) -> Sample:
            project = f"{tool}-r{repeat}"  # a fresh destination project every time
            if tool == "runferry":
                result = run_child(python_child("engine", "migrate", str(config(project, project)), "--log-format",
                                                "plain"), env=env).check()
            else:
                home = workdir / "peer" / project
                home.mkdir(parents=True)
                result = run_child([str(peer_python), "-c", PEER_SCRIPT, mlflow_server.url, ENTITY, project,
                                    "1" if artifacts else "0"], cwd=home,
                                   env={**peer_env, "WANDB_DIR": str(home), "WANDB_CACHE_DIR": str(home / "cache"),
                                        "WANDB_CONFIG_DIR": str(home / "config")}).check()
            exact = _exact_points(wandb_url, project, expected)
            if exact != points:
                raise SystemExit(f"{tool} (round {repeat + 1}) holds {exact:,} of {points:,} points exactly: "
                                 "no time reported")
            extra: dict[str, Any] = {"exact_points": exact}
            if files:
                missing = _missing_files(wandb_url, project, files)
                if missing:
                    raise SystemExit(f"{tool} (round {repeat + 1}): artifact files missing or different: {missing[:5]}")
                extra["exact_files"] = len(files)
            return Sample(tool, repeat, result.wall_s, result.cpu_s, result.peak_rss_mb, extra)

        tools = ["runferry"] + ([] if peer_python is None else ["peer"])
        samples = run_alternated(tools, a.repeats, measure, log=lambda line: print(line, file=sys.stderr, flush=True))
        # once each, labelled apart: the source-side limit, and history read from the backend store
        # (history_database: direct database access, which the peer has no equivalent of)
        extras: dict[str, ChildResult] = {}
        extras["read-only"] = run_child([sys.executable, "-c", READ_ONLY_SCRIPT, str(through_api)], env=env).check()
        from_database = config("runferry-db", "runferry-db", history_database=mlflow_server.database_uri)
        extras["read-only-db"] = run_child([sys.executable, "-c", READ_ONLY_SCRIPT, str(from_database)], env=env).check()
        extras["runferry-db"] = run_child(python_child("engine", "migrate", str(from_database), "--log-format", "plain"),
                                          env=env).check()
        if _exact_points(wandb_url, "runferry-db", expected) != points:
            raise SystemExit("runferry-db's output differs from the source: no time reported")
    summary = summarize(samples)
    for tool in tools:
        rows.append({"tool": tool, "wall_s median": round(summary[tool].median, 2),
                     "min-max": f"{summary[tool].low:.2f}-{summary[tool].high:.2f}",
                     "points/s": round(points / summary[tool].median), "exact_points": points})
    print(f"\nMLflow -> W&B: {a.runs} runs x {a.keys} keys x {a.steps} steps = {points:,} points "
          f"(file_stream limit per run: {a.filestream_rps_per_run or 'none'}); {a.repeats} rounds, order alternated, a "
          f"fresh project each time; every output verified: every point exact\n")
    print_table(rows)
    headline: dict[str, Any] = {"points": points, "runferry_wall_s": summary["runferry"].median}
    if "peer" in summary:
        ratio = ratio_of_medians(summary, "peer", "runferry")
        headline["ratio_vs_peer"] = round(ratio, 2)
        print(f"\nrunferry is {ratio:.1f}x faster than W&B's MlflowImporter (ratio of median wall times)")
    print("\nonce each, apart from the headline (history_database reads the server's backend store directly; "
          "the peer has no equivalent):")
    print_table([{"phase": name, "wall_s": round(r.wall_s, 2), "cpu_s": round(r.cpu_s, 2)} for name, r in extras.items()])
    headline["extras_wall_s"] = {name: round(r.wall_s, 3) for name, r in extras.items()}
    versions = {"runferry": package_version("runferry"), "mlflow": package_version("mlflow"),
                "wandb (peer)": "0.27.0" if peer_python else None, "wandb (oracle)": package_version("wandb")}
    if files:
        headline["artifact_bytes"] = a.artifact_bytes * len(files)
    variant = "-".join(part for part, on in (("artifacts", bool(files)), ("runferry-only", a.skip_peer)) if on)
    path = write_result("mlflow_wandb", inputs=vars(a), versions=versions, samples=samples, headline=headline,
                        variant=variant or None)
    print(f"result: {path}")
    if a.json:
        print(json.dumps({"rows": rows, **headline}))
    return 0


@contextlib.contextmanager
def _mlflow_server(workdir: Path, a: argparse.Namespace) -> Iterator[Any]:
    """The source server, on a SQLite file or on a fresh local PostgreSQL (Unix socket)."""
    from tests.servers.mlflow_server import MlflowServer

    if a.backend_store == "sqlite":
        with MlflowServer(workdir / "mlflow", workers=a.server_workers) as server:
            yield server
        return
    from tests.servers.postgres_server import PostgresServer

    postgres = PostgresServer(workdir / "postgres").start()
    try:
        uri = postgres.mlflow_database("mlflow")
        with MlflowServer(workdir / "mlflow", workers=a.server_workers, backend_store_uri=uri) as server:
            yield server
    finally:
        postgres.stop()


class _wandb_server:
    """The W&B-compatible server in its own process (so its CPU is not in any child)."""

    def __init__(self, workdir: Path, a: argparse.Namespace) -> None:
        self.workdir = workdir
        self.a = a
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv = python_child("tests.servers.wandb", "--port", str(port), "--key", f"{API_KEY}={ENTITY}")
        if self.a.filestream_rps_per_run:
            argv += ["--filestream-rps-per-run", str(self.a.filestream_rps_per_run)]
        if getattr(self.a, "run_creation_rps_per_project", None):
            argv += ["--run-creation-rps-per-project", str(self.a.run_creation_rps_per_project)]
        log = open(self.workdir / "wandb-server.log", "ab")
        self.proc = subprocess.Popen(argv, env=child_env(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit("W&B-compatible server failed to start; see wandb-server.log")
                time.sleep(0.1)
        raise SystemExit("W&B-compatible server did not come up in 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def _seed(url: str, a: argparse.Namespace) -> dict[str, list[tuple[str, int, float]]]:
    """Runs with keys x steps points; returns run id -> [(key, step, value)]."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.create_experiment("bench")
    expected: dict[str, list[tuple[str, int, float]]] = {}
    for r in range(a.runs):
        run = client.create_run(experiment, run_name=f"run-{r}", start_time=T0)
        rid = run.info.run_id
        client.log_batch(rid, params=[Param(f"p{i}", str(i * r)) for i in range(10)])
        batch: list[Metric] = []
        points = expected.setdefault(rid, [])
        for step in range(a.steps):
            for k in range(a.keys):
                value = math.sin(step * 0.01 + k) * (r + 1)
                batch.append(Metric(f"metric_{k:02d}", value, T0 + step * 1000, step))
                points.append((f"metric_{k:02d}", step, value))
                if len(batch) == 1000:
                    client.log_batch(rid, metrics=batch)
                    batch = []
        if batch:
            client.log_batch(rid, metrics=batch)
        client.set_terminated(rid, "FINISHED", end_time=T0 + a.steps * 1000)
    return expected


ARTIFACT_NAME = "model.bin"


def _seed_artifacts(url: str, run_ids: list[str], size: int, workdir: Path) -> dict[str, tuple[int, str]]:
    """One file ``ARTIFACT_NAME`` of ``size`` seeded random bytes per run (none with size 0);
    returns run id -> (size, base64 MD5), the digest W&B reports for run files and entries."""
    import base64
    import hashlib
    import random

    from mlflow.tracking import MlflowClient

    if size <= 0:
        return {}
    client = MlflowClient(url)
    out: dict[str, tuple[int, str]] = {}
    for i, run_id in enumerate(run_ids):
        data = random.Random(i).randbytes(size)
        folder = workdir / "artifacts-seed" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ARTIFACT_NAME).write_bytes(data)
        client.log_artifact(run_id, str(folder / ARTIFACT_NAME))
        out[run_id] = (size, base64.b64encode(hashlib.md5(data).digest()).decode())
    return out


def _missing_files(wandb_url: str, project: str, files: dict[str, tuple[int, str]]) -> list[str]:
    """Runs whose ``ARTIFACT_NAME`` is in none of its run files and logged artifacts' entries
    with the seeded size and MD5 (each tool may put it in either place)."""
    import wandb

    api = wandb.Api(api_key=API_KEY, overrides={"base_url": wandb_url}, timeout=120)
    found: set[str] = set()
    for run in api.runs(f"{ENTITY}/{project}", per_page=100):
        want = files.get(run.id)
        if want is None:
            continue
        have = {(f.name.rsplit("/", 1)[-1], f.size, f.md5) for f in run.files()}
        for artifact in run.logged_artifacts():
            have |= {(path.rsplit("/", 1)[-1], entry.size, entry.digest) for path, entry in artifact.manifest.entries.items()}
        if (ARTIFACT_NAME, *want) in have:
            found.add(run.id)
    return sorted(set(files) - found)


def _exact_points(wandb_url: str, project: str, expected: dict[str, list[tuple[str, int, float]]]) -> int:
    """Points of ``expected`` found with the same key, step and value in the W&B project."""
    import wandb

    api = wandb.Api(api_key=API_KEY, overrides={"base_url": wandb_url}, timeout=120)
    found = 0
    for run in api.runs(f"{ENTITY}/{project}", per_page=100):
        want = expected.get(run.id)
        if want is None:
            continue
        have = {}
        for row in run.scan_history(page_size=5000):
            for key, value in row.items():
                if not key.startswith("_"):
                    have[(key, row["_step"])] = value
        found += sum(1 for key, step, value in want if have.get((key, step)) == value)
    return found
