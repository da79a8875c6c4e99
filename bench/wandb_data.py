"""The W&B benches' data: servers in their own processes, a dataset written through the official
SDK, and what ``wandb.Api()`` reads of it (the oracle both tools' outputs are compared with).

Why one module: ``wandb_wandb`` and ``wandb_export`` must measure on the same data, read it
back the same way and say the same things about what differs.

The dataset (``seed``): ``projects`` projects of ``runs`` runs each in entity ``src``; every run
logs ``steps`` history rows of ``keys`` float metrics plus an integer ``epoch`` (so
``projects * runs * steps * (keys + 1)`` points), a config with nested values, a metric
definition, a summary value set directly, console lines, system metrics (sampled every 0.5 s),
and a ``model-p<i>`` artifact version of ``artifact_kib`` random KiB with a unique alias; the
first run of a project logs a ``dataset-p<i>`` artifact (alias ``golden``) that the project's
other runs use, and the last run of each project fails (exit code 1).

Artifact names differ between projects on purpose: wandb 0.27.0's importer downloads every
version it copies to ``./artifacts/src/<name>:v<N>`` and copies sequences in parallel, so
same-named collections of two projects overwrite each other's files there and it uploads one
project's bytes into the other (seen in this bench: wrong digests, missing versions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from bench.common import REPO, child_env, python_child, run_child

SRC_KEY = "a" * 40
DST_KEY = "d" * 40
SRC_ENTITY = "src"
DST_ENTITY = "dst"


class WandbServerProcess:
    """``python -m tests.servers.wandb`` in its own process (its CPU is in no measured child).

    ``cpu_s()`` is the server's CPU time so far, so a bench can say whether the server or the
    client bounded a run."""

    def __init__(self, keys: dict[str, list[str]], log: Path, filestream_rps_per_run: float | None = None,
                 *, history_exports: bool = False) -> None:
        self.argv = python_child("tests.servers.wandb", "--port", "0")
        if history_exports:  # finished runs' history exported to parquet (parquetHistory)
            self.argv += ["--export-history-on-finish"]
        for key, entities in keys.items():
            self.argv += ["--key", f"{key}={','.join(entities)}"]
        if filestream_rps_per_run:
            self.argv += ["--filestream-rps-per-run", str(filestream_rps_per_run)]
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=child_env({"PYTHONUNBUFFERED": "1"}),
                                     stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "listening on" not in line:
            self.proc.kill()
            raise SystemExit(f"W&B-compatible server did not start ({line!r}); see {self.log}")
        self.url = line.rsplit(" ", 1)[1].strip()
        return self

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sdk_env(url: str, key: str, home: Path, **extra: str) -> dict[str, str]:
    """Environment of an official-SDK child: its server and key, its own scratch dirs."""
    home.mkdir(parents=True, exist_ok=True)
    env = child_env({
        "WANDB_BASE_URL": url, "WANDB_API_KEY": key, "WANDB_MODE": "online", "WANDB_SILENT": "true",
        "WANDB_DIR": str(home), "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_DATA_DIR": str(home / "data"), "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", **extra,
    })
    return env


def seed(url: str, home: Path, *, projects: int, runs: int, steps: int, keys: int, artifact_kib: int) -> None:
    """Write the dataset through the current official SDK (one child process)."""
    argv = [sys.executable, "-m", "bench.wandb_data", url, str(projects), str(runs), str(steps), str(keys), str(artifact_kib)]
    run_child(argv, cwd=home, env=sdk_env(url, SRC_KEY, home)).check()


def add_dataset_args(p: argparse.ArgumentParser, scenario: str, *, steps: int = 1000) -> None:
    """The options every W&B bench shares: the dataset's size, repeats, work dir, variant."""
    p.add_argument("--projects", type=int, default=3)
    p.add_argument("--runs", type=int, default=4, help="runs per project")
    p.add_argument("--steps", type=int, default=steps, help="history rows per run")
    p.add_argument("--keys", type=int, default=10, help="float metrics per row (plus an integer 'epoch')")
    p.add_argument("--artifact-kib", type=int, default=256, help="size of each run's model artifact")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    p.add_argument("--variant", help=f"write bench/results/{scenario}-VARIANT.json (e.g. a larger dataset), "
                                     f"not the headline {scenario}.json")


def in_workdir(a: argparse.Namespace, prefix: str, drive: Callable[[argparse.Namespace, Path], int]) -> int:
    """``drive(a, workdir)`` in ``--workdir`` (kept) or a temporary directory (removed)."""
    if a.workdir:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        return drive(a, Path(a.workdir))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return drive(a, Path(tmp))


def seed_and_read(server: WandbServerProcess, workdir: Path, a: argparse.Namespace) -> tuple[dict[str, dict], dict[str, int], float]:
    """Seed the dataset through the SDK, then read it back with ``wandb.Api()``: the oracle
    views, their size, and the seconds seeding took."""
    from bench.results import package_version

    print(f"seeding {a.projects} projects x {a.runs} runs x {a.steps} steps x {a.keys + 1} keys "
          f"through wandb {package_version('wandb')} ...", flush=True)
    started = time.perf_counter()
    seed(server.url, workdir / "seed", projects=a.projects, runs=a.runs, steps=a.steps, keys=a.keys,
         artifact_kib=a.artifact_kib)
    seed_s = time.perf_counter() - started
    source = namespace_view(api(server.url, SRC_KEY, workdir / "api"), SRC_ENTITY, project_names(a.projects))
    size = view_size(source)
    print(f"seeded in {seed_s:.1f} s: {size}", flush=True)
    return source, size, seed_s


def project_names(projects: int) -> list[str]:
    return [f"proj-{p}" for p in range(projects)]


def _write_dataset(projects: int, runs: int, steps: int, keys: int, artifact_kib: int) -> None:
    import math
    import random

    import wandb

    rng = random.Random(20261201)
    scratch = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    for p, project in enumerate(project_names(projects)):
        for r in range(runs):
            run = wandb.init(
                entity=SRC_ENTITY, project=project, id=f"p{p}r{r}", name=f"run {p}.{r}",
                config={"lr": 10 ** -(r % 4 + 1), "seed": r, "layers": [64, 32, r], "opt": {"name": "adam", "beta": 0.9}},
                tags=["bench", f"p{p}"], notes=f"bench run {p}.{r}", group=f"g{r % 2}", job_type="train",
                settings=wandb.Settings(x_stats_sampling_interval=0.5, console="wrap"),
            )
            run.define_metric("m00", summary="max")
            if r == 0:
                data = scratch / f"dataset-{p}.bin"
                data.write_bytes(rng.randbytes(64 << 10))
                dataset = wandb.Artifact(f"dataset-p{p}", type="dataset", description="bench inputs", metadata={"rows": 64})
                dataset.add_file(str(data), name="data.bin")
                run.log_artifact(dataset, aliases=["golden"])
            else:
                run.use_artifact(f"dataset-p{p}:golden")
            for step in range(steps):
                row = {f"m{k:02d}": math.sin(step * 0.01 + k) * (r + 1) + rng.random() * 1e-3 for k in range(keys)}
                row["epoch"] = step // 100
                run.log(row, step=step)
                if step % 500 == 0:
                    print(f"run {p}.{r} step {step}", flush=True)
            run.summary["best_direct"] = 0.5 + r
            weights = scratch / f"model-{p}-{r}.bin"
            weights.write_bytes(rng.randbytes(artifact_kib << 10))
            model = wandb.Artifact(f"model-p{p}", type="model", metadata={"run": r})
            model.add_file(str(weights), name="weights.bin")
            run.log_artifact(model, aliases=[f"r{r}"])
            run.finish(exit_code=1 if r == runs - 1 and runs > 1 else 0)


# --- reading back with wandb.Api() ------------------------------------------------------------


def api(url: str, key: str, home: Path) -> Any:
    """A ``wandb.Api`` on ``url`` with its caches under ``home`` (the driver's environment)."""
    import wandb

    home.mkdir(parents=True, exist_ok=True)
    for name, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        os.environ[name] = str(home / sub)
    os.environ["WANDB_SILENT"] = "true"
    return wandb.Api(api_key=key, overrides={"base_url": url}, timeout=300)


def dump(value: Any) -> str:
    """Canonical text: NaN/inf kept, -0.0 vs 0.0 and 1 vs 1.0 distinguished."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def run_view(run: Any) -> dict[str, Any]:
    """Everything compared of one run, as ``wandb.Api()`` reads it (``_runtime`` left out of rows:
    both tools recompute it)."""
    # a key read as None is one the row lacks (wandb-core's parquet reader fills them in)
    rows = [{k: v for k, v in row.items() if k != "_runtime" and v is not None}
            for row in run.scan_history(page_size=10_000)]
    system = [
        {k: v for k, v in line.items() if k == "_timestamp" or k.startswith("system.")}
        for line in run.history(stream="system", samples=1_000_000, pandas=False)
    ]
    logged = list(run.logged_artifacts())
    created = dt.datetime.fromisoformat(run.created_at.replace("Z", "+00:00"))
    if created.tzinfo is None:  # W&B answers naive UTC text
        created = created.replace(tzinfo=dt.UTC)
    return {
        "rows": rows, "system": system, "config": run.rawconfig, "summary": dict(run.summary_metrics),
        "tags": sorted(run.tags), "notes": run.notes, "group": run.group, "job_type": run.job_type,
        "state": run.state, "name": run.name, "created": created.timestamp(),
        "files": {f.name: (f.size, f.md5) for f in run.files()},
        "logged": sorted((a.name, a.type, a.digest, tuple(sorted(a.aliases))) for a in logged),
        "artifact_bytes": sum(a.size for a in logged),
        "used": sorted(a.name for a in run.used_artifacts()),
    }


def namespace_view(api_: Any, entity: str, projects: list[str]) -> dict[str, dict[str, Any]]:
    """``project/run_id`` -> run view, for every run of the projects."""
    out = {}
    for project in projects:
        for run in api_.runs(f"{entity}/{project}", per_page=100):
            out[f"{project}/{run.id}"] = run_view(run)
    return out


def view_size(views: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Points (history values, ``_step``/``_timestamp`` left out), rows and payload bytes:
    history and system lines as JSON plus file and artifact-version bytes."""
    points = rows = history_bytes = system_points = 0
    for v in views.values():
        for row in v["rows"]:
            rows += 1
            points += sum(1 for k in row if not k.startswith("_"))
            history_bytes += len(dump(row))
        for line in v["system"]:
            system_points += len(line) - 1
            history_bytes += len(dump(line))
    file_bytes = sum(size for v in views.values() for size, _ in v["files"].values())
    file_bytes += sum(v["artifact_bytes"] for v in views.values())
    return {"runs": len(views), "rows": rows, "points": points, "system_points": system_points,
            "history_bytes": history_bytes, "file_bytes": file_bytes}


def differences(src: dict[str, dict], dst: dict[str, dict], fields: dict[str, Any], limit: int = 20) -> list[str]:
    """What differs between two namespace views, field by field; ``fields`` maps a field name
    to a function (view -> comparable value) or ``None`` (the field as is)."""
    out: list[str] = []
    if sorted(src) != sorted(dst):
        out.append(f"runs: source has {len(src)}, destination {len(dst)}; "
                   f"missing {sorted(set(src) - set(dst))[:5]}, extra {sorted(set(dst) - set(src))[:5]}")
    for path in sorted(set(src) & set(dst)):
        for name, project in fields.items():
            a, b = (project or (lambda v, n=name: v[n]))(src[path]), (project or (lambda v, n=name: v[n]))(dst[path])
            if dump(a) != dump(b):
                out.append(f"{path} {name}: {_first_difference(a, b)}")
                if len(out) >= limit:
                    return out
    return out


def _first_difference(a: Any, b: Any) -> str:
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{len(a)} items at the source, {len(b)} at the destination"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if dump(x) != dump(y):
                return f"item {i}: source {dump(x)[:300]} / destination {dump(y)[:300]}"
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if dump(a.get(k)) != dump(b.get(k)):
                return f"key {k!r}: source {dump(a.get(k))[:300]} / destination {dump(b.get(k))[:300]}"
    return f"source {dump(a)[:300]} / destination {dump(b)[:300]}"


def main(argv: list[str]) -> int:
    url, projects, runs, steps, keys, artifact_kib = argv
    os.environ["WANDB_BASE_URL"] = url
    _write_dataset(int(projects), int(runs), int(steps), int(keys), int(artifact_kib))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

