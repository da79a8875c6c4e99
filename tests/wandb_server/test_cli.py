"""``python -m tests.servers.wandb`` starts a usable server (bench and manual runs use it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_command_line_server_answers_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.wandb", "--port", "0", "--key", f"{'k' * 40}=alice,bob"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("fake W&B server listening on http://127.0.0.1:"), first
        base_url = first.rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=30) as response:
            assert response.status == 200
        assert "entities alice, bob" in process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0
