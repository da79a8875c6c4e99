"""``_http1``'s pool against a raw loopback server that writes exactly the bytes each test scripts.

Framing (Content-Length, chunked, to the close), keep-alive rules, bytes arriving one at a time,
and every way an answer can go wrong: cut off, garbled, late, too big, or never; plus the pool's
own promises (a connection reused only after a whole answer, a stale one retried once, at most
``limit`` open, nothing pooled after a cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from adapters.s3 import _http1
from adapters.s3._http1 import Http1Pool, ProtocolError

CLOSE = object()  # in a script: close the connection here


@dataclass
class RawServer:
    """Answers each request with ``answer(request_number)``: a list of byte strings (each written
    and drained on its own) and ``CLOSE``; records the requests and connections it saw."""

    answer: Callable[[int], list[object]]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever a connection ends
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                for step in self.answer(len(self.requests) - 1):
                    if step is CLOSE:
                        return
                    assert isinstance(step, bytes)
                    writer.write(step)
                    await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed.set()


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[int], list[object]]) -> AsyncIterator[RawServer]:
    server = RawServer(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def pooled(answer: Callable[[int], list[object]], **options: Any) -> AsyncIterator[tuple[RawServer, Http1Pool]]:
    """A raw server answering with ``answer`` and a pool to it (closed after)."""
    async with raw_server(answer) as server:
        pool = Http1Pool("127.0.0.1", server.port, tls=None, **options)
        try:
            yield server, pool
        finally:
            await pool.aclose()


def request(body: bytes = b"payload") -> bytes:
    return b"PUT /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def ok(body: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def test_answers_by_content_length_reuse_one_connection() -> None:
    async with pooled(lambda n: [ok(b"body %d" % n)]) as (server, pool):
        answers = [await pool.request(request(b"x" * n), body_limit=1024) for n in range(5)]
    assert [a.body for a in answers] == [b"body %d" % n for n in range(5)]
    assert answers[0].status == 200 and answers[0].headers["etag"] == '"e"'
    assert server.connections == 1
    assert [r.endswith(b"\r\n\r\n" + b"x" * n) for n, r in enumerate(server.requests)] == [True] * 5


async def test_a_chunked_answer_read_one_byte_at_a_time() -> None:
    wire = (b"HTTP/1.1 503 Slow Down\r\nTransfer-Encoding: chunked\r\nX-Amz-Request-Id: r1\r\n\r\n"
            b"5;ext=1\r\n<Err>\r\n0b\r\nSlowDown</E\r\n3\r\nrr>\r\n0\r\nTrailer: t\r\n\r\n")
    async with pooled(lambda n: [wire[i : i + 1] for i in range(len(wire))] if n == 0 else [ok(b"next")]) as (server, pool):
        first = await pool.request(request(), body_limit=1024)
        second = await pool.request(request(), body_limit=1024)
    assert (first.status, first.body, first.headers["x-amz-request-id"]) == (503, b"<Err>SlowDown</Err>", "r1")
    assert second.body == b"next" and server.connections == 1


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
    ],
)
async def test_keep_alive_follows_what_the_server_said(answer: bytes, reused: bool) -> None:
    async with pooled(lambda n: [answer] if reused else [answer, CLOSE]) as (server, pool):
        for _ in range(3):
            assert (await pool.request(request(), body_limit=1024)).body == answer.partition(b"\r\n\r\n")[2]
    assert server.connections == (1 if reused else 3)


async def test_an_answer_ended_by_the_close_is_read_whole_and_not_reused() -> None:
    async with pooled(lambda n: [b"HTTP/1.1 200 OK\r\n\r\n", b"part one, ", b"part two", CLOSE]) as (server, pool):
        answers = [await pool.request(request(), body_limit=1024) for _ in range(2)]
    assert [a.body for a in answers] == [b"part one, part two"] * 2
    assert server.connections == 2


@pytest.mark.parametrize(
    "wire",
    [
        [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345", CLOSE],  # body cut off
        [b"HTTP/1.1 200 OK\r\ncontent-le", CLOSE],  # head cut off
        [b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc", CLOSE],  # chunk cut off
        [b"SSH-2.0-OpenSSH\r\n\r\n"],  # not HTTP
        [b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        [b"HTTP/1.1 200 OK\r\n no-name\r\n\r\n"],
        [CLOSE],  # nothing at all, on a new connection
    ],
)
async def test_broken_answers_are_connection_errors_and_the_connection_is_dropped(wire: list[object]) -> None:
    async with pooled(lambda n: wire if n == 0 else [ok(b"fine")]) as (server, pool):
        with pytest.raises(ProtocolError):
            await pool.request(request(), body_limit=1024)
        assert (await pool.request(request(), body_limit=1024)).body == b"fine"
    assert server.connections == 2


async def test_a_long_chunked_answer_is_cut_at_the_limit_and_its_connection_closed() -> None:
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, bytes([n]) * 1000) for n in range(200))
    wire = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks  # never ends
    async with pooled(lambda n: [wire] if n == 0 else [ok(b"small")]) as (server, pool):
        first = await pool.request(request(), body_limit=2500)
        second = await pool.request(request(), body_limit=2500)
    assert first.status == 500 and first.body == b"\x00" * 1000 + b"\x01" * 1000 + b"\x02" * 500
    assert second.body == b"small" and server.connections == 2


async def test_an_interim_100_continue_is_skipped() -> None:
    async with pooled(lambda n: [b"HTTP/1.1 100 Continue\r\n\r\n", ok(b"final")]) as (server, pool):
        answer = await pool.request(request(), body_limit=1024)
    assert (answer.status, answer.body) == (200, b"final")


async def test_a_body_beyond_the_limit_is_cut_and_its_connection_closed() -> None:
    big = bytes(range(256)) * 64
    async with pooled(lambda n: [ok(big)] if n == 0 else [ok(b"small")]) as (server, pool):
        first = await pool.request(request(), body_limit=1000)
        second = await pool.request(request(), body_limit=1000)
    assert first.body == big[:1000] and second.body == b"small"
    assert server.connections == 2


async def test_bytes_after_the_answer_keep_the_connection_out_of_the_pool() -> None:
    async with pooled(lambda n: [ok(b"a") + b"HTTP/1.1 200 OK\r\n"] if n == 0 else [ok(b"b")]) as (server, pool):
        assert (await pool.request(request(), body_limit=1024)).body == b"a"
        assert (await pool.request(request(), body_limit=1024)).body == b"b"
    assert server.connections == 2


async def test_no_answer_within_the_read_timeout_is_a_timeout() -> None:
    def answer(n: int) -> list[object]:
        return [] if n == 0 else [ok(b"later")]

    async with pooled(answer, read_timeout=0.05) as (server, pool):
        with pytest.raises(TimeoutError):
            await pool.request(request(), body_limit=1024)
        assert (await pool.request(request(), body_limit=1024)).body == b"later"
    assert server.connections == 2


async def test_a_cancelled_request_closes_its_connection() -> None:
    arrived = asyncio.Event()

    def answer(n: int) -> list[object]:
        if n == 0:
            arrived.set()
            return []  # hold the answer back
        return [ok(b"after")]

    async with pooled(answer) as (server, pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(pool.request, request(), body_limit=1024))
            await arrived.wait()
            tg.cancel_scope.cancel()
        await server.closed.wait()  # the server saw that connection end
        assert (await pool.request(request(), body_limit=1024)).body == b"after"
    assert server.connections == 2


async def test_a_kept_alive_connection_the_server_closed_is_retried_once_on_a_new_one() -> None:
    # the server closes the kept-alive connection as the second request arrives (its idle
    # timeout racing the request): the request goes once more, on a new connection
    async with pooled(lambda n: [CLOSE] if n == 1 else [ok(b"%d" % n)]) as (server, pool):
        assert (await pool.request(request(), body_limit=1024)).body == b"0"
        assert (await pool.request(request(), body_limit=1024)).body == b"2"
    assert server.connections == 2 and len(server.requests) == 3


async def test_no_second_try_after_answer_bytes_and_no_third_one() -> None:
    script: dict[int, list[object]] = {1: [b"HTTP/1.1 200", CLOSE], 3: [CLOSE], 4: [CLOSE]}
    async with pooled(lambda n: script.get(n, [ok(b"%d" % n)])) as (server, pool):
        await pool.request(request(), body_limit=1024)
        with pytest.raises(ProtocolError):  # the answer had begun: the server may have acted on it
            await pool.request(request(), body_limit=1024)
        assert (await pool.request(request(), body_limit=1024)).body == b"2"
        with pytest.raises(ProtocolError):  # stale, then the new connection closed too: no third try
            await pool.request(request(), body_limit=1024)
    assert len(server.requests) == 5 and server.connections == 3


async def test_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http1, "IDLE_SECONDS", 0.0)
    async with pooled(lambda n: [ok()]) as (server, pool):
        for _ in range(3):
            await pool.request(request(), body_limit=1024)
    assert server.connections == 3


async def test_at_most_limit_connections_are_open() -> None:
    bodies: list[bytes] = []
    async with pooled(lambda n: [ok(b"%d" % n)], limit=2) as (server, pool):

        async def one() -> None:
            bodies.append((await pool.request(request(), body_limit=1024)).body)

        async with anyio.create_task_group() as tg:
            for _ in range(8):  # all eight are sent before any answer comes back
                tg.start_soon(one)
    assert sorted(bodies) == sorted(b"%d" % n for n in range(8))
    assert server.most_open == 2 and server.connections == 2


async def test_a_refused_connection_is_a_connection_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    pool = Http1Pool("127.0.0.1", port, tls=None)
    with pytest.raises(ConnectionError):
        await pool.request(request(), body_limit=1024)
    await pool.aclose()
