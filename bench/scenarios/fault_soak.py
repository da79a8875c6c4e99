"""Fault soak: MLflow -> W&B and W&B -> W&B through seeded fault storms (10,000+ faults), then exact.

One real ``mlflow server`` and one W&B-compatible server (its own process) are seeded directly
with the same synthetic runs (history, files, console log, artifacts). Two migrations then run
side by side, each through two ``tests.servers.storm_front.StormFront`` fronts (one before the
source, one before the destination) that inject, from one seed: connection resets, 500/502/504,
429 with ``Retry-After`` (mostly 0, now and then 1 s), 503 SlowDown, timeouts (held silent, then
cut), and, on requests that cannot change state, truncated and slow bodies. Small pages and
chunks (``--history-page``, ``--chunk-points``) make many requests, so many faults.

The migrations run with runferry's default limits and retry budget (``python -m engine migrate
--log-format json``). Afterwards the storms stop and ``python -m engine verify`` must find every
run identical (metadata, every history point, every file's bytes), and for every front the
client's own counts (``throttle`` and ``retry`` events of that endpoint) must equal what the
front injected: throttles = 429 + SlowDown, retries = every fault but slow bodies. Any
difference fails the bench.

    python -m bench fault_soak [--runs 8 --steps 4000 --rate 0.15 --seed 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ChildResult, child_env, print_table, python_child, run_child, write_toml
from bench.results import Sample, package_version, write_result
from bench.wandb_data import WandbServerProcess
from tests.servers.mlflow_server import MlflowServer
from tests.servers.storm_front import Storm, StormFront

KEY = "s" * 8 + "runferryfaultsoak" + "0" * 15
KEY_ENV = "RF_SOAK_KEY"
ENTITY = "soak"
CLIENT_TIMEOUT_S = 3.0  # the sources' read timeout; a "timeout" fault holds longer


@dataclass(frozen=True)
class Shape:
    """The dataset and the storm (the bench's defaults make 10,000+ faults)."""

    runs: int = 22  # 12,171 faults measured (bench/results/fault_soak.json); 14 runs made 7,621
    steps: int = 3000
    keys: int = 4
    rate: float = 0.3
    seed: int = 1
    # many small reads, where every kind of fault may strike; few writes: W&B paces file_stream
    # at 2 requests/s per run, so small chunks would only make the soak wait
    history_page: int = 10  # MLflow get-history points per page (bulk reading off: one key, one run)
    wandb_history_rows: int = 10  # W&B HistoryPage rows
    chunk_points: int = 5000
    # slow bodies cost no retry budget; resets, 5xx, timeouts and truncations cost 5 each and a
    # success refunds 1 (runferry's defaults), so they stay under a fifth of the requests
    weights: tuple[tuple[str, float], ...] = (
        ("reset", 0.15), ("5xx", 0.2), ("429", 0.006), ("slowdown", 0.004), ("timeout", 0.003), ("truncate", 0.14),
        ("slow", 0.45),
    )
    files: tuple[int, ...] = (3000, 0, 70000)
    artifacts: tuple[int, ...] = (9000, 2)


@dataclass
class Leg:
    """One migration: its fronts, its child and what it reported."""

    name: str
    source: StormFront
    destination: StormFront
    config: Path
    verify_config: Path  # the same pair, read back with the sources' default page sizes
    result: ChildResult | None = None
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event, endpoint) -> n
    totals: dict[str, int] = field(default_factory=dict)  # the report's throttles and retries

    def counted(self, front: StormFront, event: str) -> int:
        """The client's ``event`` events at the front's endpoints (W&B's file_stream has one
        endpoint per run, named by its URL under the front's)."""
        return sum(n for (kind, name), n in self.events.items() if kind == event and _under(name, front.url))


def _under(endpoint: str, url: str) -> bool:
    return endpoint == url or endpoint.startswith(url + "/")


@dataclass
class SoakOutcome:
    legs: list[Leg]
    verified: dict[str, str]  # leg -> verify's output
    rows: list[dict[str, Any]]  # per front: injected vs reported

    @property
    def faults(self) -> int:
        return sum(leg.source.faults() + leg.destination.faults() for leg in self.legs)

    @property
    def agrees(self) -> bool:
        """Per front, the client's throttle and retry events of its endpoints equal what it
        injected; per migration, the report's totals equal the sum over its two fronts."""
        fronts = all(r["throttles injected"] == r["throttles reported"] and r["retries caused"] == r["retries reported"]
                     for r in self.rows)
        totals = all(leg.totals == {"throttles": leg.source.throttles() + leg.destination.throttles(),
                                    "retries": leg.source.retries_caused() + leg.destination.retries_caused()}
                     for leg in self.legs)
        return fronts and totals


def synthetic(shape: Shape) -> dict[str, Any]:
    return {"type": "synthetic", "seed": 21, "runs": shape.runs, "projects": 1, "steps": shape.steps, "keys": shape.keys,
            "system_keys": 1, "console_lines": 40, "file_sizes": list(shape.files), "artifact_sizes": list(shape.artifacts)}


def soak(workdir: Path, shape: Shape, log: Any = print) -> SoakOutcome:
    """Seed, run both migrations through their storms, verify, and compare the counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = child_env({KEY_ENV: KEY})
    with MlflowServer(workdir / "mlflow") as mlflow, WandbServerProcess({KEY: [ENTITY]}, workdir / "wandb.log") as wandb:
        wandb_dst = {"type": "wandb", "base_url": wandb.url, "api_key_env": KEY_ENV, "entity": ENTITY}
        seeds = {
            "mlflow": {"type": "mlflow", "tracking_uri": mlflow.url, "experiment": "src-{experiment}"},
            "wandb": {**wandb_dst, "project": "src-{project}"},
        }
        for name, destination in seeds.items():
            transfer = {"ledger": str(workdir / f"seed-{name}.jsonl")}
            tables = {"source": synthetic(shape), "destination": destination, "transfer": transfer}
            config = write_toml(workdir / f"seed-{name}.toml", tables)
            run_child(python_child("engine", "migrate", str(config)), env=env).check()
        log(f"seeded {shape.runs} runs into MLflow and W&B")
        storm = Storm(seed=shape.seed, rate=shape.rate, weights=dict(shape.weights))
        fronts = [StormFront(mlflow.url, None, reads_only=True), StormFront(wandb.url, None, reads_only=False),
                  StormFront(wandb.url, None, reads_only=True), StormFront(wandb.url, None, reads_only=False)]
        for front in fronts:
            front.start()
        try:
            legs = [
                _leg(workdir, "mlflow->wandb", fronts[0], fronts[1], shape,
                     {"type": "mlflow", "tracking_uri": fronts[0].url, "experiments": ["src-*"], "timeout": CLIENT_TIMEOUT_S,
                      "history_page_size": shape.history_page, "bulk_history": False},
                     {"type": "wandb", "base_url": fronts[1].url, "api_key_env": KEY_ENV, "entity": ENTITY,
                      "project": "from-mlflow"}),
                _leg(workdir, "wandb->wandb", fronts[2], fronts[3], shape,
                     {"type": "wandb", "base_url": fronts[2].url, "api_key_env": KEY_ENV, "namespaces": [f"{ENTITY}/src-*"],
                      "timeout": CLIENT_TIMEOUT_S, "history_page_rows": shape.wandb_history_rows},
                     {"type": "wandb", "base_url": fronts[3].url, "api_key_env": KEY_ENV, "entity": ENTITY,
                      "project": "copy-{project}"}),
            ]
            for front in fronts:
                front.storm = storm
            threads = [threading.Thread(target=_migrate, args=(leg, env)) for leg in legs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for front in fronts:
                front.storm = None  # verify reads through calm fronts (the ledger names their URLs)
            for leg in legs:
                assert leg.result is not None
                log(f"{leg.name}: exit {leg.result.returncode} in {leg.result.wall_s:.1f} s")
                leg.result.check()
            verified = {leg.name: run_child(python_child("engine", "verify", str(leg.verify_config)), env=env).stdout
                        for leg in legs}
        finally:
            for front in fronts:
                front.stop()
    for i, front in enumerate(fronts):
        (workdir / f"front-{i}.injected").write_text("".join(f"{k} {m} {p}\n" for k, m, p in front.injected))
    rows = []
    for leg in legs:
        for role, front in (("source", leg.source), ("destination", leg.destination)):
            rows.append({
                "migration": leg.name, "front": role, "requests": front.requests, "faults": front.faults(),
                **{f"injected {k}": front.counts[k] for k in ("reset", "5xx", "429", "slowdown", "timeout", "truncate", "slow")},
                "throttles injected": front.throttles(), "throttles reported": leg.counted(front, "throttle"),
                "retries caused": front.retries_caused(), "retries reported": leg.counted(front, "retry"),
            })
    return SoakOutcome(legs, verified, rows)


def _leg(workdir: Path, name: str, source_front: StormFront, destination_front: StormFront, shape: Shape,
         source: dict[str, Any], destination: dict[str, Any]) -> Leg:
    slug = name.replace("->", "-to-")
    transfer = {"ledger": str(workdir / f"{slug}.jsonl"), "chunk_points": shape.chunk_points}
    config = write_toml(workdir / f"{slug}.toml", {"source": source, "destination": destination, "transfer": transfer})
    # verify reads through calm fronts: the small pages that made the storm's many requests
    # would only make it slow (the ledger's pair names the URLs, not the page sizes)
    calm = {k: v for k, v in source.items() if k not in _STORM_ONLY}
    verify_config = write_toml(workdir / f"{slug}-verify.toml",
                               {"source": calm, "destination": destination, "transfer": transfer})
    return Leg(name, source_front, destination_front, config, verify_config)


_STORM_ONLY = ("history_page_size", "bulk_history", "history_page_rows", "timeout")
"""Source keys set for the storm only (many small reads; a short timeout for held requests)."""


def _migrate(leg: Leg, env: dict[str, str]) -> None:
    leg.result = run_child(python_child("engine", "migrate", str(leg.config), "--log-format", "json"), env=env)
    leg.config.with_suffix(".stderr").write_text(leg.result.stderr)
    leg.config.with_suffix(".stdout").write_text(leg.result.stdout)
    for line in leg.result.stderr.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") in ("throttle", "retry"):
            leg.events[(event["event"], str(event.get("endpoint")))] += 1
    for line in leg.result.stdout.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "report":
            report = json.loads(line)
            leg.totals = {"throttles": report["throttles"], "retries": report["retries"]}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench fault_soak", description=__doc__.splitlines()[0])
    defaults = Shape()
    for name in ("runs", "steps", "keys", "seed", "history_page", "wandb_history_rows", "chunk_points"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--rate", type=float, default=defaults.rate, help="share of attempts faulted")
    parser.add_argument("--min-faults", type=int, default=10_000, help="fail the bench below this many faults")
    parser.add_argument("--workdir", default="", help="keep servers' data here (default: a temporary directory)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    a = _args(argv)
    shape = Shape(runs=a.runs, steps=a.steps, keys=a.keys, rate=a.rate, seed=a.seed, history_page=a.history_page,
                  wandb_history_rows=a.wandb_history_rows, chunk_points=a.chunk_points)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rf-fault-soak-") as tmp:
        outcome = soak(Path(a.workdir or tmp), shape)
    wall = time.perf_counter() - started
    print_table(outcome.rows)
    for leg in outcome.legs:
        print(f"{leg.name}: report totals {leg.totals}; verify:\n{outcome.verified[leg.name]}")
    identical = all(f"runs identical:      {shape.runs}" in text for text in outcome.verified.values())
    print(f"faults injected: {outcome.faults:,}; every run identical: {identical}; counts agree: {outcome.agrees}")
    samples = [Sample(leg.name, 0, leg.result.wall_s, leg.result.cpu_s, leg.result.peak_rss_mb, {})
               for leg in outcome.legs if leg.result is not None]
    path = write_result(
        "fault_soak",
        inputs={"runs": shape.runs, "steps": shape.steps, "keys": shape.keys, "rate": shape.rate, "seed": shape.seed,
                "history_page": shape.history_page, "wandb_history_rows": shape.wandb_history_rows,
                "chunk_points": shape.chunk_points, "bulk_history": False,
                "storm": dict(shape.weights)},
        versions={"mlflow": package_version("mlflow"), "aiohttp": package_version("aiohttp")},
        samples=samples,
        headline={"faults_injected": outcome.faults, "every_run_identical": identical, "counts_agree": outcome.agrees,
                  "wall_s": round(wall, 1), "fronts": outcome.rows,
                  "report_totals": {leg.name: leg.totals for leg in outcome.legs}},
        notes=["verify through calm fronts after the storms; counts: client's throttle/retry events per front endpoint"],
    )
    print(f"wrote {path}")
    return 0 if identical and outcome.agrees and outcome.faults >= a.min_faults else 1
