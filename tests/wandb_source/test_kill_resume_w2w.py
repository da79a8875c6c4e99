"""A W&B -> W&B migration killed with SIGKILL at random moments (before a ledger line: the worst
moment, the destination already holds what the ledger never heard of) and run again ends with
every history row, system line, summary, config and file exactly once at the destination."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.wandb import start_wandb_server
from tests.wandb_source.conftest import ENTITY, KEY_ENV, OTHER_ENTITY
from tests.wandb_source.oracle import dump, sdk_view

REPO = Path(__file__).resolve().parents[2]
DEST_KEY = "9" * 40
DEST_KEY_ENV = "RUNFERRY_TEST_KILL_DEST_KEY"
NEW = "killed"
SOURCE_RUNS = [f"{ENTITY}/alpha/rich", f"{ENTITY}/alpha/failed", f"{ENTITY}/alpha/resumed",
               *(f"{ENTITY}/beta/grid{i:02d}" for i in range(6)), f"{OTHER_ENTITY}/gamma/other"]
KILLS = 5


def _write_config(path: Path, source, dest, tag: str) -> Path:
    remap = [(f"{ENTITY}/alpha", f"{NEW}/alpha-{tag}"), (f"{ENTITY}/beta", f"{NEW}/beta-{tag}"),
             (f"{OTHER_ENTITY}/gamma", f"{NEW}/gamma-{tag}")]
    text = (
        f'[source]\ntype = "wandb"\nbase_url = "{source.base_url}"\napi_key_env = "{KEY_ENV}"\nnamespaces = ["*/*"]\n'
        f'[destination]\ntype = "wandb"\nbase_url = "{dest.base_url}"\napi_key_env = "{DEST_KEY_ENV}"\n'
        f'filestream_rate = 1000.0\n'
        f'[transfer]\nledger = "{path.parent / (tag + ".jsonl")}"\nchunk_points = 40\n'
        + "".join(f'[[remap]]\nfrom = "{a}"\nto = "{b}"\n' for a, b in remap)
    )
    path.write_text(text)
    return path


def _run(config: Path, cwd: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if kill_at is not None:
        env["RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE"] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "engine", "migrate", str(config), "--log-format", "plain"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _dest_path(path: str, tag: str) -> str:
    entity, project, run = path.split("/")
    return f"{NEW}/{project}-{tag}/{run}"


@pytest.fixture(scope="module")
def dest_server():
    with start_wandb_server(keys={DEST_KEY: [NEW]}) as server:
        yield server


@pytest.mark.timeout(1200)
def test_killed_anywhere_then_resumed_equals_the_source(sdk_dataset, public_api, dest_server, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv(KEY_ENV, sdk_dataset.api_key)
    monkeypatch.setenv(DEST_KEY_ENV, DEST_KEY)
    reference = _write_config(tmp_path / "ref.toml", sdk_dataset, dest_server, "ref")
    done = _run(reference, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sum(1 for _ in open(tmp_path / "ref.jsonl"))
    moments = sorted(random.Random(20261201).sample(range(1, lines), KILLS))
    for kill_at in moments:
        config = _write_config(tmp_path / f"k{kill_at}.toml", sdk_dataset, dest_server, f"k{kill_at}")
        killed = _run(config, tmp_path, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.returncode, killed.stderr[-2000:])
        resumed = _run(config, tmp_path)
        assert resumed.returncode == 0, (kill_at, resumed.stderr[-3000:])
        ledger = [json.loads(line) for line in open(tmp_path / f"k{kill_at}.jsonl") if line.strip()]
        assert sum(1 for e in ledger if e["ev"] == "done") == len(SOURCE_RUNS)

    os.environ["WANDB_CACHE_DIR"] = str(tmp_path / "cache")
    dst_api = wandb.Api(api_key=DEST_KEY, overrides={"base_url": dest_server.base_url}, timeout=30)
    for path in SOURCE_RUNS:
        src = sdk_view(public_api, path)
        for kill_at in moments:
            dst = sdk_view(dst_api, _dest_path(path, f"k{kill_at}"))
            where = (path, kill_at)
            assert [dump(r) for r in dst["rows"]] == [dump(r) for r in src["rows"]], where
            assert [dump(x) for x in dst["system"]] == [dump(x) for x in src["system"]], where
            assert dump(dst["summary"]) == dump(src["summary"]), where
            assert dst["files"] == src["files"], where
            assert (dst["state"], dst["tags"], dst["notes"]) == (src["state"], src["tags"], src["notes"]), where
