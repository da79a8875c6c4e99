"""synthetic -> local: end to end through the CLI, and each adapter alone (generate only, write only).

Three measured children on the same data, so the end-to-end time can be read against its
limits: ``generate`` drains the synthetic source (history and file bytes, no writing),
``write`` fills the local destination from pre-built chunks (no generation), ``migrate``
is ``python -m engine migrate`` on a generated config. A ``startup`` child (imports only) gives
the fixed cost included in every child's numbers. Rates per CPU-second are "on one core".

    python -m bench synthetic_local [--runs 50 --steps 2000 --keys 10 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from bench.common import (
    ChildResult,
    child_env,
    human,
    int_list,
    local_export_totals,
    print_table,
    python_child,
    rate,
    run_child,
    write_toml,
)
from bench.results import Sample, package_version, write_result

PHASES = ("startup", "generate", "write", "migrate")
PREBUILT_CHUNKS = 8


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench synthetic_local", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--projects", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--special-fraction", type=float, default=0.001)
    p.add_argument("--file-sizes", default="4096,65536", help="comma-separated bytes per run file ('' = none)")
    p.add_argument("--artifact-sizes", default="1048576", help="comma-separated bytes per artifact member")
    p.add_argument("--runs-concurrency", type=int, default=4)
    p.add_argument("--chunk-points", type=int, default=100_000)
    p.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    p.add_argument(
        "--arrow-pool",
        choices=("default", "jemalloc", "mimalloc", "system"),
        default="default",
        help="Arrow memory pool of the children (ARROW_DEFAULT_MEMORY_POOL); default: pyarrow's choice",
    )
    p.add_argument("--workdir", help="keep outputs here (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_config(workdir: Path, a: argparse.Namespace, name: str = "bench") -> Path:
    return write_toml(
        workdir / f"{name}.toml",
        {
            "source": {
                "type": "synthetic",
                "runs": a.runs,
                "projects": a.projects,
                "steps": a.steps,
                "keys": a.keys,
                "special_fraction": a.special_fraction,
                "file_sizes": int_list(a.file_sizes),
                "artifact_sizes": int_list(a.artifact_sizes),
            },
            "destination": {"type": "local", "path": str(workdir / f"{name}-export")},
            "transfer": {
                "ledger": str(workdir / f"{name}-ledger.jsonl"),
                "runs_concurrency": a.runs_concurrency,
                "chunk_points": a.chunk_points,
                "incremental": False,
            },
        },
    )


# -- the in-process phases (run as children) --------------------------------------------------
def _adapters(config_path: Path) -> tuple[Any, Any, int]:
    from core.protocols import AdapterContext
    from adapters.local import LocalDestination
    from adapters.synthetic import SyntheticSource

    doc = tomllib.loads(config_path.read_text())
    src = {k: v for k, v in doc["source"].items() if k != "type"}
    dst = {k: v for k, v in doc["destination"].items() if k != "type"}
    chunk = doc["transfer"]["chunk_points"]
    context = AdapterContext(chunk_points=chunk)
    source = SyntheticSource(SyntheticSource.Config(**src), context)
    destination = LocalDestination(LocalDestination.Config(**dst), context)
    return source, destination, chunk


async def _generate(config_path: Path) -> dict[str, Any]:
    source, _, _ = _adapters(config_path)
    points = nbytes = 0
    async with source:
        async for ref in source.list_runs():
            record = await source.get_run(ref)
            async for chunk in source.iter_history(record):
                points += len(chunk)
            async for file in source.list_files(record):
                async for piece in source.read_file(record, file):
                    nbytes += len(piece)
    return {"points": points, "bytes": nbytes}


async def _write(config_path: Path) -> dict[str, Any]:
    """Fill the destination from pre-built records, the first run's first chunks (cycled) and
    one random piece, all built before the clock starts."""
    import os

    from core.model import HistoryChunk

    source, destination, _ = _adapters(config_path)
    async with source:
        records = [await source.get_run(ref) async for ref in source.list_runs()]  # bench sizes: fine
        first = records[0]
        # at most PREBUILT_CHUNKS real chunks, cycled: memory stays bounded for long histories
        chunks = []
        async for chunk in source.iter_history(first):
            if len(chunks) == PREBUILT_CHUNKS:
                break
            chunks.append(chunk.batch)
        total = first.history_points or 0
        files = [f async for f in source.list_files(first)]
    piece = os.urandom(1 << 20)

    async def stream(size: int) -> Any:
        for offset in range(0, size, len(piece)):
            yield piece[: min(len(piece), size - offset)]

    points = nbytes = 0
    started, cpu = time.perf_counter(), time.process_time()
    async with destination:
        for record in records:
            writer = await destination.open_run(record, None)
            offset, i = 0, 0
            while offset < total:
                batch = chunks[i % len(chunks)]
                batch = batch.slice(0, min(batch.num_rows, total - offset))
                await writer.write_history(HistoryChunk(batch=batch, offset=offset))
                offset += batch.num_rows
                i += 1
            points += offset
            await writer.flush_history()
            for file in files:
                await writer.write_file(file, stream(file.size or 0))
                nbytes += file.size or 0
            await writer.finish(record)
            await writer.aclose()
        await destination.finalize()
    return {"points": points, "bytes": nbytes, "inner_wall_s": time.perf_counter() - started,
            "inner_cpu_s": time.process_time() - cpu}  # fmt: skip


def _run_phase(phase: str, config_path: Path) -> int:
    import anyio

    if phase == "startup":
        import engine.pipeline  # noqa: F401  (what the CLI imports)
        from adapters import local, synthetic  # noqa: F401

        result: dict[str, Any] = {}
    else:
        import pyarrow.parquet  # noqa: F401  (imports stay out of the inner timings)

        from adapters import local, synthetic  # noqa: F401
        from core import model  # noqa: F401

        started, cpu = time.perf_counter(), time.process_time()
        result = anyio.run(_generate if phase == "generate" else _write, config_path)
        result.setdefault("inner_wall_s", time.perf_counter() - started)
        result.setdefault("inner_cpu_s", time.process_time() - cpu)
    print(json.dumps(result))
    return 0


# -- the driver -----------------------------------------------------------------------------------
def measure(phase: str, config: Path, workdir: Path, arrow_pool: str) -> tuple[ChildResult, dict[str, Any]]:
    env = child_env(arrow_pool=arrow_pool)
    if phase == "migrate":
        argv = python_child("engine", "migrate", str(config), "--log-format", "plain")
        return run_child(argv, cwd=workdir, env=env).check(), {}
    argv = python_child("bench", "synthetic_local", "--phase", phase, "--config", str(config))
    child = run_child(argv, cwd=workdir, env=env)
    child.check()
    return child, json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    a = _args(argv)
    if a.phase:
        return _run_phase(a.phase, Path(a.config))
    phases = [p for p in a.phases.split(",") if p]
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-synthetic-local-"))
    workdir.mkdir(parents=True, exist_ok=True)
    points = a.runs * a.steps * a.keys
    nbytes = a.runs * (sum(int_list(a.file_sizes)) + sum(int_list(a.artifact_sizes)))
    print(f"synthetic -> local: {a.runs} runs x {a.steps} steps x {a.keys} keys = {points:,} points, "
          f"{nbytes / 1e6:.1f} MB of files; runs_concurrency={a.runs_concurrency}, chunk_points={a.chunk_points}, "
          f"arrow pool={a.arrow_pool}")  # fmt: skip
    rows, results = [], {}
    try:
        for phase in phases:
            config = make_config(workdir, a, phase)
            shutil.rmtree(workdir / f"{phase}-export", ignore_errors=True)
            child, inner = measure(phase, config, workdir, a.arrow_pool)
            counted = phase != "startup"
            row = {
                "phase": phase,
                "wall s": child.wall_s,
                "cpu s": child.cpu_s,
                "peak RSS MB": child.peak_rss_mb,
                "runs/s": rate(a.runs, child.wall_s) if counted else "",
                "points/s": human(rate(points, child.wall_s)) if counted else "",
                "points/cpu-s": human(rate(points, child.cpu_s)) if counted else "",
                "MB/s": rate(nbytes / 1e6, child.wall_s) if counted else "",
            }
            if "inner_cpu_s" in inner:  # excluding interpreter start-up and imports
                row["inner points/cpu-s"] = human(rate(points, inner["inner_cpu_s"]))
            rows.append(row)
            results[phase] = {"wall_s": child.wall_s, "cpu_s": child.cpu_s, "peak_rss_bytes": child.peak_rss_bytes, **inner}
            if phase in ("write", "migrate"):  # read the export back before its time counts
                _verify_export(workdir / f"{phase}-export", a, points, nbytes)
        print_table(rows)
        samples = [Sample(phase, 0, r["wall_s"], r["cpu_s"], r["peak_rss_bytes"] / 1e6) for phase, r in results.items()]
        path = write_result("synthetic_local", inputs=vars(a), samples=samples, headline={"points": points},
                            versions={"runferry": package_version("runferry"), "pyarrow": package_version("pyarrow")})
        print(f"result: {path}")
        _print_ratios(results, points)
        if a.json:
            print(json.dumps({"points": points, "bytes": nbytes, "runs": a.runs, "phases": results}))
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _verify_export(export: Path, a: argparse.Namespace, points: int, nbytes: int) -> None:
    """The export read back: every run, every point (Parquet row counts), every file byte."""
    have = local_export_totals(export)
    want = {"runs": a.runs, "points": points, "file_bytes": nbytes}
    if have != want:
        raise SystemExit(f"{export.name} holds {have}, expected {want}: no time reported")


def _print_ratios(results: dict[str, dict[str, Any]], points: int) -> None:
    if not {"generate", "write", "migrate"} <= results.keys():
        return
    base = results.get("startup", {}).get("wall_s", 0.0)
    base_cpu = results.get("startup", {}).get("cpu_s", 0.0)
    gen, wri, mig = (results[p]["wall_s"] - base for p in ("generate", "write", "migrate"))
    mig_cpu = results["migrate"]["cpu_s"] - base_cpu
    print()
    print(f"net of start-up ({base:.2f} s wall, {base_cpu:.2f} s cpu per child):")
    print(f"  migrate / max(generate, write) = {mig / max(gen, wri, 1e-9):.2f}   "
          f"migrate / (generate + write) = {mig / max(gen + wri, 1e-9):.2f}")  # fmt: skip
    print(f"  end to end: {human(rate(points, mig))}points/s wall, {human(rate(points, mig_cpu))}points per cpu-second")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
