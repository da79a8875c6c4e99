"""Incremental W&B -> W&B: points the SDK appends to a source run after a migration (a resumed
run) are carried over by the next migration without rewriting what is already there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import anyio
import pytest

from engine.config import parse_config
from engine.pipeline import migrate
from tests.servers.wandb import start_wandb_server
from tests.wandb_source.oracle import dump, sdk_view

SRC_KEY, DST_KEY = "a" * 40, "b" * 40
SRC_ENV, DST_ENV = "RUNFERRY_TEST_GROW_SRC", "RUNFERRY_TEST_GROW_DST"

LOG = textwrap.dedent("""
    import sys, wandb
    first, last = int(sys.argv[1]), int(sys.argv[2])
    run = wandb.init(entity="src", project="grow", id="g1", name="Growing run", resume="allow",
                     config={"lr": 0.1}, settings=wandb.Settings(console="off", x_disable_stats=True))
    for step in range(first, last):
        run.log({"loss": 1.0 / (step + 1), "step_int": step}, step=step)
    run.finish()
""")


def _log(server, tmp_path, first: int, last: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(server.sdk_env(str(tmp_path / f"sdk{first}")))
    done = subprocess.run([sys.executable, "-c", LOG, str(first), str(last)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def servers():
    with start_wandb_server(keys={SRC_KEY: ["src"]}) as src, start_wandb_server(keys={DST_KEY: ["dst"]}) as dst:
        yield src, dst


def _api(server, key, tmp_path):
    import wandb

    os.environ["WANDB_CACHE_DIR"] = str(tmp_path / "cache")
    return wandb.Api(api_key=key, overrides={"base_url": server.base_url}, timeout=30)


async def test_points_appended_at_the_source_are_carried_over(servers, tmp_path, monkeypatch):
    src, dst = servers
    monkeypatch.setenv(SRC_ENV, SRC_KEY)
    monkeypatch.setenv(DST_ENV, DST_KEY)
    config = parse_config({
        "source": {"type": "wandb", "base_url": src.base_url, "api_key_env": SRC_ENV, "namespaces": ["src/grow"]},
        "destination": {"type": "wandb", "base_url": dst.base_url, "api_key_env": DST_ENV, "entity": "dst",
                        "filestream_rate": 1000.0},
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl")},
    })
    await anyio.to_thread.run_sync(_log, src, tmp_path, 0, 5)
    first = await migrate(config)
    assert first.exit_code == 0 and first.progress.totals.points == 10
    lines_before = list(dst.state.run("dst", "grow", "g1").history)

    await anyio.to_thread.run_sync(_log, src, tmp_path, 5, 9)
    second = await migrate(config)
    assert second.exit_code == 0, second.progress.totals.failures
    assert second.progress.totals.points == 8  # only the 4 new rows of 2 keys moved
    lines_after = dst.state.run("dst", "grow", "g1").history
    assert lines_after[:5] == lines_before and len(lines_after) == 9

    src_view = await anyio.to_thread.run_sync(sdk_view, _api(src, SRC_KEY, tmp_path), "src/grow/g1")
    dst_view = await anyio.to_thread.run_sync(sdk_view, _api(dst, DST_KEY, tmp_path), "dst/grow/g1")
    assert [dump(r) for r in dst_view["rows"]] == [dump(r) for r in src_view["rows"]]
    assert dump(dst_view["summary"]) == dump(src_view["summary"])
    third = await migrate(config)
    assert (third.progress.totals.runs_skipped, third.progress.totals.points) == (1, 0)
