"""Synthetic -> W&B through the engine (pipeline, ledger), including a killed process that
resumes: read back with wandb.Api and compared point by point with the source."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from core.protocols import AdapterContext
from adapters.synthetic import SyntheticSource
from engine.config import parse_config
from engine.pipeline import migrate

from .conftest import KEY_ENV, same_value, wandb_api

REPO = Path(__file__).resolve().parents[2]


def synthetic_table(**kw) -> dict:
    table = {"type": "synthetic", "seed": 11, "runs": 3, "projects": 1, "steps": 300, "keys": 4,
             "file_sizes": [1000], "artifact_sizes": [5000]}
    table.update(kw)
    return table


def dest_table(server, project: str, **kw) -> dict:
    table = {"type": "wandb", "base_url": server.base_url, "api_key_env": KEY_ENV, "entity": server.entity,
             "project": project, "filestream_rate": 1000.0}
    table.update(kw)
    return table


def write_config(path: Path, tables: dict[str, dict]) -> Path:
    """A config file for the command line (JSON strings, numbers and lists are TOML too)."""
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                            for name, table in tables.items()))
    return path


async def source_points(table: dict) -> dict[str, list[tuple[str, int, float, float]]]:
    cfg = parse_config({"source": table, "destination": {"type": "local", "path": "/nonexistent"}}).source
    points: dict[str, list] = {}
    async with SyntheticSource(cfg, AdapterContext()) as src:
        async for ref in src.list_runs():
            rec = await src.get_run(ref)
            rows = points.setdefault(ref.id, [])
            async for chunk in src.iter_history(rec):
                b = chunk.batch
                rows += zip(b.column("key").to_pylist(), b.column("step").to_pylist(),
                            b.column("timestamp").to_pylist(), b.column("value").to_pylist())
    return points


def check_run_against_source(server, project: str, run_id: str, rows: list) -> None:
    run = wandb_api(server).run(f"{server.entity}/{project}/{run_id}")
    history = list(run.scan_history(page_size=1000))
    by_step = {}
    for key, step, ts, value in rows:
        by_step.setdefault(step, {})[key] = (value, ts)
    assert [h["_step"] for h in history] == sorted(by_step)
    for line in history:
        want = by_step[line["_step"]]
        assert set(line) - {"_step", "_runtime", "_timestamp"} == set(want)
        for key, (value, ts) in want.items():
            assert same_value(float(line[key]), value), (run_id, line["_step"], key)
        assert line["_timestamp"] == max(ts for _, ts in want.values())


async def test_synthetic_to_wandb_through_the_engine(server, project, tmp_path) -> None:
    source = synthetic_table()
    config = parse_config({
        "source": source,
        "destination": dest_table(server, project, artifact_layout="folders"),
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 500},
    })
    report = await migrate(config)
    assert report.exit_code == 0
    expected = await source_points(source)
    assert len(expected) == 3
    for run_id, rows in expected.items():
        check_run_against_source(server, project, run_id, rows)
    # a second run of the same config is incremental: nothing is rewritten
    before = {rid: list(server.state.run(server.entity, project, rid).history) for rid in expected}
    again = await migrate(config)
    assert again.exit_code == 0
    assert {rid: list(server.state.run(server.entity, project, rid).history) for rid in expected} == before


@pytest.mark.parametrize(("keys", "max_request_bytes", "rate"), [(6, 65536, 4.0), (1, 8 * 1024 * 1024, 1.0)],
                         ids=["six-keys", "one-key-lines-held"])
def test_killed_migration_resumes_with_every_line_once(server, project, tmp_path, keys, max_request_bytes, rate) -> None:
    """With one key each write's lines (~90 KB) are held until the next write (HOLD_BYTES), so
    the kill also finds lines that were held, never sent and not in the ledger (at 1 request/s
    the kill lands between the requests of its 3,000 lines)."""
    source = synthetic_table(runs=1, steps=3000, keys=keys, file_sizes=[], artifact_sizes=[])
    config_path = write_config(tmp_path / "migrate.toml", {
        "source": source,
        "destination": dest_table(server, project, max_request_bytes=max_request_bytes, filestream_rate=rate),
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 1200},
    })
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "engine", "migrate", str(config_path), "--log-format", "plain"]
    child = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until some (not all) history is durable, then kill hard
            run = next((r for (e, p, _), r in list(server.state.runs.items()) if p == project), None)
            if run is not None and len(run.history) >= 600:
                break
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "migration never started writing history"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    run = next(r for (e, p, _), r in server.state.runs.items() if p == project)
    assert len(run.history) < 3000, "killed too late to test a resume"
    done = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    steps = [json.loads(line)["_step"] for line in run.history]
    assert steps == list(range(3000))
    expected = anyio.run(source_points, source)
    (run_id, rows), = expected.items()
    check_run_against_source(server, project, run_id, rows)


def test_the_command_line_migrates_without_importing_pandas(server, project, tmp_path) -> None:
    """pyarrow imports pandas (installed here, next to mlflow) on its first conversion, ~0.2 s of
    a small migration's start-up; the command line turns that probe off. What it wrote is
    complete when it exits (it leaves without tearing the interpreter down)."""
    source = synthetic_table(runs=2, file_sizes=[], artifact_sizes=[])
    config_path = write_config(tmp_path / "migrate.toml", {
        "source": source, "destination": dest_table(server, project), "transfer": {"ledger": str(tmp_path / "ledger.jsonl")},
    })
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine", "migrate", str(config_path)],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "runs done                    2" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    # pyarrow's own attempt shows as a bare "pandas" line that failed; a real import loads its submodules
    assert "pyarrow.compute" in imported and not any(name.startswith("pandas.") for name in imported)
    for run_id, rows in anyio.run(source_points, source).items():
        check_run_against_source(server, project, run_id, rows)
