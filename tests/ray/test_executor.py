"""``executor = "ray"`` gives exactly what the local executor gives, also when a worker or the driver dies."""

from __future__ import annotations

import collections
import json
import re
import signal
import types
from pathlib import Path

import anyio
import pytest

from tests.ray.conftest import NO_RAY

ray = pytest.importorskip("ray", reason=NO_RAY)

from engine.config import load_config
from engine.ledger import RunStatus
from engine.ledger_store import read_ledger
from engine.pipeline import migrate
from engine.progress import Progress
from scaleout.executor import DRIVER_FAULT_ENV, FAULT_ENV, migrate_on_ray
from tests.e2e.test_cli import assert_exports_equal, toml_value
from tests.reliability.servers import engine

pytestmark = pytest.mark.usefixtures("ray_cluster")

SYNTHETIC = {
    "type": "synthetic",
    "seed": 5,
    "runs": 10,
    "projects": 2,
    "steps": 2000,
    "keys": 5,
    "special_fraction": 0.01,
    "file_sizes": [0, 70000],
    "artifact_sizes": [3],
}


def write(path: Path, **tables: dict) -> Path:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def configs(tmp_path: Path, source: dict, *, workers: int = 3, lease_seconds: float = 30) -> tuple[Path, Path]:
    local = write(tmp_path / "local.toml", source=source, destination={"type": "local", "path": str(tmp_path / "local")},
                  transfer={"ledger": str(tmp_path / "local.jsonl"), "chunk_points": 3000})
    on_ray = write(tmp_path / "ray.toml", source=source, destination={"type": "local", "path": str(tmp_path / "ray")},
                   transfer={"executor": "ray", "chunk_points": 3000},
                   ray={"workers": workers, "shard_runs": 1, "ledger": str(tmp_path / "ledger.d"),
                        "lease_seconds": lease_seconds})
    return local, on_ray


def run_local(path: Path) -> Progress:
    progress = Progress.quiet()
    report = anyio.run(lambda: migrate(load_config(path), progress=progress))
    assert report.exit_code == 0
    return progress


def run_on_ray(path: Path) -> Progress:
    progress = Progress.quiet()
    report = anyio.run(lambda: migrate_on_ray(load_config(path), progress=progress))
    assert report.exit_code == 0
    return progress


def test_synthetic_to_local_equals_the_local_executor(tmp_path: Path) -> None:
    local, on_ray = configs(tmp_path, SYNTHETIC)
    expected = run_local(local).totals
    got = run_on_ray(on_ray).totals
    assert_exports_equal(tmp_path / "local", tmp_path / "ray")
    assert (got.runs_selected, got.runs_done, got.points, got.files, got.bytes) == (
        expected.runs_selected, expected.runs_done, expected.points, expected.files, expected.bytes)
    config = load_config(on_ray)
    ledger = read_ledger(config, None)
    assert sorted(e.status for e in ledger.entries.values()) == [RunStatus.DONE] * 10
    again = run_on_ray(on_ray).totals  # an incremental re-run: a new plan, every run skipped
    assert (again.runs_selected, again.runs_skipped, again.runs_done, again.points) == (10, 10, 0, 0)
    assert_exports_equal(tmp_path / "local", tmp_path / "ray")


def test_a_worker_killed_mid_shard_still_gives_an_exact_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local, on_ray = configs(tmp_path, SYNTHETIC, workers=2, lease_seconds=2)
    run_local(local)
    monkeypatch.setenv(FAULT_ENV, "4")  # the first worker SIGKILLs itself before its 4th ledger line
    got = run_on_ray(on_ray).totals
    assert got.other["worker_lost"] == 1
    assert got.runs_done == 10 and got.runs_failed == 0
    assert_exports_equal(tmp_path / "local", tmp_path / "ray")
    config = load_config(on_ray)
    ledger = read_ledger(config, None)
    assert sorted(e.status for e in ledger.entries.values()) == [RunStatus.DONE] * 10
    journals = sorted(p.name for p in (tmp_path / "ledger.d").rglob("*.jsonl"))
    assert any(".e000002." in name for name in journals)  # the dead worker's shard was re-leased


def test_a_driver_killed_mid_migration_is_resumed_by_running_the_same_command_again(tmp_path: Path) -> None:
    """``python -m engine migrate`` (joining this session's cluster) SIGKILLs itself after 3 of 10
    shards, with others leased and in flight; the same command again finishes the rest exactly."""
    local, _ = configs(tmp_path, SYNTHETIC)
    on_ray = write(tmp_path / "driver.toml", source=SYNTHETIC,
                   destination={"type": "local", "path": str(tmp_path / "ray")},
                   transfer={"executor": "ray", "chunk_points": 3000},
                   ray={"address": "auto", "workers": 2, "shard_runs": 1, "ledger": str(tmp_path / "ledger.d"),
                        "lease_seconds": 2})
    run_local(local)
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    crashed = engine("migrate", str(on_ray), "--log-format", "plain", env={**env, DRIVER_FAULT_ENV: "3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    done_before = {e.run for e in _ledger_lines(tmp_path / "ledger.d") if e.ev == "done"}
    assert 3 <= len(done_before) < 10
    resumed = engine("migrate", str(on_ray), "--log-format", "plain", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    skipped, redone = (int(re.search(rf"{label}\s+(\d+)", resumed.stdout)[1])  # type: ignore[index]
                       for label in (r"runs skipped \(already done\)", "runs done"))
    assert skipped >= len(done_before) and redone >= 1 and skipped + redone == 10
    assert_exports_equal(tmp_path / "local", tmp_path / "ray")
    done = collections.Counter(e.run for e in _ledger_lines(tmp_path / "ledger.d") if e.ev == "done")
    assert sorted(done.values()) == [1] * 10  # every run done once: none redone, none lost
    ledger = read_ledger(load_config(on_ray), None)
    assert sorted(e.status for e in ledger.entries.values()) == [RunStatus.DONE] * 10


def _ledger_lines(root: Path) -> list[types.SimpleNamespace]:
    return [types.SimpleNamespace(**json.loads(line)) for path in sorted(root.rglob("journal/*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]
