"""Shared helpers of the reliability tests: the CLI as a subprocess, small real servers, and
loopback sockets that refuse or never answer.

Why: every case of these tests is what an operator would type, so each runs
``python -m engine`` in its own process against real loopback servers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

FAST_RETRIES = "[ratelimit]\nbackoff_base = 0.01\nbackoff_cap = 0.02\n"
"""Backoff a test can afford: the client's bounded retries end in well under a second."""


def engine(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGS`` in a fresh process importing this worktree's code."""
    merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=merged, cwd=cwd, timeout=timeout
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (in the kernel's backlog) and never answers:
    what an unreachable or hung host looks like to a client, without leaving the machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def mlflow_histories(url: str, prefix: str) -> dict[str, list[tuple[str, int, int, str]]]:
    """Every run's whole history as the official client reads it, by run name, sorted (NaN as
    its text, so equal lists mean equal multisets of points)."""
    client = MlflowClient(url)
    ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    histories = {}
    for run in client.search_runs(ids, max_results=1000):
        points = [
            (m.key, m.step, m.timestamp, repr(m.value))
            for key in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, key)
        ]
        histories[run.info.run_name] = sorted(points)
    return histories
