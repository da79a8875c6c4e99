"""The CLI end to end on synthetic -> local -> local: exactness, plan, bad input, crashes, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.protocols import AdapterContext
from adapters.synthetic import SyntheticSource
from tests.adapters.contract import all_files, all_refs, assert_history_equal, read_bytes, read_history

ROOT = Path(__file__).resolve().parents[2]

SYNTHETIC = {
    "type": "synthetic",
    "seed": 11,
    "runs": 6,
    "projects": 2,
    "steps": 3000,
    "keys": 7,
    "special_fraction": 0.01,
    "file_sizes": [0, 1, 70000],
    "artifact_sizes": [3, 200000],
}


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, source: dict, destination: dict, transfer: dict) -> Path:
    lines = []
    for name, table in (("source", source), ("destination", destination), ("transfer", transfer)):
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def engine(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=240,
    )


def tables_bitwise_equal(a: pa.Table, b: pa.Table) -> bool:
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_floating(x.type):
            if not (x.is_null().equals(y.is_null())):
                return False
            xs = x.fill_null(0).to_numpy(zero_copy_only=False).view(np.int64)
            ys = y.fill_null(0).to_numpy(zero_copy_only=False).view(np.int64)
            if not np.array_equal(xs, ys):
                return False
        elif not x.equals(y):
            return False
    return True


def assert_exports_equal(a: Path, b: Path) -> None:
    """Two export directories hold the same runs, history, files and tables."""

    def listing(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "ledger" not in p.name}

    assert listing(a) == listing(b)
    for rel in sorted(listing(a)):
        if rel.endswith(".parquet"):
            ta, tb = pq.read_table(a / rel), pq.read_table(b / rel)
            assert tables_bitwise_equal(ta, tb), rel
        elif rel.endswith("run.json"):  # adapter-private source hints differ by source
            ja, jb = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
            ja.pop("source_extra", None), jb.pop("source_extra", None)
            assert json.dumps(ja) == json.dumps(jb), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def history_rows(export: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in export.rglob("history.parquet"))


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, Path]:
    export, copy = tmp_path / "export", tmp_path / "copy"
    return {
        "export": export,
        "copy": copy,
        "to_local": write_config(
            tmp_path / "to_local.toml",
            SYNTHETIC,
            {"type": "local", "path": str(export)},
            {"ledger": str(tmp_path / "ledger1.jsonl"), "chunk_points": 5000, "runs_concurrency": 2},
        ),
        "local_to_local": write_config(
            tmp_path / "local_to_local.toml",
            {"type": "local", "path": str(export)},
            {"type": "local", "path": str(copy)},
            {"ledger": str(tmp_path / "ledger2.jsonl"), "chunk_points": 4096},
        ),
    }


async def test_synthetic_to_local_to_local_is_exact(configs: dict[str, Path]) -> None:
    first = engine("migrate", str(configs["to_local"]))
    assert first.returncode == 0, first.stderr
    assert "runs done                    6" in first.stdout
    second = engine("migrate", str(configs["local_to_local"]))
    assert second.returncode == 0, second.stderr
    assert_exports_equal(configs["export"], configs["copy"])

    # ... and the export holds exactly what the synthetic source generates
    from adapters.local import LocalSource

    settings = {k: v for k, v in SYNTHETIC.items() if k != "type"}
    context = AdapterContext(chunk_points=10_000)
    async with SyntheticSource(SyntheticSource.Config(**settings), context) as synthetic, LocalSource(
        LocalSource.Config(path=str(configs["copy"])), context
    ) as exported:
        refs = await all_refs(synthetic)
        assert [r.id for r in refs] == sorted(r.id for r in await all_refs(exported))
        by_id = {r.id: r for r in await all_refs(exported)}
        total_special = 0
        for ref in refs:
            want, got = await synthetic.get_run(ref), await exported.get_run(by_id[ref.id])
            want_history, _ = await read_history(synthetic, want)
            got_history, _ = await read_history(exported, got)
            assert_history_equal(got_history, want_history)
            values = want_history.column("value").to_numpy(zero_copy_only=False)
            total_special += int(np.isnan(values).sum() + np.isinf(values).sum())
            want_files = await all_files(synthetic, want)
            got_files = {f.key: f for f in await all_files(exported, got)}
            assert sorted(got_files) == sorted(f.key for f in want_files)
            for f in want_files:
                assert await read_bytes(exported, got, got_files[f.key]) == await read_bytes(synthetic, want, f)
        assert total_special > 0  # the comparison covered NaN and inf


def test_verify_finds_identical_runs_and_then_a_changed_one(configs: dict[str, Path]) -> None:
    assert engine("migrate", str(configs["to_local"])).returncode == 0
    ok = engine("verify", str(configs["to_local"]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "runs identical:      6" in ok.stdout

    # change one value bit (-0.0 vs 0.0 would do too) in one run's history, and one file byte
    history = sorted(configs["export"].rglob("history.parquet"))[1]
    table = pq.read_table(history)
    values = table.column("value").to_numpy(zero_copy_only=False).copy()
    values[17] = np.nextafter(values[17], np.inf) if np.isfinite(values[17]) else 0.5
    pq.write_table(table.set_column(3, "value", pa.array(values)), history)
    victim = sorted(p for p in configs["export"].rglob("*.bin") if p.stat().st_size > 0)[0]
    data = victim.read_bytes()
    victim.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    bad = engine("verify", str(configs["to_local"]))
    assert bad.returncode == 1
    assert "runs different:      2" in bad.stdout
    assert "history content differs (21,000 points on both sides)" in bad.stdout
    assert "files differ: 1 source file(s) missing or changed, 1 unexpected at the destination" in bad.stdout


def test_export_equals_a_migration_to_local(configs: dict[str, Path], tmp_path: Path) -> None:
    assert engine("migrate", str(configs["to_local"])).returncode == 0
    exported = engine("export", str(configs["local_to_local"]), "--to", str(tmp_path / "exported"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "exported" / "runferry-ledger.jsonl").exists()
    assert not configs["copy"].exists()
    assert_exports_equal(configs["export"], tmp_path / "exported")


def test_plan_writes_nothing(configs: dict[str, Path], tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    result = engine("plan", str(configs["to_local"]))
    assert result.returncode == 0, result.stderr
    assert "runs to move:           6" in result.stdout
    assert f"history points:         {6 * 3000 * 7:,}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[source\n", "not valid TOML"),
        ('[source]\ntype = "synthetic"\nrusn = 3\n[destination]\ntype = "local"\npath = "x"\n', "unknown key 'rusn' — did you mean 'runs'?"),
        ('[source]\ntype = "synthetic"\nruns = "3"\n[destination]\ntype = "local"\npath = "x"\n', "key 'runs' must be an integer"),
        (
            '[source]\ntype = "mlflow"\ntracking_uri = "http://127.0.0.1:9"\npassword_env = "RUNFERRY_NOPE"\n'
            '[destination]\ntype = "local"\npath = "x"\n',
            "names environment variable RUNFERRY_NOPE, which is not set",
        ),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, body: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body)
    result = engine("migrate", str(config), cwd=tmp_path, env={"RUNFERRY_NOPE": ""} if False else None)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


@pytest.mark.parametrize("kill_at", [3, 9, 17, 40])
def test_kill_9_then_resume_equals_an_uninterrupted_export(configs: dict[str, Path], tmp_path: Path, kill_at: int) -> None:
    reference = write_config(
        tmp_path / "reference.toml",
        SYNTHETIC,
        {"type": "local", "path": str(tmp_path / "reference")},
        {"ledger": str(tmp_path / "ledger-ref.jsonl"), "chunk_points": 5000, "runs_concurrency": 2},
    )
    assert engine("migrate", str(reference)).returncode == 0

    crashed = engine("migrate", str(configs["to_local"]), env={"RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE": str(kill_at)})
    assert crashed.returncode == -signal.SIGKILL
    status = engine("status", str(configs["to_local"]))
    assert status.returncode == 0 and "in progress" in status.stdout
    resumed = engine("migrate", str(configs["to_local"]))
    assert resumed.returncode == 0, resumed.stderr
    assert_exports_equal(tmp_path / "reference", configs["export"])
    assert history_rows(configs["export"]) == 6 * 3000 * 7  # no duplicated rows
    again = engine("migrate", str(configs["to_local"]))
    assert "runs skipped (already done)  6" in again.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_exits_cleanly_and_the_ledger_resumes(tmp_path: Path, signum: int) -> None:
    big = {**SYNTHETIC, "runs": 20, "steps": 10000, "file_sizes": [], "artifact_sizes": []}
    config = write_config(
        tmp_path / "big.toml",
        big,
        {"type": "local", "path": str(tmp_path / "big")},
        {"ledger": str(tmp_path / "big-ledger.jsonl"), "chunk_points": 2000, "runs_concurrency": 1},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "migrate", str(config), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ledger = tmp_path / "big-ledger.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some history is durable, then interrupt
        if ledger.exists() and ledger.read_text().count('"ev":"history"') >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["event"] == "report" and report["interrupted"] is True
    status = engine("status", str(config))
    assert "failed 0" in status.stdout

    resumed = engine("migrate", str(config))
    assert resumed.returncode == 0, resumed.stderr
    assert history_rows(tmp_path / "big") == 20 * 10000 * 7


def test_a_broken_run_is_reported_and_the_others_finish(configs: dict[str, Path]) -> None:
    assert engine("migrate", str(configs["to_local"])).returncode == 0
    broken = sorted(configs["export"].rglob("history.parquet"))[2]
    broken.write_bytes(b"not parquet at all")
    result = engine("migrate", str(configs["local_to_local"]))
    assert result.returncode == 1
    assert "runs done                    5" in result.stdout
    assert "runs failed                  1" in result.stdout
    assert "failed runs:" in result.stdout
    status = engine("status", str(configs["local_to_local"]))
    assert "done 5" in status.stdout and "failed 1" in status.stdout
