"""An aiohttp app on a free 127.0.0.1 port, served by its own event loop in a daemon thread.

Why: the scripted fault servers are driven from synchronous test code and from the code under
test's own event loop alike; a private loop in a thread serves them without sharing either.
Subclasses build the app (``build_app``) and may hold resources for as long as it serves
(``lifespan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Self

import aiohttp
from aiohttp import web


HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


class LoopThreadServer:
    client_max_size = 1 << 30

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._stop_event: asyncio.Event | None = None
        self.url = ""

    def build_app(self) -> web.Application:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"{self._thread.name} did not start")
        return self

    def stop(self) -> None:
        if self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:  # an unclosed loop is a ResourceWarning (an error under filterwarnings = error)
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        async with self.lifespan():
            runner = web.AppRunner(self.build_app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            try:
                await self._stop_event.wait()
            finally:
                await runner.cleanup()


class ForwardingServer(LoopThreadServer):
    """A loop-thread server that sends every request to ``handle`` and holds one client
    session (``self.session``) for talking to an upstream server while it serves."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{self._thread.name} is not serving")
        return self._session

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            yield

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def relay(
        self, request: web.Request, url: str, body: bytes, params: list[tuple[str, str]] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send ``request`` (with ``body``) on to ``url``: the answer's status, headers (the
        hop-by-hop ones left out, as on the way there) and whole body (test traffic is small)."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self.session.request(
            request.method, url, params=params, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            return upstream.status, {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}, payload

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError
