"""Peak RSS with default settings as runs multiply, lengthen, mix and grow artifacts (synthetic -> local, CLI).

Run admission bounds memory by a budget, not by a fixed number of runs (issue #17), and every
stage streams (issue #12). This scenario runs ``python -m engine migrate`` with runferry's
defaults (no ``runs_concurrency``, no ``chunk_points``, the default ``memory_budget``) on four
shapes, each in a fresh child, and reads every export back before reporting:

- ``many-small``: 10,000 runs of 200 points (20 steps x 10 keys), one 1 KiB file each;
- ``few-long``: 10 runs of 10,000,000 points each;
- ``mix``: 5,000 runs of 200 points and 5 runs of 10,000,000 points in one migration;
- ``big-artifacts``: 2 runs, each with one 5 GiB artifact member (10 GiB written).

Verification: the export holds exactly the runs, history points and file/artifact bytes the
source defines (``bench.common.local_export_totals``), else the scenario fails. Target: peak
RSS under 250 MB in every case.

    python -m bench memory_admission [--cases many-small,few-long,mix,big-artifacts --scale 1.0]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import child_env, human, local_export_totals, print_table, python_child, rate, run_child, write_toml
from bench.results import Sample, package_version, write_result

GIB = 1 << 30
CASES: dict[str, dict[str, Any]] = {
    "many-small": {"runs": 10_000, "projects": 10, "steps": 20, "file_sizes": [1024], "artifact_sizes": []},
    "few-long": {"runs": 10, "projects": 1, "steps": 1_000_000, "file_sizes": [], "artifact_sizes": []},
    "mix": {"runs": 5_005, "projects": 5, "steps": 20, "long_runs": 5, "long_steps": 1_000_000,
            "file_sizes": [1024], "artifact_sizes": []},
    "big-artifacts": {"runs": 2, "projects": 1, "steps": 20, "file_sizes": [], "artifact_sizes": [5 * GIB]},
}
KEYS = 10


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench memory_admission", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply run counts, long-run steps and artifact sizes (e.g. 0.01 for a smoke run)")
    p.add_argument("--target-mb", type=float, default=250.0, help="peak RSS every case must stay under")
    p.add_argument("--workdir", help="keep outputs here (default: a temporary directory, removed)")
    return p.parse_args(argv)


def scaled(shape: dict[str, Any], scale: float) -> dict[str, Any]:
    """The case's synthetic source table at ``scale`` (counts and sizes shrink, never to zero)."""
    out = dict(shape)
    long_runs = int(shape.get("long_runs", 0))
    short_runs = int(shape["runs"]) - long_runs
    if long_runs:
        out["long_runs"] = max(1, round(long_runs * scale))
        out["long_steps"] = max(1, round(int(shape["long_steps"]) * scale))
    elif int(shape["steps"]) > 1000:
        out["steps"] = max(1, round(int(shape["steps"]) * scale))
    out["runs"] = out.get("long_runs", 0) + max(1, round(short_runs * scale))
    out["projects"] = max(1, min(int(shape["projects"]), out["runs"]))
    out["artifact_sizes"] = [max(1, round(size * scale)) for size in shape["artifact_sizes"]]
    return out


def expected(shape: dict[str, Any]) -> dict[str, int]:
    """What the export of ``shape`` must hold."""
    long_runs = int(shape.get("long_runs", 0))
    runs = int(shape["runs"])
    points = ((runs - long_runs) * int(shape["steps"]) + long_runs * int(shape.get("long_steps", 0))) * KEYS
    file_bytes = runs * (sum(shape["file_sizes"]) + sum(shape["artifact_sizes"]))
    return {"runs": runs, "points": points, "file_bytes": file_bytes}


def main(argv: list[str]) -> int:
    a = _args(argv)
    names = [n for n in a.cases.split(",") if n]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-memory-admission-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows, samples = [], []
    try:
        for name in names:
            shape = scaled(CASES[name], a.scale)
            out = workdir / f"{name}-export"
            shutil.rmtree(out, ignore_errors=True)
            config = write_toml(workdir / f"{name}.toml", {
                "source": {"type": "synthetic", "keys": KEYS, "console_lines": 0, **shape},
                "destination": {"type": "local", "path": str(out)},
                "transfer": {"ledger": str(workdir / f"{name}-ledger.jsonl"), "incremental": False},
            })
            (workdir / f"{name}-ledger.jsonl").unlink(missing_ok=True)
            child = run_child(python_child("engine", "migrate", str(config), "--log-format", "plain"), cwd=workdir,
                              env=child_env())
            child.check()
            want, got = expected(shape), local_export_totals(out)
            if got != want:
                raise SystemExit(f"{name}: the export holds {got}, the source defines {want}: no figure reported")
            rows.append({"case": name, "runs": f"{want['runs']:,}", "points": f"{want['points']:,}",
                         "bytes": human(want["file_bytes"]), "wall s": child.wall_s, "cpu s": child.cpu_s,
                         "points/s": human(rate(want["points"], child.wall_s)), "peak RSS MB": child.peak_rss_mb})
            samples.append(Sample(name, 0, child.wall_s, child.cpu_s, child.peak_rss_mb, {**want, "shape": shape}))
            print(f"  {name}: verified, peak RSS {child.peak_rss_mb:.0f} MB, {child.wall_s:.1f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        print(f"synthetic -> local with runferry's defaults, {KEYS} keys per step, scale {a.scale}")
        print_table(rows)
        worst = max(samples, key=lambda s: s.peak_rss_mb)
        path = write_result("memory_admission", inputs=vars(a), samples=samples,
                            versions={"runferry": package_version("runferry")},
                            headline={"target_mb": a.target_mb, "worst_case": worst.tool,
                                      "worst_peak_rss_mb": round(worst.peak_rss_mb, 1)},
                            variant=None if a.scale == 1.0 and names == list(CASES) else "partial")
        print(f"result: {path}")
        if worst.peak_rss_mb >= a.target_mb:
            raise SystemExit(f"{worst.tool}: peak RSS {worst.peak_rss_mb:.0f} MB, over the {a.target_mb:.0f} MB target")
        print(f"target met: every case under {a.target_mb:.0f} MB (worst: {worst.tool}, {worst.peak_rss_mb:.0f} MB)")
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
