"""Peak RSS vs history length: one run of 1M and one of 10M points, synthetic -> local via the CLI.

Streaming means memory is bounded by chunk sizes and queue depths, not by how long a run's
history is: the 10M/1M peak-RSS ratio should be close to 1 (target: peak < 250 MB at 10M).

    python -m bench memory_scaling [--sizes 1000000,10000000 --keys 10 --chunk-points 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench.common import child_env, human, int_list, local_export_totals, print_table, python_child, rate, run_child, write_toml
from bench.results import Sample, package_version, write_result


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench memory_scaling", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,10000000", help="history points of the single run, per case")
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--chunk-points", type=int, default=100_000)
    p.add_argument(
        "--arrow-pool",
        choices=("default", "jemalloc", "mimalloc", "system"),
        default="default",
        help="Arrow memory pool of the children (ARROW_DEFAULT_MEMORY_POOL); default: pyarrow's choice",
    )
    p.add_argument("--target-mb", type=float, default=250.0, help="peak RSS the largest case must stay under")
    p.add_argument("--workdir", help="keep outputs here (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _config(workdir: Path, points: int, keys: int, chunk_points: int) -> Path:
    name = f"run-{points}"
    return write_toml(
        workdir / f"{name}.toml",
        {
            "source": {
                "type": "synthetic",
                "runs": 1,
                "projects": 1,
                "steps": max(1, points // keys),
                "keys": keys,
                "file_sizes": [],
                "artifact_sizes": [],
            },
            "destination": {"type": "local", "path": str(workdir / f"{name}-export")},
            "transfer": {"ledger": str(workdir / f"{name}-ledger.jsonl"), "chunk_points": chunk_points, "incremental": False},
        },
    )


def main(argv: list[str]) -> int:
    a = _args(argv)
    sizes = int_list(a.sizes)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows, results = [], []
    try:
        # what every child pays before moving anything: the interpreter and the engine's imports
        env = child_env(arrow_pool=a.arrow_pool)
        startup = run_child(python_child("bench", "synthetic_local", "--phase", "startup", "--config", "-"), cwd=workdir, env=env)
        startup.check()
        rows.append({"history points": "start-up only", "wall s": startup.wall_s, "cpu s": startup.cpu_s,
                     "peak RSS MB": startup.peak_rss_mb})  # fmt: skip
        for points in sizes:
            config = _config(workdir, points, a.keys, a.chunk_points)
            argv = python_child("engine", "migrate", str(config), "--log-format", "plain")
            child = run_child(argv, cwd=workdir, env=env)
            child.check()
            stored = (points // a.keys) * a.keys
            exported = local_export_totals(workdir / f"run-{points}-export")
            if (exported["runs"], exported["points"]) != (1, stored):
                raise SystemExit(f"export of {points:,} points holds {exported}, expected 1 run of {stored:,} points")
            rows.append({
                "history points": f"{stored:,}",
                "wall s": child.wall_s,
                "cpu s": child.cpu_s,
                "peak RSS MB": child.peak_rss_mb,
                "points/s": human(rate(stored, child.wall_s)),
                "points/cpu-s": human(rate(stored, child.cpu_s)),
            })  # fmt: skip
            results.append(
                {"points": stored, "wall_s": child.wall_s, "cpu_s": child.cpu_s, "peak_rss_bytes": child.peak_rss_bytes}
            )
            shutil.rmtree(workdir / f"run-{points}-export", ignore_errors=True)
        print(f"one run, synthetic -> local, {a.keys} keys per step, chunk_points={a.chunk_points}, arrow pool={a.arrow_pool}")
        print_table(rows)
        if len(results) >= 2:
            small, large = results[0], results[-1]
            print(f"\npeak RSS ratio {large['points']:,} / {small['points']:,} points = "
                  f"{large['peak_rss_bytes'] / small['peak_rss_bytes']:.2f} "
                  f"(history {large['points'] / small['points']:.0f}x longer); "
                  f"above start-up: {(large['peak_rss_bytes'] - startup.peak_rss_bytes) / 1e6:.0f} MB vs "
                  f"{(small['peak_rss_bytes'] - startup.peak_rss_bytes) / 1e6:.0f} MB")  # fmt: skip
        samples = [Sample(f"{r['points']:,} points", 0, r["wall_s"], r["cpu_s"], r["peak_rss_bytes"] / 1e6) for r in results]
        largest = results[-1]
        path = write_result("memory_scaling", inputs=vars(a), samples=samples, versions={"runferry": package_version("runferry")},
                            headline={"largest_points": largest["points"], "target_mb": a.target_mb,
                                      "largest_peak_rss_mb": largest["peak_rss_bytes"] / 1e6})
        print(f"result: {path}")
        if largest["peak_rss_bytes"] / 1e6 >= a.target_mb:
            raise SystemExit(f"peak RSS {largest['peak_rss_bytes'] / 1e6:.0f} MB at {largest['points']:,} points: "
                             f"over the {a.target_mb:.0f} MB target")
        print(f"target met: peak RSS {largest['peak_rss_bytes'] / 1e6:.0f} MB < {a.target_mb:.0f} MB at {largest['points']:,} points")
        if a.json:
            print(json.dumps({"startup_peak_rss_bytes": startup.peak_rss_bytes, "cases": results}))

    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
