from __future__ import annotations

import contextlib
import hashlib
import os
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from core.protocols import AdapterContext
from adapters.s3 import MIB, S3Config, S3Store
from ratelimit import LimiterRegistry
from tests.servers.s3front import FrontSettings, S3Stack, start_s3_stack
from tests.servers.scripted_http import ScriptedServer

PART = 5 * MIB  # S3's minimum part size: many parts with little data


@pytest.fixture(scope="session")
def s3_stack() -> Iterator[S3Stack]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with start_s3_stack() as stack:
        yield stack


@pytest.fixture
def front(s3_stack: S3Stack) -> Iterator[S3Stack]:
    """The stack, with the front's settings restored to defaults after the test."""
    s3_stack.reset_stats()
    yield s3_stack
    s3_stack.configure(**{k: v for k, v in vars(FrontSettings()).items()})


@contextlib.asynccontextmanager
async def serving(handle: Any, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """``handle`` answering every request on a loopback port (HTTPS with ``tls``); yields the base URL."""
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


RECORDER_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret/key+",
                        "AWS_SESSION_TOKEN": "token-123"}


@pytest.fixture
async def recorder(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback server that records every request (headers, body, method, raw path, URL) and
    answers 200 with the body's MD5 as ETag; clients sign with ``RECORDER_CREDENTIALS``."""
    for name, value in RECORDER_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"headers": CIMultiDict(request.headers), "body": body, "method": request.method,
                     "raw_path": request.raw_path, "url": str(request.url)})
        return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"', "x-amz-version-id": "v1"})

    async with serving(handle) as url:
        yield url, seen


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """A fresh ``ScriptedServer`` (its hung answers end with the test) and credentials for it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    server = ScriptedServer().start()
    yield server
    server.stop()


class Events:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.fields: list[dict[str, object]] = []

    def __call__(self, name: str, **fields: object) -> None:
        self.names.append(name)
        self.fields.append(fields)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def registry() -> LimiterRegistry:
    return LimiterRegistry(seed=3)


@pytest.fixture
async def store(front: S3Stack, events: Events, registry: LimiterRegistry) -> AsyncIterator[S3Store]:
    # Objects up to two parts are read with one streamed GET, larger ones with ranged GETs;
    # re-readable sources up to two parts are written with one streamed PUT.
    config = S3Config(
        endpoint_url=front.front_url, part_size=PART, multipart_threshold=PART, copy_threshold=PART,
        part_concurrency=6, ranged_get_threshold=2 * PART, single_put_threshold=2 * PART,
    )
    async with S3Store(config, AdapterContext(events=events, limiters=registry)) as s3:
        yield s3


@pytest.fixture
async def bucket(store: S3Store) -> str:
    name = f"rf-{uuid.uuid4().hex[:12]}"
    await store.client.create_bucket(Bucket=name)
    return name


class Generated:
    """``size`` pseudo-random bytes from ``seed``, produced piece by piece, never all at once."""

    def __init__(self, size: int, seed: int = 0, piece: int = 1 << 20) -> None:
        self.size, self.seed, self.piece = size, seed, piece
        digest = hashlib.sha256()
        for block in self._blocks():
            digest.update(block)
        self.sha256 = digest.hexdigest()

    def _blocks(self) -> Iterator[bytes]:
        rng = random.Random(self.seed)
        left = self.size
        while left:
            n = min(self.piece, left)
            yield rng.randbytes(n)
            left -= n

    async def stream(self) -> AsyncIterator[bytes]:
        for block in self._blocks():
            yield block


async def sha256_of(pieces: AsyncIterator[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    async for piece in pieces:
        digest.update(piece)
        size += len(piece)
    return digest.hexdigest(), size
