"""A lean HTTP/1.1 keep-alive client for the small PUTs ``_direct`` sends (one origin, bodies in memory).

Why: at a few thousand small PUTs a second from one process, aiohttp's general request
machinery (sessions, tracing, multidicts, payload objects, per-request timers) was the largest
share of the client's CPU (a third of it in py-spy, more than signing and the limiter
together). A request whose head and body are bytes in hand needs none of it: one
``transport.write`` of head and body, and a parser for one answer (a status line, headers,
then a body by ``Content-Length``, chunked, or up to the close).

What it keeps of a real client: a bounded pool of idle connections, dropped after
``IDLE_SECONDS`` unused or when the server said ``Connection: close`` (or HTTP/1.0 without
keep-alive); a request that finds its kept-alive connection closed by the server before any
answer byte goes once more on a new one (the server's idle timeout; a PUT may be repeated);
a connect timeout and a read timeout between received bytes (``TimeoutError``); a connection
used again only after its answer was read whole; one that a cancelled, failed or timed-out
request leaves is closed, never pooled. Failures are ``ConnectionError`` (a closed or garbled
answer; ``ConnectError`` with the cause, such as a refused certificate, when no connection
could be made) or ``TimeoutError``, which ``_errors.NETWORK_ERRORS`` counts as worth another
attempt.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass

import anyio

IDLE_SECONDS = 15.0  # aiohttp's keep-alive default: servers close idle connections after 5-75 s
MAX_HEAD = 64 * 1024  # status line and headers; more is not an S3 answer


class ProtocolError(ConnectionError):
    """The answer was not HTTP/1.1 we can read, or the connection ended inside it."""


class ConnectError(ConnectionError):
    """No connection could be made; ``__cause__`` holds why (DNS, TLS, routing)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer: status, headers by lower-case name (repeats joined by ", "), body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses the one answer to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float | None) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body_limit = 0
        self._head: tuple[int, dict[str, str], bool] | None = None  # status, headers, keep-alive
        self.reusable = False
        self.received = False  # any byte of the current answer (then no silent second try)
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._fail(ProtocolError("bytes from the server with no request waiting"))
            return
        self.received = True
        self._buffer += data
        self._arm_timer()
        try:
            answer = self._parse(eof=False)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if answer is not None:
            self._finish(answer)

    def eof_received(self) -> bool:
        if self._waiter is not None and not self._waiter.done():
            try:
                answer = self._parse(eof=True)
            except ProtocolError as exc:
                self._fail(exc)
                return False
            if answer is not None:
                self.reusable = False
                self._finish(answer)
                return False
        self._fail(ProtocolError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ProtocolError("the connection was closed"))

    # -- requests ----------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def exchange(self, request: bytes, body_limit: int) -> Answer:
        """Send ``request`` (head and body) and wait for its answer; closes the connection on
        any failure or cancellation (its state is unknown)."""
        assert self._transport is not None
        self._buffer.clear()
        self._head = None
        self._body_limit = body_limit
        self.reusable = self.received = False
        self._waiter = self._loop.create_future()
        try:
            self._transport.write(request)
            self._arm_timer()
            return await self._waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._cancel_timer()
            self._waiter = None

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()

    # -- parsing -----------------------------------------------------------------------

    def _parse(self, *, eof: bool) -> Answer | None:
        """The answer once the buffer holds all of it (at ``eof``: what the close ended)."""
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD or eof:
                    raise ProtocolError("the answer's head is cut off or too long")
                return None
            self._head = _read_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if 100 <= self._head[0] < 200:  # an interim answer (100 Continue): the real one follows
                self._head = None
                return self._parse(eof=eof)
        status, headers, keep_alive = self._head
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding and encoding != "identity":
            if encoding != "chunked":
                raise ProtocolError(f"transfer-encoding {encoding!r} is not supported")
            body, complete = self._chunked(eof=eof)
            if not complete:
                if len(self._buffer) <= self._body_limit + MAX_HEAD:
                    return None
                # a long one (the buffer is parsed anew as bytes come): keep the start, drop the rest
                return self._answer(body, reusable=False)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"content-length {headers['content-length']!r}") from None
            if length > self._body_limit:  # keep the start, drop the connection with the rest
                if len(self._buffer) < self._body_limit and not eof:
                    return None
                return self._answer(bytes(self._buffer[: self._body_limit]), reusable=False)
            if len(self._buffer) < length:
                if eof:
                    raise ProtocolError(f"the answer's body is cut off at {len(self._buffer)} of {length} bytes")
                return None
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
        elif status in (204, 304):
            body = b""
        else:  # the body ends with the connection
            if not eof and len(self._buffer) < self._body_limit:
                return None
            return self._answer(bytes(self._buffer[: self._body_limit]), reusable=False)
        return self._answer(body, reusable=keep_alive and not self._buffer)

    def _chunked(self, *, eof: bool) -> tuple[bytes, bool]:
        """The body of the chunked answer in the buffer (at most ``body_limit`` bytes of it), and
        whether it is complete (then its bytes are taken out of the buffer)."""
        body = bytearray()
        at = 0
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                break
            try:
                size = int(bytes(buffer[at:line_end]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("a chunk size that is not a number") from None
            if size == 0:
                trailers_end = buffer.find(b"\r\n\r\n", line_end)  # at line_end when there are none
                if trailers_end < 0:
                    break
                del buffer[: trailers_end + 4]
                return bytes(body[: self._body_limit]), True
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            if len(body) < self._body_limit:
                body += buffer[start : start + size]
            at = start + size + 2
        if eof:
            raise ProtocolError("the chunked answer is cut off")
        return bytes(body[: self._body_limit]), False

    def _answer(self, body: bytes, *, reusable: bool) -> Answer:
        assert self._head is not None
        self.reusable = reusable
        return Answer(self._head[0], self._head[1], body)

    # -- completion and timers ---------------------------------------------------------

    def _finish(self, answer: Answer) -> None:
        self._cancel_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(answer)

    def _fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def _arm_timer(self) -> None:
        if self._read_timeout is None:
            return
        self._cancel_timer()
        self._timer = self._loop.call_later(self._read_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError(f"no answer within the read timeout ({self._read_timeout} s)"))


def _read_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and whether the connection stays open after this answer."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or status_line[0] not in ("HTTP/1.1", "HTTP/1.0") or not status_line[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"a malformed header line: {line[:100]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if status_line[0] == "HTTP/1.0" else "close" not in tokens
    return int(status_line[1]), headers, keep_alive


class Http1Pool:
    """Keep-alive connections to one origin (``host``:``port``, TLS when ``tls`` is a context);
    at most ``limit`` open at once, requests beyond it wait for one."""

    def __init__(
        self, host: str, port: int, *, tls: ssl.SSLContext | None, server_hostname: str | None = None,
        limit: int = 64, connect_timeout: float | None = None, read_timeout: float | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._tls, self._server_hostname = tls, server_hostname
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        # asyncio's: anyio's checkpoints on every uncontended acquire (7 % of a small PUT's CPU)
        self._slots = asyncio.Semaphore(limit)
        self._idle: deque[_Connection] = deque()
        self._closed = False

    async def request(self, request: bytes, *, body_limit: int) -> Answer:
        """Send one request (head and body as bytes) and read its answer (at most ``body_limit``
        bytes of its body are kept; a connection whose answer had more is closed)."""
        async with self._slots:
            connection = self._idle_connection()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            try:
                answer = await connection.exchange(request, body_limit)
            except ConnectionError:
                if not reused or connection.received:
                    raise
                # a kept-alive connection the server had closed before it read this request
                # (its idle timeout): once more on a new one, as urllib3 does
                connection = await self._connect()
                answer = await connection.exchange(request, body_limit)
            if connection.reusable and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely closed
            if connection.open and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ProtocolError("the connection pool is closed")
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout), self._host, self._port,
                    ssl=self._tls, server_hostname=self._server_hostname if self._tls else None,
                )
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:  # a name that does not resolve, a refused certificate...: the cause says
            raise ConnectError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return connection

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
