"""Many small runs, MLflow -> W&B with W&B's per-run file_stream limit: runferry defaults against W&B's MlflowImporter.

Org-wide migrations are mostly many small runs (sweeps, short experiments). This seeds one real
``mlflow server`` with ``--runs`` runs of ``--keys`` x ``--steps`` points (a few hundred) through
the official client, starts the W&B-compatible server (its own process) with W&B's documented
per-run file_stream limit on (``--filestream-rps-per-run``, default 2: 429 + Retry-After above
it), then measures, on the same data and servers, ``--repeats`` times each (order alternated, a
fresh W&B project every time):

- ``runferry``: ``python -m engine migrate`` with runferry's defaults (no ``runs_concurrency``:
  runs are admitted by memory budget and endpoint headroom, up to 64 in flight);
- ``peer``: ``wandb.apis.importers.mlflow.MlflowImporter`` (wandb 0.27.0, venv from
  ``bench/wandb027.py``) with its defaults, ``import_runs(runs, artifacts=False)``.

Both W&B projects are read back with ``wandb.Api`` and every point compared with MLflow; no time
is reported unless both hold every point exactly.

W&B's per-project run-creation limit is on too (``--run-creation-rps-per-project``, default 80:
W&B's documented default for Dedicated Cloud and Self-Managed, see wandb-protocol.md; 0 = off):
UpsertBucket creating a run above it is answered 429 + Retry-After.

The bound the limits allow (``limits_bound_s``), with every run in parallel: both limits are
sliding one-second windows, so ``b = max(1, floor(rate))`` requests go per window of ``b / rate``
seconds. A run of ``k`` file_stream requests (``--requests-per-run``, 2 for a small run: lines,
then summary with ``complete``) needs ``(ceil(k / b) - 1) * b / rate`` seconds of windows; the
project's runs are created no faster than ``b`` per window, so the last one starts after
``(ceil(runs / b) - 1) * b / rate`` seconds and needs its own file_stream time after that. The
bound is the sum (round trips and the source's reads are not in it: it is what the limits
alone allow). runferry's median is reported against it (target: within 1.2x), and against the
time reading the source alone takes (``source_read_s``: every run's metadata and history, as
many runs at once as runferry's ceiling, nothing written; measured once).

    python -m bench many_small_runs [--runs 1000 --keys 2 --steps 100 --skip-peer]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
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
from engine.admission import AUTO_RUNS_CEILING
from bench.scenarios.mlflow_wandb import (
    API_KEY,
    ENTITY,
    PEER_SCRIPT,
    READ_ONLY_SCRIPT,
    T0,
    _exact_points,
    _mlflow_server,
    _wandb_server,
)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench many_small_runs", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--keys", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--filestream-rps-per-run", type=float, default=2.0)
    p.add_argument("--run-creation-rps-per-project", type=float, default=80.0,
                   help="W&B's documented default run-creation limit per project (0 = off)")
    p.add_argument("--server-workers", type=int, default=4)
    p.add_argument("--requests-per-run", type=int, default=2,
                   help="file_stream requests one run needs (lines + summary + complete; 2 for a small run)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-repeats", type=int, default=None,
                   help="rounds of the peer (default --repeats; it takes ~0.7 s a run): the first rounds alternate")
    p.add_argument("--skip-peer", action="store_true", help="measure runferry only")
    p.add_argument("--workdir", help="keep servers' data here (default: a temporary directory)")
    a = p.parse_args(argv)
    a.backend_store = "sqlite"  # what _mlflow_server reads
    return a


def main(argv: list[str]) -> int:
    a = _args(argv)
    sys.path.insert(0, str(REPO))
    if a.workdir:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        return _drive(a, Path(a.workdir))
    with tempfile.TemporaryDirectory(prefix="bench-many-small-") as tmp:
        return _drive(a, Path(tmp))


def _drive(a: argparse.Namespace, workdir: Path) -> int:
    peer_python = None
    if not a.skip_peer:
        from bench.wandb027 import ensure_wandb027

        peer_python = ensure_wandb027(importers=True)
    with contextlib.ExitStack() as stack:
        mlflow_server = stack.enter_context(_mlflow_server(workdir, a))
        wandb_url = stack.enter_context(_wandb_server(workdir, a))
        _note(f"seeding {a.runs} runs x {a.keys} keys x {a.steps} steps")
        expected = _seed(mlflow_server.url, a)
        points = sum(len(p) for p in expected.values())
        env = child_env({"WANDB_BASE_URL": wandb_url, "WANDB_API_KEY": API_KEY, "BENCH_WANDB_KEY": API_KEY})
        # a fresh MLflow server answers its first requests far slower: one unmeasured drain first
        warm = write_toml(workdir / "warm-up.toml", {
            "source": {"type": "mlflow", "tracking_uri": mlflow_server.url},
            "destination": {"type": "local", "path": str(workdir / "unused")},
            "transfer": {"ledger": str(workdir / "warm-up-ledger.jsonl"), "runs_concurrency": 16},
        })
        _note("warming the MLflow server up")
        run_child([sys.executable, "-c", READ_ONLY_SCRIPT, str(warm)], env=env).check()
        # what the source alone allows: every run's metadata and history read, as many at once as
        # runferry's ceiling, nothing written (measured once, after the warm-up)
        read = write_toml(workdir / "read-only.toml", {
            "source": {"type": "mlflow", "tracking_uri": mlflow_server.url},
            "destination": {"type": "local", "path": str(workdir / "unused")},
            "transfer": {"ledger": str(workdir / "read-only-ledger.jsonl"), "runs_concurrency": AUTO_RUNS_CEILING},
        })
        source_read_s = run_child([sys.executable, "-c", READ_ONLY_SCRIPT, str(read)], env=env).check().wall_s
        _note(f"reading the source alone took {source_read_s:.2f} s")
        peer_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        peer_env.update({"WANDB_SILENT": "true", "WANDB_DIR": str(workdir / "peer"), "WANDB_MODE": "online",
                         "WANDB_CACHE_DIR": str(workdir / "peer" / "cache"),
                         "WANDB_CONFIG_DIR": str(workdir / "peer" / "config")})

        def measure(tool: str, repeat: int) -> Sample:
            project = f"{tool}-r{repeat}"  # a fresh destination project every time
            if tool == "runferry":
                config = write_toml(workdir / f"{project}.toml", {
                    "source": {"type": "mlflow", "tracking_uri": mlflow_server.url},
                    "destination": {"type": "wandb", "base_url": wandb_url, "api_key_env": "BENCH_WANDB_KEY",
                                    "entity": ENTITY, "project": project},
                    "transfer": {"ledger": str(workdir / f"{project}-ledger.jsonl")},  # runferry's defaults otherwise
                })
                result = run_child(python_child("engine", "migrate", str(config), "--log-format", "plain",
                                                "--interval", "1"), env=env).check()
                (workdir / f"{project}.log").write_text(result.stderr)  # progress lines: what bounded it
            else:
                home = workdir / "peer" / project
                home.mkdir(parents=True)
                result = run_child([str(peer_python), "-c", PEER_SCRIPT, mlflow_server.url, ENTITY, project],
                                   cwd=home, env=peer_env).check()
            exact = _exact_points(wandb_url, project, expected)
            if exact != points:
                raise SystemExit(f"{tool} (round {repeat + 1}) holds {exact:,} of {points:,} points exactly: "
                                 "no time reported")
            extra: dict[str, Any] = {"exact_points": exact}
            if tool == "runferry":
                extra.update(_report_rows(result.stdout, "runs failed", "admission waited on", "throttling events"))
                if extra.get("runs failed") != "0":
                    raise SystemExit(f"runferry (round {repeat + 1}) failed runs: {result.stdout[-2000:]}")
            return Sample(tool, repeat, result.wall_s, result.cpu_s, result.peak_rss_mb, extra)

        tools = ["runferry"] + ([] if peer_python is None else ["peer"])
        samples = run_alternated(tools, a.repeats, measure, log=lambda line: _note(line.strip()),
                                 rounds=None if a.peer_repeats is None else {"peer": a.peer_repeats})
    summary = summarize(samples)
    rows: list[dict[str, Any]] = [
        {"tool": tool, "wall_s median": round(summary[tool].median, 2),
         "min-max": f"{summary[tool].low:.2f}-{summary[tool].high:.2f}",
         "runs_per_s": round(a.runs / summary[tool].median, 1), "exact_points": points}
        for tool in tools
    ]
    print(f"\nMLflow -> W&B: {a.runs} runs x {a.keys} keys x {a.steps} steps = {points:,} points; "
          f"file_stream limit {a.filestream_rps_per_run}/s per run; {a.repeats} rounds, order alternated, a fresh "
          "project each time; every output verified: every point exact\n")
    print_table(rows)
    per_run = windowed_seconds(a.requests_per_run, a.filestream_rps_per_run)
    creation = windowed_seconds(a.runs, a.run_creation_rps_per_project or None)
    bound = creation + per_run
    against_bound = summary["runferry"].median / max(bound, 1e-9)
    creation_text = (f"{a.runs} runs created at {a.run_creation_rps_per_project:g}/s per project: the last after "
                     f"{creation:.2f} s" if a.run_creation_rps_per_project else "no run-creation limit")
    print(f"\nbound of the limits, every run in parallel: {creation_text}; a run of {a.requests_per_run} file_stream "
          f"requests at {a.filestream_rps_per_run:g}/s needs {per_run:.2f} s more -> {bound:.2f} s "
          f"(runferry took {against_bound:.2f}x that; target 1.2x)")
    print(f"reading the source alone (metadata and history, {AUTO_RUNS_CEILING} runs at a time, nothing written) took "
          f"{source_read_s:.2f} s: runferry took {summary['runferry'].median / source_read_s:.2f}x that")
    headline: dict[str, Any] = {"points": points, "runs": a.runs, "runferry_wall_s": summary["runferry"].median,
                                "limits_bound_s": round(bound, 2), "runferry_vs_bound": round(against_bound, 2),
                                "source_read_s": round(source_read_s, 2)}
    if "peer" in summary:
        ratio = ratio_of_medians(summary, "peer", "runferry")
        headline["ratio_vs_peer"] = round(ratio, 2)
        print(f"runferry is {ratio:.1f}x faster than W&B's MlflowImporter (ratio of median wall times)")
    versions = {"runferry": package_version("runferry"), "mlflow": package_version("mlflow"),
                "wandb (peer)": "0.27.0" if peer_python else None, "wandb (oracle)": package_version("wandb")}
    notes = ["shared 2-core machine under other load: absolute times swing, ratios less",
             "the bound counts the limits only; every run also reads its history from one MLflow server"]
    if "peer" in summary and summary["peer"].n < a.repeats:
        notes.append(f"the peer (~0.7 s a run) was measured {summary['peer'].n} time(s), runferry {a.repeats}: "
                     "the first rounds alternate")
    path = write_result("many_small_runs", inputs=vars(a), versions=versions, samples=samples, headline=headline,
                        variant="runferry-only" if a.skip_peer else None, notes=notes)
    print(f"result: {path}")
    return 0


def _report_rows(report: str, *names: str) -> dict[str, str]:
    """The named rows of runferry's closing report (``name  value``)."""
    rows = {}
    for line in report.splitlines():
        for name in names:
            if line.startswith(name + "  "):
                rows[name] = line[len(name):].strip()
    return rows


def windowed_seconds(requests: int, rate: float | None) -> float:
    """Least time ``requests`` take under a sliding one-second window of ``rate`` per second
    (``b = max(1, floor(rate))`` per ``b / rate`` seconds, the first ``b`` at once); 0 unlimited."""
    if rate is None or requests <= 0:
        return 0.0
    burst = max(1, math.floor(rate))
    return (math.ceil(requests / burst) - 1) * burst / rate


def _note(text: str, started: float = time.monotonic()) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)


def _seed(url: str, a: argparse.Namespace) -> dict[str, list[tuple[str, int, float]]]:
    """``a.runs`` runs of ``a.keys`` x ``a.steps`` points, 4 at a time (one ``log_batch`` each
    when they fit); returns run id -> [(key, step, value)]. Values as in ``mlflow_wandb``."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.create_experiment("bench")

    def one(r: int) -> tuple[str, list[tuple[str, int, float]]]:
        rid = client.create_run(experiment, run_name=f"run-{r}", start_time=T0).info.run_id
        metrics = [Metric(f"metric_{k:02d}", math.sin(step * 0.01 + k) * (r + 1), T0 + step * 1000, step)
                   for step in range(a.steps) for k in range(a.keys)]
        params = [Param(f"p{i}", str(i * r)) for i in range(10)]
        for start in range(0, max(1, len(metrics)), 1000):
            client.log_batch(rid, metrics=metrics[start:start + 1000], params=params if start == 0 else [])
        client.set_terminated(rid, "FINISHED", end_time=T0 + a.steps * 1000)
        return rid, [(m.key, m.step, m.value) for m in metrics]

    with ThreadPoolExecutor(4) as pool:  # more jams the server's SQLite store
        return dict(pool.map(one, range(a.runs)))
