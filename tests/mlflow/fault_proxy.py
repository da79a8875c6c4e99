"""A loopback proxy in front of a real MLflow server that injects the failures a healthy server
never shows: 429 with Retry-After, 503, connection resets, truncated JSON bodies, and the
behaviour of servers older than 3.1.1 that ignore ``metrics/get-history`` paging.

Runs in its own thread and event loop. ``fail(path_part, *actions)`` queues what the next
requests whose path contains ``path_part`` get instead of (or on top of) the real answer;
everything else is forwarded unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.servers.loop_thread import ForwardingServer



@dataclass(frozen=True)
class Answer:
    """Answer this instead of forwarding."""

    status: int
    body: bytes = b'{"error_code": "INJECTED", "message": "injected by the fault proxy"}'
    headers: dict[str, str] = field(default_factory=dict)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESET = _Marker("RESET")  # close the connection without an answer
TRUNCATE = _Marker("TRUNCATE")  # forward, then send half of the real body (declared in full) and close
BAD_JSON = _Marker("BAD_JSON")  # forward, then answer 200 with the body cut in half (length matches)
LOST_ANSWER = _Marker("LOST_ANSWER")  # forward (the server acts), then reset instead of answering


class FaultProxy(ForwardingServer):
    client_max_size = 1 << 31

    def __init__(self, upstream: str) -> None:
        super().__init__("mlflow-fault-proxy")
        self.upstream = upstream.rstrip("/")
        self.ignore_paging = False
        self.requests: list[tuple[str, str]] = []
        self.queries: list[tuple[str, list[tuple[str, str]]]] = []  # (path, query parameters), every request
        self.in_flight = 0
        self.most_in_flight = 0  # the most requests the proxy held at once since the last reset
        self.gather = 0  # hold requests until this many are in flight together (once); 0 = off
        self.gather_path = ""  # ... only requests whose path has this part
        self._gathered: asyncio.Event | None = None
        self._faults: dict[str, deque[object]] = defaultdict(deque)
        self._lock = threading.Lock()

    def fail(self, path_part: str, *actions: object) -> None:
        with self._lock:
            self._faults[path_part].extend(actions)

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._faults.values())

    def count(self, path_part: str) -> int:
        with self._lock:
            return sum(1 for _, path in self.requests if path_part in path)

    def asked(self, path: str, parameter: str) -> list[str]:
        """The values of query ``parameter`` in the requests to ``path``, in arrival order."""
        with self._lock:
            return [next((v for k, v in query if k == parameter), "") for at, query in self.queries if at == path]

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.queries.clear()
            self.ignore_paging = False
            self.most_in_flight = 0
            self.gather, self.gather_path, self._gathered = 0, "", None

    def _next_action(self, path: str, method: str, query: list[tuple[str, str]]) -> object | None:
        with self._lock:
            self.requests.append((method, path))
            self.queries.append((path, query))
            for suffix, queue in self._faults.items():
                if suffix in path and queue:
                    return queue.popleft()
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1  # the proxy's own loop thread is the only writer
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gather and self.gather_path in request.path:
                await self._gather()
            return await self._forward(request)
        finally:
            self.in_flight -= 1

    async def _gather(self) -> None:
        """Hold this request until ``gather`` requests are in flight together, so a test of a
        client's concurrency sees it whatever the machine's speed (30 s at most: a client that
        never overlaps requests then fails the test's own assertion instead of hanging it)."""
        if self._gathered is None:
            self._gathered = asyncio.Event()
        if self.in_flight >= self.gather:
            self._gathered.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gathered.wait(), 30)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        action = self._next_action(request.path, request.method, list(request.query.items()))
        if isinstance(action, Answer):
            await request.read()
            return web.Response(status=action.status, body=action.body, headers=action.headers)
        if action is RESET:
            await request.read()
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        query = list(request.query.items())
        history = request.path.endswith("metrics/get-history")
        if history and self.ignore_paging:
            query = [(k, v) for k, v in query if k not in ("max_results", "page_token")]
        body = await request.read()  # test traffic is small; a plain body keeps the server simple
        status, out_headers, payload = await self.relay(request, self.upstream + request.path, body, query)
        if history and self.ignore_paging and status == 200:
            document = orjson.loads(payload)
            document.pop("next_page_token", None)
            payload = orjson.dumps(document)
        if action is LOST_ANSWER:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if action is TRUNCATE:
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        if action is BAD_JSON:
            payload = payload[: max(1, len(payload) // 2)]
        return web.Response(status=status, body=payload, headers=out_headers)
