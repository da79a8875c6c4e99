"""System metrics (``wandb-events.jsonl``) and console logs (``output.log``) at the W&B
destination, against the loopback W&B-compatible server, read back with the official
``wandb.Api()`` (``run.history(stream="system")``, ``run.system_metrics``, ``run.file``,
``run.console_logs()``), plus kill-and-resume with every line exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.protocols import AdapterContext, Checkpoint
from adapters.synthetic import SyntheticSource
from engine.config import parse_config
from core.errors import FatalError
from core.model import CONSOLE_LOG, FileRef, HistoryChunk, Namespace, RunRecord, RunRef, history_batch
from engine.pipeline import migrate

from .conftest import KEY_ENV, make_destination, pieces, same_value, wandb_api

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def synthetic_table(**kw: Any) -> dict:
    table = {"type": "synthetic", "seed": 5, "runs": 2, "projects": 1, "steps": 240, "keys": 6, "system_keys": 2,
             "json_keys": 1, "console_lines": 9000, "file_sizes": [700], "artifact_sizes": []}
    table.update(kw)
    return table


def dest_table(server, project: str, **kw: Any) -> dict:
    table = {"type": "wandb", "base_url": server.base_url, "api_key_env": KEY_ENV, "entity": server.entity,
             "project": project, "filestream_rate": 1000.0}
    table.update(kw)
    return table


async def synthetic_runs(table: dict) -> dict[str, dict[str, Any]]:
    """Per run: its record, history points and console-log bytes, straight from the source."""
    cfg = parse_config({"source": table, "destination": {"type": "local", "path": "/nonexistent"}}).source
    runs: dict[str, dict[str, Any]] = {}
    async with SyntheticSource(cfg, AdapterContext()) as src:
        async for ref in src.list_runs():
            rec = await src.get_run(ref)
            rows: list = []
            async for chunk in src.iter_history(rec):
                b = chunk.batch
                rows += zip(b.column("key").to_pylist(), b.column("step").to_pylist(), b.column("timestamp").to_pylist(),
                            b.column("value").to_pylist(), b.column("value_json").to_pylist(), strict=True)
            console = b""
            async for file in src.list_files(rec):
                if file.role == CONSOLE_LOG:
                    console = b"".join([piece async for piece in src.read_file(rec, file)])
            runs[ref.id] = {"record": rec, "rows": rows, "console": console}
    return runs


def expected_system_lines(rows: list, start_time: float) -> list[dict]:
    """What W&B's system stream should hold: one line per step, keys renamed ``system.``."""
    by_step: dict[int, dict[str, Any]] = {}
    for key, step, ts, value, _ in rows:
        if key.startswith("system/"):
            line = by_step.setdefault(step, {"_wandb": True, "_timestamp": ts})
            line["system." + key[len("system/"):]] = value
            line["_timestamp"] = max(line["_timestamp"], ts)
    for line in by_step.values():
        line["_runtime"] = max(line["_timestamp"] - start_time, 0.0)
    return [by_step[s] for s in sorted(by_step)]


def assert_lines_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), (g, w)
        for key, value in w.items():
            assert same_value(g[key], value), (key, g[key], value)


def console_lines(data: bytes) -> list[str]:
    lines = data.decode("utf-8", errors="replace").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


async def test_synthetic_system_metrics_and_console_log_read_back_with_the_sdk(server, project, tmp_path) -> None:
    source = synthetic_table()
    config = parse_config({
        "source": source,
        "destination": dest_table(server, project, max_request_bytes=65536),
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 250},
    })
    report = await migrate(config)
    assert report.exit_code == 0
    api = wandb_api(server)
    for run_id, want in (await synthetic_runs(source)).items():
        run = api.run(f"{server.entity}/{project}/{run_id}")
        rows, start = want["rows"], want["record"].start_time
        # the system stream holds every system point, renamed, with original times
        system = run.history(stream="system", samples=10**6, pandas=False)
        assert_lines_equal(system, expected_system_lines(rows, start))
        last = system[-1]
        assert json.loads(json.dumps(run.system_metrics)) == {k: v for k, v in last.items() if k.startswith("system.")}
        # ... and nothing of them is left in the history or the summary
        history = list(run.scan_history(page_size=1000))
        plain = [r for r in rows if not r[0].startswith("system/")]
        assert sorted(k for line in history for k in line if not k.startswith("_")) == sorted(r[0] for r in plain)
        for line in history:
            for key, step, _, value, text in plain:
                if step == line["_step"]:
                    assert same_value(line[key], json.loads(text) if text is not None else value)
        assert not [k for k in run.summary.keys() if k.startswith("system")]
        # the console log: the run file has the exact bytes, the Logs tab every line once
        path = run.file("output.log").download(root=str(tmp_path / run_id), replace=True).name
        assert Path(path).read_bytes() == want["console"]
        assert [line.content for line in run.console_logs(per_page=2500)] == console_lines(want["console"])
        stored = server.state.run(server.entity, project, run_id)
        assert stored.logs == console_lines(want["console"])


# -- kill and resume ------------------------------------------------------------------------------
def key_major(keys: list[str], steps: int) -> tuple[list, list, list, list]:
    """MLflow's order: one key's whole history, then the next."""
    rng = np.random.default_rng(3)
    k, s, t, v = [], [], [], []
    for key in keys:
        for step in range(steps):
            k.append(key)
            s.append(step)
            t.append(1700000000.0 + step * 0.5 + (0.001 if key.startswith("system/") else 0.0))
            v.append(float(rng.normal()))
    return k, s, t, v


def step_major(keys: list[str], steps: int) -> tuple[list, list, list, list]:
    k, s, t, v = key_major(keys, steps)
    order = sorted(range(len(k)), key=lambda i: (s[i], keys.index(k[i])))
    return [k[i] for i in order], [s[i] for i in order], [t[i] for i in order], [v[i] for i in order]


def chunked(cols, size: int, start: int = 0) -> list[HistoryChunk]:
    k, s, t, v = cols
    return [HistoryChunk(history_batch(k[i:i + size], s[i:i + size], t[i:i + size], v[i:i + size]), i)
            for i in range(start, len(k), size)]


def run_record(project: str) -> RunRecord:
    return RunRecord(ref=RunRef(id="run1", namespace=Namespace("", project)), start_time=1699999999.0,
                     end_time=1700000100.0, summary={"acc": 1.0, "loss": 0.5, "system/cpu_utilization_percentage": 2.0,
                                                       "system/disk_usage_percentage": 3.0})


async def write_run(server, project: str, cols, *, size: int, stop_after: int | None = None,
                    resume: Checkpoint | None = None) -> Checkpoint | None:
    """Write a run; with ``stop_after``, die (no flush, no finish) two chunks after that many
    chunks and return the checkpoint the ledger held then."""
    rec = run_record(project)
    async with make_destination(server, max_request_bytes=65536) as dest:
        writer = await dest.open_run(rec, resume)
        start = resume.history_points if resume is not None else 0
        ledger = None
        for i, chunk in enumerate(chunked(cols, size, start)):
            if stop_after is not None and i == stop_after:
                ledger = writer.checkpoint()
            if stop_after is not None and i == stop_after + 2:
                return ledger
            await writer.write_history(chunk)
        await writer.flush_history()
        await writer.finish(rec)
        await writer.aclose()
    return None


@pytest.mark.parametrize("order", [key_major, step_major])
@pytest.mark.parametrize("stop_after", [1, 4, 6])
async def test_killed_writer_resumes_with_every_history_and_system_line_once(server, project, order, stop_after) -> None:
    cols = order(["acc", "system/cpu_utilization_percentage", "loss", "system/disk_usage_percentage"], 150)
    await write_run(server, project + "-ref", cols, size=70)
    reference = server.state.run(server.entity, project + "-ref", "run1")
    assert len(reference.events) == 150 and len(reference.history) == 150
    ledger = await write_run(server, project, cols, size=70, stop_after=stop_after)
    assert ledger is not None
    stored = server.state.run(server.entity, project, "run1")
    if order is step_major:  # the newest write's history lines are held back (HOLD_BYTES): after one
        # write only system lines are durable, after more the history of all but the newest too
        assert (ledger.history_points > 0) == (stop_after > 1) and ledger.history_points < len(cols[0])
        assert ledger.state["e_points"] > 0
    resume = Checkpoint(history_points=ledger.history_points, state=json.loads(json.dumps(ledger.state)))
    await write_run(server, project, cols, size=53, resume=resume)  # the source restarts in other chunks
    assert stored.history == reference.history
    assert stored.events == reference.events
    assert stored.summary == reference.summary and "system/cpu_utilization_percentage" not in stored.summary


def write_config(path: Path, source: dict, dest: dict, transfer: dict) -> Path:
    lines = ["[source]"] + [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    lines += ["[destination]"] + [f"{k} = {json.dumps(v)}" for k, v in dest.items()]
    lines += ["[transfer]"] + [f"{k} = {json.dumps(v)}" for k, v in transfer.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kill_at", [4, 8, 11, 19])
def test_killed_migration_resumes_with_every_events_and_output_line_once(server, project, tmp_path, kill_at) -> None:
    source = synthetic_table(steps=300, console_lines=20000, file_sizes=[])
    transfer = {"chunk_points": 300, "runs_concurrency": 2}
    reference = write_config(tmp_path / "ref.toml", source,
                             dest_table(server, project + "-ref", max_request_bytes=65536),
                             {**transfer, "ledger": str(tmp_path / "ref.jsonl")})
    config = write_config(tmp_path / "run.toml", source, dest_table(server, project, max_request_bytes=65536),
                          {**transfer, "ledger": str(tmp_path / "run.jsonl")})
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def engine(path: Path, **extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "engine", "migrate", str(path), "--log-format", "plain"]
        return subprocess.run(argv, cwd=tmp_path, env={**env, **extra}, capture_output=True, timeout=300, check=False)

    assert engine(reference).returncode == 0
    crashed = engine(config, RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE=str(kill_at))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    resumed = engine(config)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    api = wandb_api(server)
    for run_id in ("run000000", "run000001"):
        want = server.state.run(server.entity, project + "-ref", run_id)
        got = server.state.run(server.entity, project, run_id)
        assert got.history == want.history
        assert got.events == want.events and len(got.events) == 300
        assert got.logs == want.logs and len(got.logs) == 20000
        files = {}
        for name in ("ref", "run"):
            with contextlib.chdir(tmp_path):
                proj = project + "-ref" if name == "ref" else project
                run = api.run(f"{server.entity}/{proj}/{run_id}")
                files[name] = Path(run.file("output.log").download(root=str(tmp_path / name / run_id)).name).read_bytes()
        assert files["run"] == files["ref"] and files["run"].count(b"\n") == 20000



async def test_an_empty_prefix_keeps_system_keys_in_history_and_resume_needs_the_same_prefix(server, project) -> None:
    cols = step_major(["acc", "system/cpu_utilization_percentage"], 20)
    rec = run_record(project)
    async with make_destination(server, system_metrics_prefix="") as dest:
        writer = await dest.open_run(rec, None)
        for chunk in chunked(cols, 7):
            await writer.write_history(chunk)
        checkpoint = writer.checkpoint()
        assert checkpoint.history_points > 0 and checkpoint.state["system_metrics_prefix"] == ""
    stored = server.state.run(server.entity, project, "run1")
    assert stored.events == [] and "system/cpu_utilization_percentage" in json.loads(stored.history[0])
    async with make_destination(server) as dest:  # the default prefix now: the split would differ
        with pytest.raises(FatalError, match="system_metrics_prefix"):
            await dest.open_run(rec, checkpoint)


async def test_a_second_console_log_in_one_run_is_refused(server, project) -> None:
    rec = run_record(project)
    async with make_destination(server) as dest:
        writer = await dest.open_run(rec, None)
        await writer.write_file(FileRef(path="output.log", role=CONSOLE_LOG), pieces(b"one\ntwo\n"))
        with pytest.raises(FatalError, match="second console log"):
            await writer.write_file(FileRef(path="rank1.log", role=CONSOLE_LOG), pieces(b"three\n"))
    assert server.state.run(server.entity, project, "run1").logs == ["one", "two"]
