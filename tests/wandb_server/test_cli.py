"""``python -m tests.servers.wandb`` starts a usable server (bench and manual runs use it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from .wire import upsert_run

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def command_line_server(*flags: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The server started as ``python -m tests.servers.wandb`` with ``flags``; its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.wandb", "--port", "0", "--key", f"{'k' * 40}=alice,bob", *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("fake W&B server listening on http://127.0.0.1:"), first
        yield process, first.rsplit(" ", 1)[1].strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0


def test_command_line_server_answers_and_stops_on_sigterm():
    with command_line_server() as (process, base_url):
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=30) as response:
            assert response.status == 200
        assert "entities alice, bob" in process.stdout.readline()


async def test_command_line_sets_the_run_creation_limit_per_project():
    with command_line_server("--run-creation-rps-per-project", "0.001") as (_, base_url):
        server = SimpleNamespace(base_url=base_url, api_key="k" * 40, entity="alice")
        async with aiohttp.ClientSession() as session:
            statuses = [(await upsert_run(session, server, name, project="cli"))[0] for name in ("r1", "r2")]
    assert statuses == [200, 429]  # one creation per 1,000 s: the second is refused
