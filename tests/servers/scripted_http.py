"""A tiny loopback HTTP server whose answers tests script one by one (in its own thread).

``ScriptedServer.script(path, *actions)`` queues what the next requests to ``path`` get:
``reply(status, body, headers)``, ``RESET`` (close the connection without an answer),
``truncated(body, declared)`` (declare ``declared`` bytes, send ``body``, close), ``HANG``
(never answer). When a path's
script is empty it answers 200 ``{"ok": true}``. ``/upload`` answers the length and SHA-256 of
the body it received; ``/bytes/N`` streams N pattern bytes (``pattern(N)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.servers.loop_thread import LoopThreadServer


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Truncated:
    body: bytes
    declared: int


class _Reset:
    def __repr__(self) -> str:
        return "RESET"


RESET = _Reset()


class _Hang:
    def __repr__(self) -> str:
        return "HANG"


HANG = _Hang()  # never answer (until the server stops): provokes client read timeouts


def reply(status: int = 200, body: bytes | str | object = b'{"ok": true}', headers: dict[str, str] | None = None) -> Reply:
    if not isinstance(body, bytes):
        body = body.encode() if isinstance(body, str) else orjson.dumps(body)
    return Reply(status, body, dict(headers or {}))


def truncated(body: bytes, declared: int) -> Truncated:
    return Truncated(body, declared)


def pattern(n: int) -> bytes:
    """Deterministic, non-repeating-looking bytes (so misplaced pieces are caught)."""
    return bytes((i * 7 + (i >> 8) * 13) & 0xFF for i in range(n))


class ScriptedServer(LoopThreadServer):
    """Starts on a free 127.0.0.1 port in a daemon thread; ``url`` is its base URL."""

    def __init__(self) -> None:
        super().__init__("scripted-http")
        self._scripts: dict[str, deque[object]] = defaultdict(deque)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def script(self, path: str, *actions: object) -> None:
        with self._lock:
            self._scripts[path].extend(actions)

    def clear(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, p, _ in self.requests if p == path)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_route("*", "/upload", self._upload)
        app.router.add_get("/bytes/{n}", self._bytes)
        app.router.add_route("*", "/{tail:.*}", self._scripted)
        return app

    def _next(self, request: web.Request) -> object:
        with self._lock:
            self.requests.append((request.method, request.path, dict(request.headers)))
            script = self._scripts.get(request.path)
            return script.popleft() if script else None

    async def _scripted(self, request: web.Request) -> web.StreamResponse:
        action = self._next(request)
        await request.read()
        if action is None:
            action = reply()
        return await self._perform(request, action)

    async def _perform(self, request: web.Request, action: object) -> web.StreamResponse:
        if action is HANG:
            await self._stop_event.wait()
        if action is RESET:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the handler quietly
        if isinstance(action, Truncated):
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = action.declared
            await response.prepare(request)
            await response.write(action.body)
            assert request.transport is not None
            request.transport.close()
            return response
        assert isinstance(action, Reply), action
        return web.Response(status=action.status, body=action.body, headers=action.headers)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        action = self._next(request)
        digest, size = hashlib.sha256(), 0
        async for piece in request.content.iter_any():
            digest.update(piece)
            size += len(piece)
        if action is not None:
            return await self._perform(request, action)
        return web.json_response(
            {"size": size, "sha256": digest.hexdigest(), "chunked": request.headers.get("Transfer-Encoding") == "chunked"},
            headers={"X-Received": str(size)},
        )

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        action = self._next(request)
        n = int(request.match_info["n"])
        data = pattern(n)
        if isinstance(action, Truncated):
            action = Truncated(data[: action.declared], n)
        if action is not None:
            return await self._perform(request, action)
        response = web.StreamResponse(status=200)
        response.content_length = n
        await response.prepare(request)
        for start in range(0, n, 65536):
            await response.write(data[start : start + 65536])
        await response.write_eof()
        return response
