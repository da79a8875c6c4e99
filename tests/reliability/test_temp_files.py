"""Spool and staging files after SIGTERM, success and failure: none of runferry's is left.

Every migration runs ``python -m engine migrate`` in its own process with a private ``TMPDIR``
(where runferry spools and stages by default) for the destinations and sources that spool:
W&B (file uploads spooled while hashing, artifact members staged), a local export to ``s3://``
(built in a staging directory, published object by object) and a local export read from
``s3://`` (objects staged locally). A front before the server holds one request that can only
come while something is spooled or staged (W&B's ``CreateRunFiles``, an S3 history upload or
download); with it held, the test checks the spool is really there (else it would prove
nothing), sends SIGTERM, and requires a prompt exit 130 with the "interrupted - re-run the same
command" report and nothing of runferry's left in ``TMPDIR`` but W&B's artifact staging, which
is resume state (the ledger already counts its members as moved). The same command then resumes
through the calmed front, must leave ``TMPDIR`` empty too, and ``python -m engine verify`` must
find every run identical. A migration whose run files are all refused (a final 400) leaves
nothing but that resume state either, and nothing at all once it is run again and succeeds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from aiohttp import web

from tests.e2e.test_cli import write_config
from tests.reliability.servers import ROOT, engine
from tests.servers.loop_thread import ForwardingServer
from tests.servers.s3front import S3Stack, start_s3_stack
from tests.servers.wandb import WandbServer, start_wandb_server

pytestmark = pytest.mark.timeout(600)

KEY = "t" * 8 + "runferrytempfiles" + "0" * 15
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ENV = {"RF_TEMP_KEY": KEY, **AWS}
RUNS = 3
SYNTHETIC = {
    "type": "synthetic", "seed": 9, "runs": RUNS, "projects": 1, "steps": 300, "keys": 3, "console_lines": 5,
    "file_sizes": [3000, 70000], "artifact_sizes": [9000, 2],
}
BUCKET = "rf-temp"
INTERRUPTED = "interrupted — re-run the same command to resume"


class HoldingFront(ForwardingServer):
    """Relays everything, but holds requests ``holds(method, path, body)`` picks until
    ``release()``; ``held`` is set when the first one arrives. ``refuse`` instead answers them
    400 (a final error)."""

    def __init__(self, upstream: str, holds: Callable[[str, str, bytes], bool]) -> None:
        super().__init__("holding-front")
        self.upstream = upstream.rstrip("/")
        self.holds = holds
        self.held = threading.Event()
        self.refuse = False
        self._released: asyncio.Event | None = None

    def release(self) -> None:
        def now() -> None:
            self._opened().set()

        self._loop.call_soon_threadsafe(now)

    def _opened(self) -> asyncio.Event:
        self._released = self._released or asyncio.Event()
        return self._released

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.holds(request.method, request.path, body):
            if self.refuse:
                return web.Response(status=400, text='{"error": "refused by the test"}')
            self.held.set()
            await self._opened().wait()
        status, headers, payload = await self.relay(request, self.upstream + request.path_qs, body)
        return web.Response(status=status, headers=headers, body=payload)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Stack]:
    with start_s3_stack() as stack:
        boto3.client("s3", endpoint_url=stack.moto_url, **_boto_keys()).create_bucket(Bucket=BUCKET)
        yield stack


@pytest.fixture(scope="module")
def wandb() -> Iterator[WandbServer]:
    with start_wandb_server(keys={KEY: ["temp"]}) as server:
        yield server


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _case(kind: str, tmp: Path, request: pytest.FixtureRequest) -> tuple[HoldingFront, dict, dict]:
    """The (started) front, the source and the destination of one case."""
    if kind == "wandb":
        server: WandbServer = request.getfixturevalue("wandb")
        front = HoldingFront(server.base_url, lambda m, p, b: p == "/graphql" and b"CreateRunFiles" in b).start()
        destination = {"type": "wandb", "base_url": front.url, "api_key_env": "RF_TEMP_KEY", "entity": "temp",
                       "project": f"{tmp.name[-20:]}-{{project}}"}
        return front, SYNTHETIC, destination
    stack: S3Stack = request.getfixturevalue("s3")
    prefix = f"{kind}-{tmp.name[-20:]}"
    if kind == "s3-export":
        front = HoldingFront(stack.moto_url, lambda m, p, b: m == "PUT" and "history" in p).start()
        return front, SYNTHETIC, {"type": "local", "path": f"s3://{BUCKET}/{prefix}", "s3_endpoint_url": front.url}
    # s3-source: an export in the bucket (written straight to moto), read back through the front
    seeded = write_config(tmp / "seed.toml", SYNTHETIC, {"type": "local", "path": f"s3://{BUCKET}/{prefix}",
                                                         "s3_endpoint_url": stack.moto_url},
                          {"ledger": str(tmp / "seed.jsonl")})
    done = engine("migrate", str(seeded), env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    front = HoldingFront(stack.moto_url, lambda m, p, b: m == "GET" and "history" in p).start()
    source = {"type": "local", "path": f"s3://{BUCKET}/{prefix}", "s3_endpoint_url": front.url}
    return front, source, {"type": "local", "path": str(tmp / "out")}


def _start(config: Path, tmpdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "migrate", str(config), "--log-format", "plain"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)},
    )


def _runferry_files(tmpdir: Path) -> list[str]:
    return sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))


def _left_beyond_resume_state(tmpdir: Path) -> list[str]:
    """What an interrupted or failed migration left that it should not have. Only W&B's artifact staging
    may stay (the ledger counts its members as moved: a resume commits them): an artifact's
    ``artifact.json`` and complete members, each ``.bin`` beside its ``.json`` sidecar."""
    staging = tmpdir / "runferry-wandb-staging"
    kept = {staging} | {p for p in staging.rglob("*") if p.is_dir()}
    kept |= {p for p in staging.rglob("artifact.json")}
    kept |= {p for p in staging.rglob("*.bin") if p.with_suffix(".json").is_file()}
    kept |= {p.with_suffix(".json") for p in staging.rglob("*.bin") if p.with_suffix(".json").is_file()}
    return sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*") if p not in kept)


@pytest.mark.parametrize("kind", ["wandb", "s3-export", "s3-source"])
def test_sigterm_mid_migration_leaves_no_spool_and_the_resume_is_exact(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    front, source, destination = _case(kind, tmp_path, request)
    try:
        config = write_config(tmp_path / "c.toml", source, destination, {"ledger": str(tmp_path / "ledger.jsonl")})
        migration = _start(config, tmpdir)
        assert front.held.wait(300), migration.communicate(timeout=60)
        spooled = _runferry_files(tmpdir)
        assert any(name.startswith("runferry-") for name in spooled), spooled  # the moment is a real one
        migration.send_signal(signal.SIGTERM)
        out, err = migration.communicate(timeout=120)
        assert migration.returncode == 130, err[-3000:]
        assert INTERRUPTED in out, out
        assert _left_beyond_resume_state(tmpdir) == [], err[-2000:]

        front.release()
        resumed = _start(config, tmpdir)
        out, err = resumed.communicate(timeout=400)
        assert resumed.returncode == 0, err[-3000:] + out[-2000:]
        assert _runferry_files(tmpdir) == []
        verified = engine("verify", str(config), env=ENV)
        assert verified.returncode == 0 and f"runs identical:      {RUNS}" in verified.stdout, verified.stdout[-3000:]
    finally:
        front.release()
        front.stop()


def test_failed_runs_leave_no_spool(tmp_path: Path, wandb: WandbServer) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    front = HoldingFront(wandb.base_url, lambda m, p, b: p == "/graphql" and b"CreateRunFiles" in b)
    front.refuse = True
    front.start()
    try:
        destination = {"type": "wandb", "base_url": front.url, "api_key_env": "RF_TEMP_KEY", "entity": "temp",
                       "project": "refused-{project}"}
        config = write_config(tmp_path / "c.toml", SYNTHETIC, destination, {"ledger": str(tmp_path / "ledger.jsonl")})
        failed = _start(config, tmpdir)
        out, err = failed.communicate(timeout=300)
        assert failed.returncode == 1 and "failed runs:" in out, err[-3000:] + out[-2000:]
        assert _left_beyond_resume_state(tmpdir) == []
        front.refuse = False
        front.release()  # and let them through
        retried = _start(config, tmpdir)
        out, err = retried.communicate(timeout=300)
        assert retried.returncode == 0, err[-3000:] + out[-2000:]
        assert _runferry_files(tmpdir) == []
    finally:
        front.release()
        front.stop()
