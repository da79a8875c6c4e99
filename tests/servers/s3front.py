"""A throttling front for an S3 server (moto's server mode): S3's request limits, on loopback.

Real S3 serves a bounded request rate per partitioned key prefix (3,500 writes/s, 5,500 reads/s)
and answers ``503 SlowDown`` above it. This reverse proxy models that in front of moto (or any
HTTP storage, such as the W&B test server's): a token bucket per prefix for writes
(PUT/POST/DELETE) and one for reads (GET/HEAD), a ``503`` with S3's ``SlowDown`` XML body for
requests over the limit, and optional added latency, dropped connections (seeded) and GET bodies cut off part way.
Rejected requests do not consume tokens (S3 serves what it can). Admitted object requests are
counted per operation (``operations``: ``PutObject``, ``UploadPart``...), and the next
``slowdown_puts`` ``PutObject``s can be answered SlowDown, the next ``cut_puts`` reset after
``cut_after`` bytes of their body (failures of one upload, on cue).

``sse_c=True`` enforces S3's SSE-C rules, which moto does not check: an object written with a
customer key (``PutObject``, ``CreateMultipartUpload``, ``CopyObject`` with the
``x-amz-server-side-encryption-customer-*`` headers) needs the same key on every ``UploadPart``,
``UploadPartCopy``, ``GetObject`` and ``HeadObject`` (and, as ``x-amz-copy-source-...``, on
copies from it): missing, 400 ``InvalidRequest``; another key, 403 ``AccessDenied``. Requests
that carried a valid key are counted per operation in the prefix's ``sse_c`` statistics.

Control (JSON over HTTP, under a path no bucket can have):

* ``POST /__front__/config``  change settings (keys of ``FrontSettings``); resets the buckets
* ``GET  /__front__/stats``   ``{prefix: {accepted, throttled, dropped, timeline}}``
* ``POST /__front__/reset``   zero the statistics

``upstream="sink"`` answers admitted requests itself instead of forwarding them (writes get
200 and the body's MD5 as ETag, other requests 200 with an empty body): a back end with no
capacity limit of its own, so that a benchmark measures the front's limit, not moto's speed.

Run it in-process (``S3Front(upstream, settings).start()`` in a thread) or as a process:
``python -m tests.servers.s3front --upstream URL [--port 0] [--write-rate R] ...`` prints
``READY <port>``. ``start_s3_stack()`` starts moto's server and a front as processes on free
loopback ports and stops both at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import yarl
from aiohttp import web

CONTROL = "/__front__"
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
# Hop-by-hop headers (RFC 9110 §7.6.1) and those aiohttp recomputes: never forwarded.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
              "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Expect")
)
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>{rid}</RequestId></Error>"
)


@dataclass(kw_only=True)
class FrontSettings:
    """What the front enforces. Rates are requests/s per prefix; None means unlimited."""

    write_rate: float | None = None
    read_rate: float | None = None
    burst_seconds: float = 0.2  # bucket capacity = max(1, rate * burst_seconds)
    prefix_depth: int = 1  # bucket + this many leading key segments make a prefix
    latency: float = 0.0  # seconds added before forwarding each request
    drop_rate: float = 0.0  # probability of closing the connection instead of answering
    retry_after: float | None = None  # add a Retry-After header to SlowDown answers
    cut_gets: int = 0  # this many forwarded GET bodies are cut off (connection closed) ...
    cut_after: int = 0  # ... after this many body bytes (a connection lost mid-download)
    slowdown_puts: int = 0  # this many PutObjects are answered 503 SlowDown whatever the tokens
    cut_puts: int = 0  # this many PutObjects have their connection reset after cut_after body bytes
    sse_c: bool = False  # enforce SSE-C keys as S3 does (see module docstring)
    seed: int = 0

    def update(self, values: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for key, value in values.items():
            setattr(self, key, value)


class TokenBucket:
    """Tokens refill at ``rate``/s up to ``capacity``; time passed in, so it is testable."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class PrefixStats:
    accepted: int = 0
    throttled: int = 0
    dropped: int = 0
    cut: int = 0
    timeline: dict[int, list[int]] = field(default_factory=dict)  # second -> [accepted, throttled]
    sse_c: dict[str, int] = field(default_factory=dict)  # operation -> requests with a valid key
    sse_c_refused: int = 0
    operations: dict[str, int] = field(default_factory=dict)  # admitted object requests per operation

    def note(self, second: int, accepted: bool) -> None:
        cell = self.timeline.setdefault(second, [0, 0])
        if accepted:
            self.accepted += 1
            cell[0] += 1
        else:
            self.throttled += 1
            cell[1] += 1


def prefix_of(path: str, depth: int) -> str:
    """``bucket/seg1/../segN`` of a path-style S3 request path (or fewer if the key is short)."""
    parts = path.lstrip("/").split("/")
    bucket, key_parts = parts[0], parts[1:]
    if key_parts and key_parts[-1] == "":
        key_parts = key_parts[:-1]
    return "/".join([bucket, *key_parts[: max(0, min(depth, len(key_parts) - 1))]])


SSE_C = "x-amz-server-side-encryption-customer-"
SSE_C_SOURCE = "x-amz-copy-source-server-side-encryption-customer-"


def object_operation(method: str, query: Any, headers: Any) -> str | None:
    """The S3 operation of an object request (None: none that carries an object's bytes or keys)."""
    copy = "x-amz-copy-source" in headers
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload" if "uploadId" in query else None
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject"}.get(method)


def sse_c_key_md5(headers: Any, prefix: str) -> str | None:
    """The MD5 of a valid SSE-C key in ``headers`` (None: no key sent); ValueError if malformed."""
    algorithm, key, md5 = (headers.get(prefix + name) for name in ("algorithm", "key", "key-MD5"))
    if algorithm is None and key is None and md5 is None:
        return None
    try:
        raw = base64.b64decode(key or "", validate=True)
    except ValueError:
        raw = b""
    if algorithm != "AES256" or len(raw) != 32 or base64.b64encode(hashlib.md5(raw).digest()).decode() != md5:
        raise ValueError("malformed SSE-C headers")
    return md5


class S3Front:
    """The proxy (see module docstring). ``url`` is set once started."""

    def __init__(self, upstream: str, settings: FrontSettings | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.settings = settings or FrontSettings()
        self.url = ""
        self._buckets: dict[tuple[str, bool], TokenBucket] = {}
        self._stats: dict[str, PrefixStats] = {}
        self._encrypted: dict[str, str] = {}  # "bucket/key" -> MD5 of its SSE-C key
        self._rng = random.Random(self.settings.seed)
        self._epoch = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- decisions -----------------------------------------------------------------------

    def _admit(self, prefix: str, is_write: bool, now: float) -> bool:
        rate = self.settings.write_rate if is_write else self.settings.read_rate
        if rate is None:
            return True
        bucket = self._buckets.get((prefix, is_write))
        if bucket is None or bucket.rate != rate:
            capacity = max(1.0, rate * self.settings.burst_seconds)
            bucket = self._buckets[(prefix, is_write)] = TokenBucket(rate, capacity, now)
        return bucket.take(now)

    def _reconfigure(self, values: dict[str, Any]) -> None:
        self.settings.update(values)
        self._buckets.clear()
        self._rng = random.Random(self.settings.seed)

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return await self._control(request)
        prefix = prefix_of(request.path, self.settings.prefix_depth)
        stats = self._stats.setdefault(prefix, PrefixStats())
        if self.settings.drop_rate and self._rng.random() < self.settings.drop_rate:
            stats.dropped += 1
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp ends the handler quietly
        now = time.monotonic()
        admitted = self._admit(prefix, request.method in WRITE_METHODS, now)
        is_object = "/" in request.path.lstrip("/").rstrip("/")
        operation = object_operation(request.method, request.query, request.headers) if is_object else None
        if admitted and operation == "PutObject" and self.settings.slowdown_puts > 0:
            self.settings.slowdown_puts -= 1
            admitted = False
        stats.note(int(now - self._epoch), admitted)
        if not admitted:
            return await self._slow_down(request)
        if operation is not None:
            stats.operations[operation] = stats.operations.get(operation, 0) + 1
        if operation == "PutObject" and self.settings.cut_puts > 0:
            self.settings.cut_puts -= 1
            await request.content.readexactly(self.settings.cut_after)
            stats.cut += 1
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # the client sees its connection reset mid-body
        if self.settings.sse_c:
            refusal = self._check_sse_c(request, stats)
            if refusal is not None:
                stats.sse_c_refused += 1
                return await self._error(request, *refusal)
        if self.settings.latency:
            await asyncio.sleep(self.settings.latency)
        if self.upstream == "sink":
            return await self._sink(request)
        return await self._forward(request, stats)

    async def _sink(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.md5()
        async for piece in request.content.iter_chunked(1 << 20):
            digest.update(piece)
        headers = {"ETag": f'"{digest.hexdigest()}"'} if request.method in WRITE_METHODS else {}
        return web.Response(status=200, body=b"", headers=headers)

    def _check_sse_c(self, request: web.Request, stats: PrefixStats) -> tuple[int, str, str] | None:
        """None if the request may pass under S3's SSE-C rules, else (status, code, message)."""
        path = request.path.lstrip("/")
        if "/" not in path.rstrip("/"):
            return None  # a bucket request
        operation = object_operation(request.method, request.query, request.headers)
        if operation is None:
            return None
        try:
            sent = sse_c_key_md5(request.headers, SSE_C)
            source_sent = sse_c_key_md5(request.headers, SSE_C_SOURCE)
        except ValueError as exc:
            return 400, "InvalidArgument", str(exc)
        if operation in ("CopyObject", "UploadPartCopy"):
            source = urllib.parse.unquote(request.headers["x-amz-copy-source"].split("?")[0]).lstrip("/")
            if self._encrypted.get(source) != source_sent:
                return self._mismatch(self._encrypted.get(source), source_sent)
        stored = self._encrypted.get(path)
        if operation in ("PutObject", "CreateMultipartUpload", "CopyObject"):
            if sent is None:
                self._encrypted.pop(path, None)
            else:
                self._encrypted[path] = sent
        elif operation != "CompleteMultipartUpload" and stored != sent:
            return self._mismatch(stored, sent)
        if sent is not None:
            stats.sse_c[operation] = stats.sse_c.get(operation, 0) + 1
        return None

    @staticmethod
    def _mismatch(stored: str | None, sent: str | None) -> tuple[int, str, str]:
        if sent is None:
            return 400, "InvalidRequest", "The object was stored using a form of Server Side Encryption."
        if stored is None:
            return 400, "InvalidRequest", "The encryption parameters are not applicable to this object."
        return 403, "AccessDenied", "Access Denied"

    async def _error(self, request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
        async for _ in request.content.iter_chunked(1 << 20):
            pass
        if request.method == "HEAD":  # S3 answers a HEAD with the status alone
            return web.Response(status=status)
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
        return web.Response(status=status, body=body.encode(), headers={"Content-Type": "application/xml"})

    async def _slow_down(self, request: web.Request) -> web.StreamResponse:
        # Drain the body so the client reads our answer rather than a reset.
        async for _ in request.content.iter_chunked(1 << 20):
            pass
        body = SLOWDOWN_BODY.replace(b"{rid}", os.urandom(8).hex().encode())
        headers = {"Content-Type": "application/xml"}
        if self.settings.retry_after is not None:
            headers["Retry-After"] = f"{self.settings.retry_after:g}"
        return web.Response(status=503, body=body, headers=headers)

    async def _forward(self, request: web.Request, stats: PrefixStats) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = request.host
        data = request.content if request.body_exists else None
        async with self._session.request(
            request.method,
            yarl.URL(self.upstream + request.raw_path, encoded=True),
            headers=headers,
            data=data,
            allow_redirects=False,
            auto_decompress=False,
        ) as upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            if upstream.headers.get("Content-Length") is not None:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            cut_at = None
            if request.method == "GET" and upstream.status in (200, 206) and self.settings.cut_gets > 0:
                self.settings.cut_gets -= 1
                cut_at = self.settings.cut_after
            if request.method != "HEAD":
                sent = 0
                async for piece in upstream.content.iter_chunked(1 << 20):
                    if cut_at is not None and sent + len(piece) > cut_at:
                        await response.write(piece[: cut_at - sent])
                        stats.cut += 1
                        assert request.transport is not None
                        request.transport.abort()
                        raise asyncio.CancelledError  # as for a drop: the client sees a short body
                    await response.write(piece)
                    sent += len(piece)
            await response.write_eof()
            return response

    async def _control(self, request: web.Request) -> web.StreamResponse:
        action = request.path[len(CONTROL) :].strip("/")
        if action == "config" and request.method == "POST":
            try:
                self._reconfigure(orjson.loads(await request.read()))
            except (ValueError, TypeError) as exc:
                return web.Response(status=400, text=str(exc))
            return web.json_response(dataclasses.asdict(self.settings))
        if action == "config":
            return web.json_response(dataclasses.asdict(self.settings))
        if action == "stats":
            return web.Response(
                body=orjson.dumps(
                    {p: dataclasses.asdict(s) for p, s in self._stats.items()},
                    option=orjson.OPT_NON_STR_KEYS,
                ),
                content_type="application/json",
            )
        if action == "reset" and request.method == "POST":
            self._stats.clear()
            self._buckets.clear()
            self._encrypted.clear()
            self._epoch = time.monotonic()
            return web.json_response({})
        return web.Response(status=404, text=f"no control action {action!r}")

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0, ready: Any = None) -> None:
        """Serve until ``stop()``; ``ready(port)`` is called once listening."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,  # a proxy passes bodies on as they are (Content-Encoding: gzip objects)
        )
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}"
        if ready is not None:
            ready(bound)
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    def start(self) -> S3Front:
        """Serve from a daemon thread (for in-process tests); returns once listening."""
        started = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.serve(ready=lambda _: started.set())), daemon=True
        )
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("S3 front did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, deadline: float) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.05)


@dataclass
class S3Stack:
    """A moto S3 server and a throttling front in front of it, both on loopback."""

    moto_url: str
    front_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def configure(self, **settings: Any) -> dict[str, Any]:
        return _post_json(f"{self.front_url}{CONTROL}/config", settings)

    def reset_stats(self) -> None:
        _post_json(f"{self.front_url}{CONTROL}/reset", {})

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.front_url}{CONTROL}/stats", timeout=30) as response:
            return orjson.loads(response.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=orjson.dumps(payload), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())  # type: ignore[no-any-return]


@contextlib.contextmanager
def start_s3_stack(
    settings: FrontSettings | None = None, *, sink: bool = False, attempts: int = 5
) -> Iterator[S3Stack]:
    """Start ``moto.server`` and an ``S3Front`` process on free 127.0.0.1 ports; stop both after.

    With ``sink=True`` no moto is started and the front answers admitted requests itself.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stack = S3Stack(moto_url="", front_url="")
    try:
        if not sink:
            stack.moto_url = _start_moto(stack, env, attempts)
        args = [sys.executable, "-m", "tests.servers.s3front", "--upstream", stack.moto_url or "sink"]
        for key, value in dataclasses.asdict(settings or FrontSettings()).items():
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        front = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, cwd=root)
        stack.processes.append(front)
        assert front.stdout is not None
        line = front.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError(f"S3 front failed to start: {line!r}")
        stack.front_url = f"http://127.0.0.1:{line[1]}"
        yield stack
    finally:
        stack.stop()


def _start_moto(stack: S3Stack, env: dict[str, str], attempts: int) -> str:
    for attempt in range(attempts):
        port = free_port()  # moto needs a port number; retry if another process takes it
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/moto-api/", time.monotonic() + 60)
        except RuntimeError:
            moto.kill()
            moto.wait()
            if attempt == attempts - 1:
                raise
            continue
        stack.processes.append(moto)
        return f"http://127.0.0.1:{port}"
    raise RuntimeError("moto server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    for f in dataclasses.fields(FrontSettings):
        kind: Any = int if f.name in ("prefix_depth", "seed", "cut_gets", "cut_after") else float
        if f.name == "sse_c":
            kind = lambda value: value.lower() in ("1", "true", "yes")  # noqa: E731
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FrontSettings)}
    settings = FrontSettings(**{k: v for k, v in values.items() if v is not None})
    front = S3Front(args.upstream, settings)

    def ready(port: int) -> None:
        print(f"READY {port}", flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        serving = asyncio.ensure_future(front.serve(args.host, args.port, ready))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, front.stop)
        await serving

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
