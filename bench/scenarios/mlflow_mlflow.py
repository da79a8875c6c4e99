"""MLflow -> MLflow: runferry against mlflow-export-import on the same source and data.

A real ``mlflow server`` (SQLite, proxied local artifacts, ``--server-workers`` worker
processes: 4 by default, as ``mlflow server`` itself starts) holds the source: one experiment
of ``--runs`` runs with ``--keys`` x ``--steps`` points each (default 120 x 200), seeded through
the official client. Every measurement writes into a fresh destination server of the same kind
(an empty store, warmed up before the clock starts), so no tool writes into a database an
earlier round has grown. Every tool runs ``--repeats`` times (default 3), order alternated, and
its output is compared with the source through the MLflow client (run names, status, params,
every metric point's step, timestamp and value, artifact paths and sizes; start/end times for
runferry only: mlflow-export-import creates runs at import time) BEFORE its time counts; a
difference prints and fails the bench. Median, min-max and the ratio of medians are printed and
written to ``bench/results/mlflow_mlflow.json``.

- ``mlflow-export-import``: ``export-experiment`` then ``import-experiment`` (wall times
  summed; installed on first use into ``bench/out/venv-mlflow-export-import``, a venv that sees
  this interpreter's packages, so it runs on the installed mlflow; its version is printed);
- ``runferry``: ``python -m engine migrate`` with runferry's defaults (``--runs-concurrency``
  tunes it, and the output says so).

Then (``--no-limits`` skips them) the servers' own ceilings, as engine phases timed inside their
process at several concurrencies (``--ceiling-in-flight``, ``--ceiling-repeats`` rounds each):
``read-only`` (the source drained into a destination that discards everything) and
``write-only`` (runs preloaded into memory, then written into a fresh destination and checked),
each with the CPU seconds the servers spent on it. The write ceiling is what bounds runferry:
the destination's SQLite store takes one writer at a time. The peer is bound by its sequential
round trips.

Last, runferry is held against that ceiling with the ceiling's rounds interleaved with
runferry's (``--bound-repeats`` rounds, default 5, order alternated, fresh destinations):
write-only at the concurrency that was best, runferry's engine call timed in its process as the
ceiling is (``migrate`` with the defaults), and the whole ``python -m engine migrate`` process.
Why interleaved: this machine's speed drifts by a quarter within minutes, and a ratio of two
medians measured a quarter of an hour apart measured the drift.

    python -m bench mlflow_mlflow [--runs 120 --keys 4 --steps 50 --repeats 3 --server-workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.common import (
    REPO,
    child_env,
    int_list,
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

PEER_VENV = REPO / "bench" / "out" / "venv-mlflow-export-import"
PEER_PACKAGES = ("mlflow-export-import==1.2.0", "tabulate")
EXPERIMENT = "bench"
T0 = 1_700_000_000_000
# mlflow-export-import creates each run at import time (the original times only go into
# ``mlflow_exim.*`` tags with --import-source-tags): the peer is not held to them
PEER_DOES_NOT_KEEP = ("start_time", "end_time")
# the rounds that hold runferry against the destination's write ceiling, interleaved
WRITE_CEILING, ENGINE_CALL = "write ceiling", "runferry engine call"
# read-only's destination: the engine must not reach it (the discard port, nothing listens)
UNREACHABLE = "http://127.0.0.1:9"


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench mlflow_mlflow", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=120)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--params", type=int, default=10)
    p.add_argument("--artifact-bytes", type=int, default=0, help="one artifact of this size per run (0 = none)")
    p.add_argument("--runs-concurrency", type=int, default=None,
                   help="tune runferry's runs_concurrency (default: not set, runferry's default, as the headline)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-limits", dest="limits", action="store_false",
                   help="skip the servers' ceilings and runferry held against them")
    p.add_argument("--ceiling-in-flight", type=int_list, default=[1, 3, 6, 12],
                   help="max_in_flight values the read-only and write-only ceilings are measured at (default 1,3,6,12)")
    p.add_argument("--ceiling-repeats", type=int, default=3, help="rounds of every ceiling phase (default 3)")
    p.add_argument("--bound-repeats", type=int, default=5,
                   help="rounds of runferry interleaved with the write ceiling at its best concurrency (default 5)")
    p.add_argument("--server-workers", type=int, default=4,
                   help="worker processes of each mlflow server (default 4, mlflow server's own default; "
                        "1 makes each server one CPU-bound process)")
    p.add_argument("--skip-peer", action="store_true", help="measure runferry only")
    p.add_argument("--peer-repeats", type=int, default=None,
                   help="rounds of mlflow-export-import (default --repeats): the first rounds alternate")
    p.add_argument("--variant", help="write bench/results/mlflow_mlflow-VARIANT.json (e.g. many-small-runs: "
                                     "--runs 1000 --keys 2 --steps 100), not the headline result")
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
    source.start()
    try:
        print(f"source server {source.url}", file=sys.stderr)
        started = time.perf_counter()
        _seed(source.url, a, workdir)
        _warm_up(source.url, workdir)
        seed_s = time.perf_counter() - started
        print(f"seeded {a.runs} runs x {a.keys * a.steps} points in {seed_s:.1f} s", file=sys.stderr)
        expected = _experiment_view(source.url, EXPERIMENT)
        round_trip_ms = _sequential_round_trip_ms(source.url)
        print(f"MLflow's client: get_run {round_trip_ms:.1f} ms a call, one at a time", file=sys.stderr)
        source_cpu = _ServerCpu(source)
        fresh = _FreshDestinations(server_class, workdir, a.server_workers)

        def config(name: str, destination_url: str, *, source_in_flight: int | None = None,
                   destination_in_flight: int | None = None) -> Path:
            transfer: dict[str, Any] = {"ledger": str(workdir / f"{name}-ledger.jsonl"), "artifacts": a.artifact_bytes > 0}
            if a.runs_concurrency:
                transfer["runs_concurrency"] = a.runs_concurrency  # a tuning run, not the headline
            src: dict[str, Any] = {"type": "mlflow", "tracking_uri": source.url, "experiments": [EXPERIMENT]}
            dst: dict[str, Any] = {"type": "mlflow", "tracking_uri": destination_url, "experiment": f"{name}-{{experiment}}"}
            if source_in_flight:
                src["max_in_flight"] = source_in_flight
            if destination_in_flight:
                dst["max_in_flight"] = destination_in_flight
            return write_toml(workdir / f"{name}.toml", {"source": src, "destination": dst, "transfer": transfer})

        def measure(tool: str, repeat: int, prefix: str = "") -> Sample:
            name = f"{prefix}{tool}-r{repeat}"
            with fresh(name) as (destination, destination_cpu):
                source_cpu.take()  # whatever ran before is nobody's
                if tool == "runferry":
                    child = run_child(python_child("engine", "migrate", str(config(name, destination.url))),
                                      cwd=workdir).check()
                    wall, cpu, rss, experiment = child.wall_s, child.cpu_s, child.peak_rss_mb, f"{name}-{EXPERIMENT}"
                else:
                    export_dir, experiment = workdir / f"peer-export-r{repeat}", f"peer-r{repeat}-{EXPERIMENT}"
                    out = run_child([str(peer_bin / "export-experiment"), "--experiment", EXPERIMENT, "--output-dir",
                                     str(export_dir)], env=child_env({"MLFLOW_TRACKING_URI": source.url})).check()
                    into = run_child([str(peer_bin / "import-experiment"), "--experiment-name", experiment, "--input-dir",
                                      str(export_dir)], env=child_env({"MLFLOW_TRACKING_URI": destination.url})).check()
                    wall, cpu, rss = out.wall_s + into.wall_s, out.cpu_s + into.cpu_s, max(out.peak_rss_mb, into.peak_rss_mb)
                used = {"src_server_cpu_s": round(source_cpu.take(), 2), "dst_server_cpu_s": round(destination_cpu.take(), 2)}
                _fail_on_differences(f"{tool} (round {repeat + 1})", expected, _experiment_view(destination.url, experiment),
                                     skip=() if tool == "runferry" else PEER_DOES_NOT_KEEP)
            return Sample(tool, repeat, wall, cpu, rss, used)

        tools = ["runferry"] + ([] if peer_bin is None else ["mlflow-export-import"])
        samples = run_alternated(tools, a.repeats, measure, log=lambda line: print(line, file=sys.stderr, flush=True),
                                 rounds=None if a.peer_repeats is None else {"mlflow-export-import": a.peer_repeats})
        limits = _limits(a, config, source_cpu, fresh, expected,
                         command_line=lambda repeat: measure("runferry", repeat, "bound-")) if a.limits else {}
        return _report(a, tools, samples, limits, seed_s, peer_bin, round_trip_ms)
    finally:
        source.stop()


class _FreshDestinations:
    """A new, warmed-up destination server (empty SQLite store) for every measurement: no tool
    or phase writes into a database an earlier one has grown. Removed once measured."""

    def __init__(self, server_class: Any, workdir: Path, workers: int) -> None:
        self._server_class, self._workdir, self._workers = server_class, workdir, workers

    @contextlib.contextmanager
    def __call__(self, name: str) -> Any:
        root = self._workdir / "destinations" / name
        server = self._server_class(root, workers=self._workers)
        server.start()
        try:
            # every worker process imports its handlers on first use: warm them all up, then
            # let the workers that are still starting finish before the clock starts
            with concurrent.futures.ThreadPoolExecutor(2 * self._workers) as pool:
                list(pool.map(lambda n: _warm_up(server.url, self._workdir / f"warm-{n}"), range(2 * self._workers)))
            meter = _ServerCpu(server)
            meter.wait_until_idle()
            yield server, meter
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


def _limits(a: argparse.Namespace, config: Any, source_cpu: Any, fresh: _FreshDestinations,
            expected: dict[str, dict[str, Any]], command_line: Callable[[int], Sample]) -> dict[str, Any]:
    """The servers' own ceilings, as the engine phases timed inside their process reach them at
    every ``--ceiling-in-flight`` (``--ceiling-repeats`` rounds, the concurrencies alternated):
    ``read-only`` (the source drained into a destination that discards everything; the source's
    ``max_in_flight``) and ``write-only`` (runs preloaded into memory, then written into a fresh
    destination, checked against the source; the destination's ``max_in_flight``). A phase's
    ceiling is its best median over the concurrencies. Then ``bound``: write-only at that best
    concurrency, runferry's engine call and runferry's command line, alternated round by round."""
    runs: list[dict[str, Any]] = []

    def run_phase(phase: str, in_flight: int | None, repeat: int, prefix: str = "") -> float:
        name = f"{prefix}{phase}-{in_flight or 'default'}-r{repeat}"
        where: Any = contextlib.nullcontext((None, None)) if phase == "read-only" else fresh(name)
        with where as (destination, destination_cpu):
            url = destination.url if destination else UNREACHABLE
            path = config(name, url, source_in_flight=in_flight if phase == "read-only" else None,
                          destination_in_flight=in_flight if phase == "write-only" else None)
            source_cpu.take()
            child = run_child(python_child("bench", "mlflow_mlflow", "--phase", phase, "--config", str(path)), cwd=REPO).check()
            used = {"src_server_cpu_s": round(source_cpu.take(), 2),
                    "dst_server_cpu_s": round(destination_cpu.take(), 2) if destination_cpu else 0.0}
            if destination:
                _fail_on_differences(name, expected, _experiment_view(destination.url, f"{name}-{EXPERIMENT}"))
        seconds = float(json.loads(child.stdout.strip().splitlines()[-1])["seconds"])
        if not prefix:
            runs.append({"phase": phase, "max_in_flight": in_flight, "seconds": seconds, **used})
        print(f"  {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
        return seconds

    for repeat in range(a.ceiling_repeats):
        order = a.ceiling_in_flight if repeat % 2 == 0 else a.ceiling_in_flight[::-1]
        for in_flight in order:
            for phase in ("read-only", "write-only"):
                run_phase(phase, in_flight, repeat)
    write = _ceiling(runs, "write-only")

    def bound(tool: str, repeat: int) -> Sample:
        if tool == "runferry":
            return command_line(repeat)
        phase, in_flight = ("write-only", write["max_in_flight"]) if tool == WRITE_CEILING else ("migrate", None)
        return Sample(tool, repeat, run_phase(phase, in_flight, repeat, prefix="bound-"))

    samples = run_alternated([WRITE_CEILING, ENGINE_CALL, "runferry"], a.bound_repeats, bound,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    return {"runs": runs, "read-only": _ceiling(runs, "read-only"), "write-only": write,
            "bound": {"max_in_flight": write["max_in_flight"],
                      **{tool: vars(figures) for tool, figures in summarize(samples).items()},
                      "samples": [{"tool": x.tool, "round": x.repeat, "seconds": round(x.wall_s, 3)} for x in samples]}}


def _ceiling(runs: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    """The best median over the concurrencies a phase ran at, with its range and CPU."""
    by_in_flight: dict[Any, list[dict[str, Any]]] = {}
    for run in runs:
        if run["phase"] == phase:
            by_in_flight.setdefault(run["max_in_flight"], []).append(run)
    medians = {n: statistics.median(r["seconds"] for r in group) for n, group in by_in_flight.items()}
    best = min(medians, key=lambda n: medians[n])
    group = by_in_flight[best]
    return {"max_in_flight": best, "seconds": medians[best], "low": min(r["seconds"] for r in group),
            "high": max(r["seconds"] for r in group), "n": len(group),
            "medians_by_max_in_flight": {str(n or "default"): round(m, 3) for n, m in medians.items()},
            "src_server_cpu_s": statistics.median(r["src_server_cpu_s"] for r in group),
            "dst_server_cpu_s": statistics.median(r["dst_server_cpu_s"] for r in group)}


def _fail_on_differences(what: str, expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]],
                         skip: tuple[str, ...] = ()) -> None:
    diffs = _differences(expected, got, skip=skip)
    if diffs:
        print(f"\n{what} differs from the source:", file=sys.stderr)
        for line in diffs[:20]:
            print("  " + line, file=sys.stderr)
        raise SystemExit(f"{what}: the output is not equal to the source: no time reported")


def _report(a: argparse.Namespace, tools: list[str], samples: list[Sample], limits: dict[str, Any],
            seed_s: float, peer_bin: Path | None, round_trip_ms: float) -> int:
    summary = summarize(samples)
    points = a.runs * a.keys * a.steps
    rows = []
    for tool in tools:
        mine = [x for x in samples if x.tool == tool]
        rows.append({"tool": tool, "rounds": summary[tool].n, "wall_s median": round(summary[tool].median, 2),
                     "min-max": f"{summary[tool].low:.2f}-{summary[tool].high:.2f}",
                     "points/s": round(points / summary[tool].median), "cpu_s": round(summarize(mine, "cpu_s")[tool].median, 2),
                     "src server cpu_s": round(summarize(mine, "src_server_cpu_s")[tool].median, 2),
                     "dst server cpu_s": round(summarize(mine, "dst_server_cpu_s")[tool].median, 2),
                     "peak_rss_mb": round(summarize(mine, "peak_rss_mb")[tool].median)})
    settings = f"runs_concurrency={a.runs_concurrency}" if a.runs_concurrency else "runferry's defaults"
    print(f"\nMLflow -> MLflow: {a.runs} runs x {a.keys} keys x {a.steps} steps = {points:,} points, "
          f"{'artifacts of ' + str(a.artifact_bytes) + ' B' if a.artifact_bytes else 'no artifacts'} (both tools); "
          f"{settings}; servers with {a.server_workers} workers; {a.repeats} rounds, order alternated, "
          f"a fresh destination server each time\n")
    print_table(rows)
    print("\nverified before timing: every destination run against the source through the MLflow client "
          "(run names, status, start/end times, params, every metric point's step, timestamp and value, "
          f"artifact paths and sizes); mlflow-export-import not on {', '.join(PEER_DOES_NOT_KEEP)} (it does not keep them)")
    # a sequential tool pays this per call; it moves with the machine's kernel (delayed ACKs)
    headline: dict[str, Any] = {"points": points, "runferry_wall_s": summary["runferry"].median,
                                "mlflow_client_round_trip_ms": round(round_trip_ms, 2)}
    if "mlflow-export-import" in summary:
        ratio = ratio_of_medians(summary, "mlflow-export-import", "runferry")
        headline["ratio_vs_mlflow-export-import"] = round(ratio, 2)
        print(f"runferry is {ratio:.1f}x faster than mlflow-export-import (ratio of median wall times)")
    if limits:
        print_table([{"phase": phase, "max_in_flight": c["max_in_flight"] or "default",
                      "median s": round(c["seconds"], 2), "min-max": f"{c['low']:.2f}-{c['high']:.2f}",
                      "medians by max_in_flight": " ".join(f"{n}:{m:.2f}" for n, m in c["medians_by_max_in_flight"].items()),
                      "src server cpu_s": c["src_server_cpu_s"], "dst server cpu_s": c["dst_server_cpu_s"]}
                     for phase, c in limits.items() if phase in ("read-only", "write-only")])
        print(f"read-only ceiling {limits['read-only']['seconds']:.2f} s")
        headline.update(_bounds(a, limits["bound"]))
    versions = {"runferry": package_version("runferry"), "mlflow": package_version("mlflow"),
                "mlflow-export-import": _peer_version(peer_bin) if peer_bin else None, "python": sys.version.split()[0]}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    path = write_result("mlflow_mlflow", inputs={**{k: v for k, v in vars(a).items() if k not in ("phase", "config")},
                                                 "seed_s": round(seed_s, 1)},
                        versions=versions, samples=samples, headline={**headline, "limits": limits},
                        variant="-".join(v for v in (a.variant, "runferry-only" if a.skip_peer else None) if v) or None,
                        notes=["shared 2-core machine under other load: absolute times swing, ratios less",
                               *_fewer_rounds(summary, a.repeats)])
    print(f"result: {path}")
    if a.json:
        print(json.dumps({"runs": a.runs, "points": points, **headline}))
    return 0


def _bounds(a: argparse.Namespace, bound: dict[str, Any]) -> dict[str, Any]:
    """The write ceiling as the README's bound rows: once against runferry's whole process and
    once against its engine call, each from the rounds interleaved with the ceiling's."""
    label = (f"destination write ceiling (write-only at max_in_flight {bound['max_in_flight']}, the best of "
             f"{'/'.join(str(n) for n in a.ceiling_in_flight)}; rounds interleaved with runferry's)")
    ceiling = bound[WRITE_CEILING]
    figures = {"label": label, **{k: ceiling[k] for k in ("median", "low", "high", "n")}}
    rows, ratios = [], {}
    for tool, what, key in (("runferry", "runferry (whole process)", "ratio_to_write_ceiling"),
                            (ENGINE_CALL, "runferry engine call (timed in its process, as the ceiling)",
                             "engine_ratio_to_write_ceiling")):
        ours = bound[tool]
        rows.append({**figures, "against": {"label": what, **{k: ours[k] for k in ("median", "low", "high", "n")}}})
        ratios[key] = round(ours["median"] / ceiling["median"], 3)
        print(f"{what}: {ours['median']:.2f} s ({ours['low']:.2f}-{ours['high']:.2f}), {ratios[key]:.2f}x the "
              f"destination's write ceiling {ceiling['median']:.2f} s ({ceiling['low']:.2f}-{ceiling['high']:.2f}) "
              f"at max_in_flight {bound['max_in_flight']}, {ours['n']} interleaved rounds")
    return {"bounds": rows, **ratios}


def _fewer_rounds(summary: dict[str, Any], repeats: int) -> list[str]:
    return [f"{tool} was measured {stats.n} time(s), runferry {repeats}: the first rounds alternate"
            for tool, stats in summary.items() if stats.n < repeats]


def _peer_version(bin_dir: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('mlflow-export-import'), 'on mlflow', m.version('mlflow'))"
    probe = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True, check=False)
    return probe.stdout.strip() or "unknown"


def _experiment_view(url: str, name: str) -> dict[str, dict[str, Any]]:
    """Run name -> what is compared of it, read through the official client."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    view = {}
    for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=50_000):
        metrics = {key: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))
                   for key in run.data.metrics}
        artifacts = sorted((f.path, f.file_size) for f in client.list_artifacts(run.info.run_id))
        view[run.info.run_name] = {"status": run.info.status, "start_time": run.info.start_time,
                                   "end_time": run.info.end_time, "params": run.data.params, "metrics": metrics,
                                   "artifacts": artifacts}
    return view


def _differences(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]], skip: tuple[str, ...] = ()) -> list[str]:
    if sorted(expected) != sorted(got):
        return [f"runs: {len(got)} instead of {len(expected)}; missing {sorted(set(expected) - set(got))[:5]}"]
    return [f"{name} {field}: {got[name][field]!r:.300} instead of {value!r:.300}"
            for name, run in expected.items() for field, value in run.items()
            if field not in skip and got[name][field] != value]


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

    def wait_until_idle(self, *, busy: float = 0.05, interval: float = 0.5, deadline_s: float = 60.0) -> None:
        """Return once the server used less than ``busy`` of a CPU over ``interval`` (a server
        just started is still spawning and importing in its workers); its CPU until then is
        nobody's."""
        deadline = time.monotonic() + deadline_s
        self.take()
        while time.monotonic() < deadline:
            time.sleep(interval)  # sampling another process's CPU: there is no event to wait on
            if self.take() < busy * interval:
                return
        print(f"the server stayed busy for {deadline_s:.0f} s; measuring anyway", file=sys.stderr)


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


def _sequential_round_trip_ms(url: str, calls: int = 30) -> float:
    """MLflow's own client asking ``get_run`` one call at a time, as ``mlflow_latency`` measures
    it: the latency the peer pays on every one of its sequential calls, recorded with the result
    because it differs between machines (a kernel that delays the ACK of the answer's headers
    adds ~40 ms)."""
    from mlflow.tracking import MlflowClient

    from bench.scenarios.mlflow_latency import sequential_call_ms

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    run_id = client.search_runs([experiment.experiment_id], max_results=1)[0].info.run_id
    return sequential_call_ms(lambda: client.get_run(run_id), calls)


def _warm_up(url: str, workdir: Path) -> None:
    """Touch every endpoint once: a fresh server imports its handlers on first use, and that
    cost must not land on whichever tool happens to be measured first."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.create_experiment(f"warm-up-{uuid.uuid4().hex}")
    run_id = client.create_run(experiment, run_name="warm-up").info.run_id
    client.log_batch(run_id, metrics=[Metric("m", 1.0, T0, 0)], params=[Param("p", "1")])
    client.get_metric_history(run_id, "m")
    workdir.mkdir(parents=True, exist_ok=True)
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


# -- the measured phases (run in a child process) -------------------------------------------------
def _phase(phase: str, config_path: Path) -> int:
    from engine.__main__ import _pyarrow_without_pandas
    from engine.config import load_config

    _pyarrow_without_pandas()  # as the command line does: the phases are timed as runferry runs
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
