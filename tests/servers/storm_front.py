"""A loopback front that forwards to a real server and injects a seeded storm of faults: resets,
5xx, 429 with ``Retry-After``, 503 SlowDown, timeouts, truncated and slow bodies.

Why: a soak must meet thousands of faults of every kind, deterministic enough to replay, and
count exactly what it injected so the client's own throttle and retry counts can be checked
against it. Scripted fronts (``tests/mlflow/fault_proxy.py``) fail chosen requests; this one
decides for every request from a seed.

Deciding: a request's identity is its method, path, query and body. Its n-th attempt (n counted
per identity) is faulted when ``Random(f"{seed}:{identity}:{n}")`` says so, at most
``max_in_a_row`` times in a row, so a client with more attempts than that never gives up, and the
same requests meet the same faults whatever the order they arrive in. Faults that let the server
act first (``truncate``, ``slow``) are chosen only for requests that cannot change state: every
request when the front stands before a source (``reads_only=True``: the source is read-only),
GET and HEAD otherwise. Everything else is refused before the server sees the request.

``counts`` holds what was injected, by kind; ``throttles()`` and ``retries_caused()`` say what a
client should report for them (a slow body is a fault that costs no retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from tests.servers.loop_thread import ForwardingServer

_JSON = {"Content-Type": "application/json"}
BEFORE = ("reset", "5xx", "429", "slowdown", "timeout")
"""Faults answered (or not) without the server seeing the request."""
AFTER = ("truncate", "slow")
"""Faults on the server's real answer."""
THROTTLES = ("429", "slowdown")


@dataclass(frozen=True)
class Storm:
    """How often and which: ``rate`` is the share of attempts faulted; ``weights`` pick the kind."""

    seed: int = 0
    rate: float = 0.15
    weights: dict[str, float] = field(default_factory=lambda: {
        # throttles are rare on purpose: each one slows the endpoint's rate down (CUBIC), and a
        # client that met one every few requests would crawl (the soak would measure patience)
        "reset": 0.25, "5xx": 0.35, "429": 0.012, "slowdown": 0.008, "timeout": 0.005, "truncate": 0.2, "slow": 0.1,
    })
    max_in_a_row: int = 3
    retry_after: tuple[str, ...] = ("0", "0", "0", "1")  # mostly "retry now", now and then a pause
    hold_s: float = 3.5  # a timeout: held this long (longer than the client's timeout), then cut
    slow_pause_s: float = 0.02


class StormFront(ForwardingServer):
    """``StormFront(upstream, Storm(...), reads_only=...).start()``; ``url`` is the front's."""

    def __init__(self, upstream: str, storm: Storm | None, *, reads_only: bool) -> None:
        super().__init__("storm-front")
        self.upstream = upstream.rstrip("/")
        self.storm = storm  # None: forward everything untouched
        self.reads_only = reads_only
        self.counts: Counter[str] = Counter()
        self.injected: list[tuple[str, str, str]] = []  # (kind, method, path) in order
        self.requests = 0
        self._attempts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def throttles(self) -> int:
        with self._lock:
            return sum(self.counts[k] for k in THROTTLES)

    def retries_caused(self) -> int:
        with self._lock:
            return sum(n for k, n in self.counts.items() if k != "slow")

    def faults(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _decide(self, method: str, path: str, query: str, body: bytes) -> str | None:
        identity = hashlib.sha256(b"\0".join([method.encode(), path.encode(), query.encode(), body])).hexdigest()
        with self._lock:
            self.requests += 1
            storm = self.storm
            if storm is None:
                return None
            attempt = self._attempts[identity]
            self._attempts[identity] += 1
        if attempt >= storm.max_in_a_row:
            return None
        rng = random.Random(f"{storm.seed}:{identity}:{attempt}")
        if rng.random() >= storm.rate:
            return None
        allowed = BEFORE + (AFTER if self.reads_only or method in ("GET", "HEAD") else ())
        kinds = [k for k in allowed if storm.weights.get(k, 0.0) > 0]
        if not kinds:
            return None
        kind = rng.choices(kinds, [storm.weights[k] for k in kinds])[0]
        with self._lock:
            self.counts[kind] += 1
            self.injected.append((kind, method, path))
        if kind == "429":
            return "429:" + rng.choice(storm.retry_after)
        if kind == "5xx":
            return "5xx:" + str(rng.choice((500, 502, 504)))
        return kind

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._decide(request.method, request.path, request.query_string, body)
        storm = self.storm
        if fault == "reset" or fault == "timeout":
            if fault == "timeout" and storm is not None:
                await asyncio.sleep(storm.hold_s)  # the client gives up first
            transport = request.transport  # None when the client gave up first (a timeout)
            if transport is not None:
                # a real reset (RST, not FIN), as a dropped connection looks to a client
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without an answer
        if fault is not None and fault.startswith("429:"):
            return web.Response(status=429, body=b'{"error_code": "RESOURCE_EXHAUSTED", "message": "injected 429"}',
                                headers={**_JSON, "Retry-After": fault[4:]})
        if fault is not None and fault.startswith("5xx:"):
            return web.Response(status=int(fault[4:]), body=b'{"error_code": "INTERNAL_ERROR", "message": "injected"}',
                                headers=_JSON)
        if fault == "slowdown":
            return web.Response(status=503, content_type="application/xml", body=(
                b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>"))
        status, out_headers, payload = await self.relay(request, self.upstream + request.path_qs, body)
        if fault in AFTER and len(payload) < 2:  # nothing to cut or drip: not injected after all
            with self._lock:
                self.counts[fault] -= 1
                self.injected.remove((fault, request.method, request.path))
        elif fault in AFTER:
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = len(payload)
            await response.prepare(request)
            if fault == "truncate":
                await response.write(payload[: len(payload) // 2])
                if request.transport is not None:
                    request.transport.close()
                return response
            quarter = max(1, len(payload) // 4)
            for start in range(0, len(payload), quarter):
                await response.write(payload[start : start + quarter])
                await asyncio.sleep(storm.slow_pause_s if storm is not None else 0.0)
            await response.write_eof()
            return response
        return web.Response(status=status, body=payload, headers=out_headers)
