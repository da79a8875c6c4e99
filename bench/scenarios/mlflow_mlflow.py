"""MLflow -> MLflow: runferry against mlflow-export-import on the same two servers and data.

Two real ``mlflow server`` processes (SQLite, proxied local artifacts, ``--server-workers``
worker processes each: 4 by default, as ``mlflow server`` itself starts) are started in the
work directory; the source gets one experiment of ``--runs`` runs with
``--keys`` x ``--steps`` points each (default 120 x 200) through the official client. Measured
children, each on the same source:

- ``peer-export`` / ``peer-import``: mlflow-export-import's ``export-experiment`` then
  ``import-experiment`` (installed on first use into ``bench/out/venv-mlflow-export-import``, a
  venv that sees this interpreter's packages);
- ``runferry``: ``python -m engine migrate`` (the CLI, wall time with its start-up, as the peer);
- ``read-only``: the engine draining the source into a destination that discards everything;
- ``write-only``: the engine filling the destination from runs preloaded into memory (the
  loading is done before the clock starts);
- ``migrate``: the same engine call as ``runferry``, timed inside the process like the two above.

``read-only`` and ``write-only`` time only the engine call (no interpreter start-up), so the
migration is compared with them through ``migrate``, timed the same way. Each phase also shows
the CPU seconds each server spent on it (``write-only``'s source figure includes the preload):
runferry is bound by the destination server (its SQLite store takes one writer at a time),
the peer by its sequential round trips -- each one costs ~45 ms more on a server with several
workers than on a one-worker server, measured with MLflow's own client, so ``--server-workers
1`` is shown too in the README. Afterwards the destination experiments are checked (run count
and every point) through the official client.

    python -m bench mlflow_mlflow [--runs 120 --keys 4 --steps 50 --runs-concurrency 16 --server-workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
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

PEER_VENV = REPO / "bench" / "out" / "venv-mlflow-export-import"
PEER_PACKAGES = ("mlflow-export-import==1.2.0", "tabulate")
EXPERIMENT = "bench"
T0 = 1_700_000_000_000


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench mlflow_mlflow", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=120)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--params", type=int, default=10)
    p.add_argument("--artifact-bytes", type=int, default=0, help="one artifact of this size per run (0 = none)")
    p.add_argument("--runs-concurrency", type=int, default=16)
    p.add_argument("--server-workers", type=int, default=4,
                   help="worker processes of each mlflow server (default 4, mlflow server's own default; "
                        "1 makes each server one CPU-bound process)")
    p.add_argument("--skip-peer", action="store_true", help="measure runferry only")
    p.add_argument("--workdir", help="keep servers' data and outputs here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one engine phase in this process
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the driver ---------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    a = _args(argv)
    if a.phase:
        return _phase(a.phase, Path(a.config))
    sys.path.insert(0, str(REPO))
    from tests.servers.mlflow_server import MlflowServer

    if a.workdir:
        workdir = Path(a.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return _drive(a, workdir, MlflowServer)
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        return _drive(a, Path(tmp), MlflowServer)


def _drive(a: argparse.Namespace, workdir: Path, server_class: Any) -> int:
    peer_bin = None if a.skip_peer else _peer_venv()
    source = server_class(workdir / "source", workers=a.server_workers)
    destination = server_class(workdir / "destination", workers=a.server_workers)
    _start_both(source, destination)
    try:
        print(f"servers: source {source.url}, destination {destination.url}", file=sys.stderr)
        started = time.perf_counter()
        _seed(source.url, a, workdir)
        for server in (source, destination):
            _warm_up(server.url, workdir)
        print(f"seeded {a.runs} runs x {a.keys * a.steps} points in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        rows: list[dict[str, Any]] = []
        results: dict[str, float] = {}

        meters = {"src": _ServerCpu(source), "dst": _ServerCpu(destination)}

        def record(name: str, result: ChildResult, seconds: float | None = None, note: str = "") -> None:
            result.check()
            wall = seconds if seconds is not None else result.wall_s
            results[name] = wall
            used = {k: m.take() for k, m in meters.items()}
            results[f"{name}-server-cpu"] = used["src"] + used["dst"]
            rows.append({"phase": name, "seconds": round(wall, 2), "cpu_s": round(result.cpu_s, 2),
                         "src_server_cpu_s": round(used["src"], 2), "dst_server_cpu_s": round(used["dst"], 2),
                         "peak_rss_mb": round(result.peak_rss_mb), "note": note})

        for meter in meters.values():
            meter.take()  # seeding and warm-up are not measured
        if peer_bin is not None:
            env = child_env({"MLFLOW_TRACKING_URI": source.url})
            export_dir = workdir / "peer-export"
            record("peer-export", run_child([str(peer_bin / "export-experiment"), "--experiment", EXPERIMENT,
                                             "--output-dir", str(export_dir)], env=env), note="export-experiment (CLI wall)")
            env = child_env({"MLFLOW_TRACKING_URI": destination.url})
            record("peer-import", run_child([str(peer_bin / "import-experiment"), "--experiment-name", f"peer-{EXPERIMENT}",
                                             "--input-dir", str(export_dir)], env=env), note="import-experiment (CLI wall)")
            results["peer-total"] = results["peer-export"] + results["peer-import"]
            rows.append({"phase": "peer-total", "seconds": round(results["peer-total"], 2), "note": "export + import"})

        def config(name: str, experiment: str) -> Path:
            return write_toml(workdir / f"{name}.toml", {
                "source": {"type": "mlflow", "tracking_uri": source.url, "experiments": [EXPERIMENT]},
                "destination": {"type": "mlflow", "tracking_uri": destination.url, "experiment": experiment},
                "transfer": {"ledger": str(workdir / f"{name}-ledger.jsonl"), "runs_concurrency": a.runs_concurrency,
                             "artifacts": a.artifact_bytes > 0},
            })

        for meter in meters.values():
            meter.take()
        cli = run_child(python_child("engine", "migrate", str(config("cli", "runferry-{experiment}"))), cwd=workdir)
        record("runferry", cli, note="python -m engine migrate (CLI wall)")
        for meter in meters.values():
            meter.take()  # config writing and the like are nobody's phase
        for phase, experiment in (("read-only", "unused-{experiment}"), ("write-only", "write-{experiment}"),
                                  ("migrate", "inner-{experiment}")):
            child = run_child(python_child("bench", "mlflow_mlflow", "--phase", phase, "--config",
                                           str(config(phase, experiment))), cwd=REPO)
            child.check()
            inner = json.loads(child.stdout.strip().splitlines()[-1])["seconds"]
            record(phase, child, inner, note="engine call only (no start-up)")
        print_table(rows, ["phase", "seconds", "cpu_s", "src_server_cpu_s", "dst_server_cpu_s", "peak_rss_mb", "note"])
        points = a.runs * a.keys * a.steps
        _verify(destination.url, "runferry-bench", a)
        if peer_bin is not None:
            ratio = results["peer-total"] / results["runferry"]
            print(f"\nrunferry is {ratio:.1f}x faster than mlflow-export-import "
                  f"({results['peer-total']:.1f} s vs {results['runferry']:.1f} s for {a.runs} runs, {points:,} points)")
        bound = max(results["read-only"], results["write-only"])
        print(f"limit: read-only {results['read-only']:.2f} s, write-only {results['write-only']:.2f} s; "
              f"migrate {results['migrate']:.2f} s = {results['migrate'] / bound:.2f}x the larger "
              f"(sum would be {(results['read-only'] + results['write-only']) / bound:.2f}x)")
        if peer_bin is not None:
            print(f"server CPU: mlflow-export-import used {results['peer-export-server-cpu'] + results['peer-import-server-cpu']:.1f} s "
                  f"of the two servers' CPU, runferry {results['runferry-server-cpu']:.1f} s")
        if a.json:
            print(json.dumps({"runs": a.runs, "points": points, **{k: round(v, 3) for k, v in results.items()}}))
        return 0
    finally:
        _stop_both(source, destination)


class _ServerCpu:
    """CPU seconds a server process (and its children) used since the last ``take()``: where
    the time goes when the servers, not the tools, are the limit."""

    def __init__(self, server: Any) -> None:
        import psutil

        self._root = psutil.Process(server.process.pid)
        self._last = self._total()

    def _total(self) -> float:
        import psutil

        total = 0.0
        for proc in [self._root, *self._root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
        return total

    def take(self) -> float:
        now = self._total()
        used, self._last = now - self._last, now
        return used


def _start_both(*servers: Any) -> None:
    import threading

    errors: list[BaseException] = []

    def start(server: Any) -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        _stop_both(*servers)
        raise errors[0]


def _stop_both(*servers: Any) -> None:
    for server in servers:
        server.stop()


def _peer_venv() -> Path:
    """mlflow-export-import in its own venv (it pins old helpers); built once, then reused."""
    bin_dir = PEER_VENV / "bin"
    if not (bin_dir / "import-experiment").exists():
        print(f"installing {', '.join(PEER_PACKAGES)} into {PEER_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(PEER_VENV)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", *PEER_PACKAGES], check=True)
    return bin_dir


def _seed(url: str, a: argparse.Namespace, workdir: Path) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.create_experiment(EXPERIMENT)
    artifact = workdir / "artifact.bin"
    if a.artifact_bytes:
        artifact.write_bytes(bytes(range(256)) * (a.artifact_bytes // 256) + b"x" * (a.artifact_bytes % 256))
    for r in range(a.runs):
        run_id = client.create_run(experiment, start_time=T0 + r * 10_000, run_name=f"run-{r:04d}").info.run_id
        metrics = [
            Metric(f"metric_{k}", (r * 7 + k * 3 + s) / 11.0, T0 + r * 10_000 + s, s)
            for s in range(a.steps)
            for k in range(a.keys)
        ]
        client.log_batch(run_id, metrics=metrics, params=[Param(f"param_{i}", str(i * r)) for i in range(a.params)])
        if a.artifact_bytes:
            client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id, "FINISHED", end_time=T0 + r * 10_000 + 9_999)


def _warm_up(url: str, workdir: Path) -> None:
    """Touch every endpoint once: a fresh server imports its handlers on first use, and that
    cost must not land on whichever tool happens to be measured first."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.create_experiment(f"warm-up-{time.time_ns()}")
    run_id = client.create_run(experiment, run_name="warm-up").info.run_id
    client.log_batch(run_id, metrics=[Metric("m", 1.0, T0, 0)], params=[Param("p", "1")])
    client.get_metric_history(run_id, "m")
    warm = workdir / "warm-up.txt"
    warm.write_text("warm")
    client.log_artifact(run_id, str(warm))
    client.list_artifacts(run_id)
    client.download_artifacts(run_id, "warm-up.txt", str(workdir))
    client.set_terminated(run_id, "FINISHED")
    client.search_runs([experiment])
    client.search_experiments()
    client.get_experiment_by_name("bench")
    client.delete_experiment(experiment)


def _verify(url: str, experiment_name: str, a: argparse.Namespace) -> None:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=50_000)
    points = sum(len(client.get_metric_history(run.info.run_id, key)) for run in runs for key in run.data.metrics)
    expected = a.runs * a.keys * a.steps
    if len(runs) != a.runs or points != expected:
        raise SystemExit(f"verification failed: {len(runs)} runs, {points} points (expected {a.runs}, {expected})")
    print(f"verified {experiment_name}: {len(runs)} runs, {points:,} points", file=sys.stderr)


# -- the measured phases (run in a child process) -------------------------------------------------
def _phase(phase: str, config_path: Path) -> int:
    from engine.config import load_config

    config = load_config(config_path)
    seconds = asyncio.run(_run_phase(phase, config))
    print(json.dumps({"phase": phase, "seconds": seconds}))
    return 0


async def _run_phase(phase: str, config: Any) -> float:
    from core.protocols import AdapterContext
    from adapters.mlflow import MlflowDestination, MlflowSource
    from engine.pipeline import migrate
    from engine.progress import Progress

    progress = Progress(mode="none")  # no progress lines: nothing but the engine is measured
    context = AdapterContext(chunk_points=config.transfer.chunk_points, part_bytes=config.transfer.part_bytes)
    if phase == "migrate":
        started = time.perf_counter()
        report = await migrate(config, progress=progress)
    elif phase == "read-only":
        adapters = (MlflowSource(config.source, context), _NullDestination())
        started = time.perf_counter()
        report = await migrate(config, progress=progress, adapters=adapters)
    elif phase == "write-only":
        preloaded = await _MemorySource.load(MlflowSource(config.source, context))
        adapters = (preloaded, MlflowDestination(config.destination, context))
        started = time.perf_counter()
        report = await migrate(config, progress=progress, adapters=adapters)
    else:
        raise SystemExit(f"unknown phase {phase}")
    seconds = time.perf_counter() - started
    if report.exit_code != 0:
        raise SystemExit(f"phase {phase} failed (exit code {report.exit_code})")
    return seconds


class _NullDestination:
    """Accepts everything and keeps nothing: the source alone sets the pace."""

    class _Writer:
        dest_id = "null"

        def __init__(self) -> None:
            self.points = 0

        async def write_history(self, chunk: Any) -> None:
            self.points = chunk.end

        async def flush_history(self) -> None:
            return None

        def checkpoint(self) -> Any:
            from core.protocols import Checkpoint

            return Checkpoint(history_points=self.points)

        async def write_file(self, file: Any, data: AsyncIterator[bytes]) -> None:
            async for _ in data:
                pass

        async def finish(self, run: Any) -> None:
            return None

        async def aclose(self) -> None:
            return None

    def describe(self) -> str:
        return "null:"

    async def __aenter__(self) -> _NullDestination:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def open_run(self, run: Any, resume: Any) -> Any:
        return self._Writer()

    async def finalize(self) -> None:
        return None


class _MemorySource:
    """Runs read from a source once, served from memory: the destination alone sets the pace."""

    def __init__(self, describe: str) -> None:
        self._describe = describe
        self.runs: list[tuple[Any, Any, list[Any], list[tuple[Any, bytes]]]] = []

    @classmethod
    async def load(cls, source: Any) -> _MemorySource:
        async with source:
            memory = cls(source.describe())
            async for ref in source.list_runs():
                record = await source.get_run(ref)
                chunks = [chunk async for chunk in source.iter_history(record, 0)]
                files = []
                async for file in source.list_files(record):
                    files.append((file, b"".join([piece async for piece in source.read_file(record, file)])))
                memory.runs.append((ref, record, chunks, files))
        return memory

    def describe(self) -> str:
        return "memory:" + self._describe

    async def __aenter__(self) -> _MemorySource:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def list_runs(self) -> AsyncIterator[Any]:
        for ref, *_ in self.runs:
            yield ref

    def _find(self, ref: Any) -> Any:
        return next(entry for entry in self.runs if entry[0].id == ref.id)

    async def get_run(self, ref: Any) -> Any:
        return self._find(ref)[1]

    async def iter_history(self, run: Any, start: int = 0) -> AsyncIterator[Any]:
        for chunk in self._find(run.ref)[2]:
            if chunk.end > start:
                yield chunk

    async def list_files(self, run: Any) -> AsyncIterator[Any]:
        for file, _ in self._find(run.ref)[3]:
            yield file

    async def read_file(self, run: Any, file: Any) -> AsyncIterator[bytes]:
        for candidate, data in self._find(run.ref)[3]:
            if candidate.path == file.path:
                yield data
