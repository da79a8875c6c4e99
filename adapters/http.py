"""The one HTTP client every HTTP-speaking adapter shares: retries, limits and error mapping.

Each ``HttpClient`` owns one aiohttp session. Every request passes through the endpoint's
adaptive limiter (``context.limiters``, one controller per ``scheme://host:port`` shared by all
workers) and ends in one of: a result, or a ``core.errors`` exception. Adapters decide what a
response *means* by passing a classifier (``classify_default`` handles plain HTTP semantics);
the client decides what to *do*: retry throttles and transient failures with jittered backoff
within the endpoint's retry budget, and map the rest to ``AuthError``, ``NotFoundError`` or
``FatalError`` with the server's own message. Secrets never reach messages: query strings
(presigned URLs) are cut from URLs and headers are never quoted.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import json
import re
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import anyio
import orjson

from core.protocols import AdapterContext
from core.errors import (
    AuthError,
    FatalError,
    NotFoundError,
    RetryableError,
    ThrottledError,
    TransientError,
)
from ratelimit import EndpointLimiter, LimiterRegistry, Retrying, Ticket, endpoint_of

T = TypeVar("T")


class Classification(enum.Enum):
    """What a response means for the caller (each adapter may classify its own way)."""

    OK = "ok"
    THROTTLE = "throttle"
    TRANSIENT = "transient"
    FATAL = "fatal"
    AUTH = "auth"
    NOT_FOUND = "not_found"


Classifier = Callable[[int, Mapping[str, str], bytes], Classification]

# 429 Too Many Requests and 503 (S3 SlowDown, overloaded gateways) both mean "slow down".
THROTTLE_STATUSES = frozenset({429, 503})
# 408 Request Timeout: the server gave up waiting for us; worth another attempt.
TRANSIENT_STATUSES = frozenset({408})


def classify_default(status: int, headers: Mapping[str, str], body: bytes) -> Classification:
    """Plain HTTP: 2xx OK; 401/403 auth; 404 not found; 429/503 throttle; 408/5xx transient."""
    if 200 <= status < 300:
        return Classification.OK
    if status in (401, 403):
        return Classification.AUTH
    if status == 404:
        return Classification.NOT_FOUND
    if status in THROTTLE_STATUSES:
        return Classification.THROTTLE
    if status in TRANSIENT_STATUSES or status >= 500:
        return Classification.TRANSIENT
    return Classification.FATAL


def parse_retry_after(value: str | None, *, wall_now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if wall_now is None else wall_now
    return max(0.0, when.timestamp() - now)


_STRUCTURED_RATELIMIT = re.compile(r"\b(remaining|reset|r|t)\s*=\s*([0-9.]+)", re.IGNORECASE)


def parse_rate_limit(headers: Mapping[str, str], *, wall_now: float | None = None) -> tuple[float, float] | None:
    """``(remaining, seconds until reset)`` from ``RateLimit-Remaining``/``-Reset`` (IETF draft),
    the structured ``RateLimit: remaining=.., reset=..`` form, or ``X-RateLimit-*`` (where a reset
    above 10^9 is an epoch time). None when the server did not say."""
    remaining = headers.get("RateLimit-Remaining") or headers.get("X-RateLimit-Remaining")
    reset = headers.get("RateLimit-Reset") or headers.get("X-RateLimit-Reset")
    if remaining is None or reset is None:
        structured = headers.get("RateLimit")
        if structured:
            aliases = {"remaining": "r", "r": "r", "reset": "t", "t": "t"}
            fields = {aliases[k.lower()]: v for k, v in _STRUCTURED_RATELIMIT.findall(structured)}
            remaining, reset = fields.get("r"), fields.get("t")
    if remaining is None or reset is None:
        return None
    try:
        remaining_value, reset_value = float(remaining), float(reset)
    except ValueError:
        return None
    if reset_value > 1e9:
        reset_value -= time.time() if wall_now is None else wall_now
    return remaining_value, max(0.0, reset_value)


def redact_url(url: str) -> str:
    """The URL without query, fragment or user info: what is safe to put in messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_XML_MESSAGE = re.compile(rb"<(Code|Message)>([^<]{0,300})</\1>")


def server_message(body: bytes, limit: int = 500) -> str:
    """The server's own explanation, from a JSON or XML error body, or its first bytes."""
    text = ""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("error_code", "code", "error", "message", "detail", "errors") if data.get(k)]
        text = ": ".join(parts)
    if not text:
        found = _XML_MESSAGE.findall(body[:4096])
        text = ": ".join(v.decode("utf-8", "replace") for _, v in found)
    if not text:
        text = body[:limit].decode("utf-8", "replace").strip()
    return text[:limit]


def error_code(body: bytes) -> str | None:
    """The server's machine-readable error code: JSON ``error_code`` / ``code`` (MLflow, W&B)
    or XML ``<Code>`` (S3-style stores); None when the body has none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        code = data.get("error_code") or data.get("code")
        return str(code) if code else None
    for name, value in _XML_MESSAGE.findall(body[:4096]):
        if name == b"Code":
            return bytes(value).decode("utf-8", "replace")
    return None


@dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    """A successful exchange's decoded result (told apart from a retryable error)."""

    value: T


class _BadBody(Exception):
    """A 2xx response whose body could not be used (truncated or invalid JSON)."""


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # Python servers (Flask's jsonify) write NaN and infinities as bare literals
            return json.loads(body)
        except ValueError:
            raise _BadBody(f"invalid JSON body ({len(body)} bytes): {exc}") from exc


class _AttemptBody:
    """One attempt's streamed request body, as aiohttp reads it (in a writer task of its own).

    Why: when a connection drops mid-request (a server closing a kept-alive connection, a
    reset), aiohttp cancels that writer task but may hand us the error before the task has
    finished a read it was inside; closing the stream then would fail ("aclose(): asynchronous
    generator is already running") and fail the whole file. ``aclose`` waits for the read in
    progress to end first (the cancelled writer ends it at once), and no read starts after it.
    """

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._idle = anyio.Event()
        self._idle.set()
        self._closed = False

    def __aiter__(self) -> _AttemptBody:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        self._idle = anyio.Event()
        try:
            return await self._stream.__anext__()
        finally:
            self._idle.set()

    async def aclose(self) -> None:
        self._closed = True
        await self._idle.wait()
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


# Failures of the exchange itself (not HTTP answers): resets, refused connections, timeouts,
# bodies cut short. ``InvalidURL`` is a ClientError too, but retrying it cannot help.
_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def acknowledge_now(response: aiohttp.ClientResponse) -> None:
    """Acknowledge the segment that carried the response's headers at once, not ~40 ms later.

    Why: a server that writes the headers and the body in two sends without ``TCP_NODELAY``
    (MLflow's uvicorn does) holds the body back under Nagle's algorithm until the headers are
    acknowledged, and Linux delays that acknowledgement on a keep-alive connection that looks
    interactive. Every answer then costs ~40 ms of nothing: measured on a local ``mlflow
    server``, ``runs/search`` took 60 ms per call instead of 16. ``TCP_QUICKACK`` sends the
    pending ACK now (the kernel forgets the setting later, so it is set on every response).
    """
    if _QUICKACK is None or response.connection is None or response.connection.transport is None:
        return
    sock = response.connection.transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        pass  # a socket closing under us: nothing to speed up


class HttpClient:
    """An aiohttp session with adaptive limits, retries and error mapping (see module doc).

    :param base_url: prefix for relative paths (absolute URLs are used as given)
    :param name: the adapter's name, used in error messages and events
    :param classify: ``(status, headers, body) -> Classification``
    :param max_attempts: attempts per request, the first included
    :param timeout: seconds to connect, and seconds of silence while reading
    """

    def __init__(
        self,
        *,
        base_url: str,
        name: str,
        context: AdapterContext,
        headers: Mapping[str, str] | None = None,
        auth: aiohttp.BasicAuth | None = None,
        classify: Classifier = classify_default,
        max_attempts: int = 10,
        timeout: float = 120.0,
        limit_per_host: int = 64,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.base_url = base_url
        self.name = name
        self.context = context
        self.classify = classify
        self.max_attempts = max_attempts
        self._headers = dict(headers or {})
        self._auth = auth
        self._timeout = timeout
        self._limit_per_host = limit_per_host
        self._limiters: LimiterRegistry = context.limiters if context.limiters is not None else LimiterRegistry()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._limit_per_host)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            auth=self._auth,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout, sock_read=self._timeout
            ),
        )
        # aiohttp re-sends an idempotent request once on its own after a reset (3.10+); that
        # retry would go past the endpoint's limiter, retry budget and counts: ``Retrying`` is
        # the one retry driver, so the session's own is switched off
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{self.name}: HttpClient used outside 'async with'")
        return self._session

    def url(self, path_or_url: str) -> str:
        if "://" in path_or_url:
            return path_or_url
        return self.base_url.rstrip("/") + "/" + path_or_url.lstrip("/")

    def limiter_for(self, url: str) -> EndpointLimiter:
        """The limiter a request to ``url`` goes through: the endpoint's shared one.

        The override point for finer keys: a subclass may return a limiter per path (for
        example per run, when a server's quota headers are per run rather than per host).
        """
        return self._limiters.get(endpoint_of(url))

    def declare_limit(self, limit_key: str, **changes: Any) -> None:
        """A documented limit of this server's requests under ``limit_key`` (``request_json``'s
        own-limiter keys starting with it): ``ControlConfig`` fields for their limiters, unless
        the user configured those endpoints (``LimiterRegistry.declare``)."""
        self._limiters.declare(endpoint_of(self.base_url) + limit_key, **changes)

    async def request_json(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry_transient: bool = True,
        limit_key: str | None = None,
    ) -> Any:
        """Send a request and decode its JSON answer (None for an empty body).

        ``retry_transient=False`` retries only throttles (requests the server refused before
        doing anything), for calls that are not idempotent. ``limit_key`` sends the request
        through its own limiter, the endpoint's with that suffix, for calls a server limits
        apart from the rest (W&B's run creation per project).
        """
        return await self._exchange(
            method, path_or_url, lambda _, body: _decode_json(body), params=params, json=json, data=data,
            headers=headers, retry_transient=retry_transient, limit_key=limit_key,
        )

    async def request_bytes(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry_transient: bool = True,
    ) -> bytes:
        """Send a request and return its (small) body; use ``download`` for large ones."""
        return await self._exchange(
            method, path_or_url, lambda _, body: body, params=params, json=json, data=data,
            headers=headers, retry_transient=retry_transient,
        )

    async def upload(
        self,
        method: str,
        url: str,
        body_factory: Callable[[], AsyncIterator[bytes] | bytes],
        *,
        headers: Mapping[str, str] | None = None,
        size: int | None = None,
    ) -> Mapping[str, str]:
        """Stream a request body and return the response headers.

        ``body_factory`` is called once per attempt (a stream cannot be replayed). With ``size``
        the body is sent with ``Content-Length``, otherwise chunked.
        """
        merged = dict(headers or {})
        if size is not None:
            merged["Content-Length"] = str(size)
        return await self._exchange(
            method, url, lambda response, _: response.headers, body_factory=body_factory, headers=merged
        )

    async def download(
        self, url: str, *, headers: Mapping[str, str] | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        """Stream a response body in pieces of at most ``chunk_size`` bytes.

        Retries, under the same driver as every request, until the whole body arrived: a body
        that breaks off after some pieces were yielded is resumed from the first missing byte
        (``Range: bytes=N-``, with ``If-Range`` when the first answer had an ETag); a server
        that ignores the range sends the whole body again and the bytes already yielded are
        skipped. Close the generator when stopping early (``contextlib.aclosing``) to free the
        connection at once.
        """
        full_url = self.url(url)
        limiter = self.limiter_for(full_url)
        retrying = self._retrying(limiter)
        received = 0
        etag: str | None = None
        while True:
            error: RetryableError
            asked = dict(headers or {})
            if received:
                asked["Range"] = f"bytes={received}-"
                if etag:
                    asked["If-Range"] = etag
            async with limiter.slot() as ticket:
                try:
                    async with self.session.request("GET", full_url, headers=asked) as response:
                        acknowledge_now(response)
                        verdict = self.classify(response.status, response.headers, b"")
                        self._note_rate_limit(limiter, response.headers)
                        if verdict is Classification.OK:
                            skip = self._resumed_at(full_url, response, received, etag)
                            etag = etag or response.headers.get("ETag")
                            ticket.success()
                            try:
                                async for piece in response.content.iter_chunked(chunk_size):
                                    if skip:  # a server that ignored the range: what was yielded already
                                        cut, skip = min(skip, len(piece)), skip - min(skip, len(piece))
                                        piece = piece[cut:]
                                        if not piece:
                                            continue
                                    received += len(piece)
                                    yield piece
                                return
                            except _NETWORK_ERRORS as exc:
                                ticket.failed()
                                error = TransientError(
                                    f"{self.name}: GET {redact_url(full_url)}: download broke off after {received} bytes: {exc!r}",
                                    adapter=self.name,
                                )
                                error.__cause__ = exc
                        else:
                            body = await response.read()
                            error = self._answer_error("GET", full_url, response, body, verdict, ticket, limiter)
                except _NETWORK_ERRORS as exc:
                    if isinstance(exc, aiohttp.InvalidURL):
                        raise FatalError(f"{self.name}: invalid URL {redact_url(full_url)}", adapter=self.name) from exc
                    ticket.failed()
                    error = self._network_error("GET", full_url, exc)
            await self._before_retry(retrying, error, retry_transient=True)

    def _resumed_at(self, url: str, response: aiohttp.ClientResponse, received: int, etag: str | None) -> int:
        """Bytes to skip of a resumed download's answer: none after a 206 from ``received`` on,
        all ``received`` after a 200 (the range was ignored); a changed file cannot be resumed."""
        if not received:
            return 0
        if response.status == 206:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {received}-"):
                raise FatalError(f"{self.name}: GET {redact_url(url)}: resumed at the wrong byte "
                                 f"({response.headers.get('Content-Range')!r}, wanted {received})", adapter=self.name)
            return 0
        if etag and response.headers.get("ETag") not in (None, etag):
            raise FatalError(f"{self.name}: GET {redact_url(url)}: the file changed while it was read", adapter=self.name)
        return received

    async def _exchange(
        self,
        method: str,
        path_or_url: str,
        decode: Callable[[aiohttp.ClientResponse, bytes], T],
        *,
        body_factory: Callable[[], AsyncIterator[bytes] | bytes] | None = None,
        retry_transient: bool = True,
        limit_key: str | None = None,
        **kwargs: Any,
    ) -> T:
        full_url = self.url(path_or_url)
        limiter = self.limiter_for(full_url) if limit_key is None else self._limiters.get(endpoint_of(full_url) + limit_key)
        retrying = self._retrying(limiter)
        while True:
            if body_factory is not None:
                body = body_factory()
                kwargs["data"] = body if isinstance(body, bytes) else _AttemptBody(body)
            try:
                outcome = await self._attempt(method, full_url, decode, limiter, kwargs)
            finally:
                # A body stream made for this attempt is closed, whether it was sent or not.
                data = kwargs.get("data")
                if isinstance(data, _AttemptBody):
                    with anyio.CancelScope(shield=True):  # also when cancelled: it may hold a file
                        await data.aclose()
            if not isinstance(outcome, RetryableError):
                return outcome.value
            await self._before_retry(retrying, outcome, retry_transient=retry_transient)

    async def _attempt(
        self,
        method: str,
        full_url: str,
        decode: Callable[[aiohttp.ClientResponse, bytes], T],
        limiter: EndpointLimiter,
        kwargs: dict[str, Any],
    ) -> _Done[T] | RetryableError:
        """One exchange: the result, a retryable error to weigh, or a final error raised."""
        async with limiter.slot() as ticket:
            try:
                async with self.session.request(method, full_url, **kwargs) as response:
                    acknowledge_now(response)
                    body = await response.read()
                    headers = response.headers
                self._note_rate_limit(limiter, headers)
                verdict = self.classify(response.status, headers, body)
                if verdict is Classification.OK:
                    result = decode(response, body)
                    ticket.success()
                    return _Done(result)
                return self._answer_error(method, full_url, response, body, verdict, ticket, limiter)
            except _BadBody as exc:
                ticket.failed()
                error = TransientError(f"{self.name}: {method} {redact_url(full_url)}: {exc}", adapter=self.name)
                error.__cause__ = exc
                return error
            except _NETWORK_ERRORS as exc:
                if isinstance(exc, aiohttp.InvalidURL):
                    raise FatalError(f"{self.name}: invalid URL {redact_url(full_url)}", adapter=self.name) from exc
                ticket.failed()
                return self._network_error(method, full_url, exc)

    def _answer_error(
        self,
        method: str,
        url: str,
        response: aiohttp.ClientResponse,
        body: bytes,
        verdict: Classification,
        ticket: Any,
        limiter: EndpointLimiter,
    ) -> RetryableError:
        """Map a non-OK answer: raise the final errors, return the retryable ones."""
        where = f"{self.name}: {method} {redact_url(url)} -> {response.status}"
        message = f"{where}: {server_message(body)}"
        status, code = response.status, error_code(body)
        if verdict is Classification.THROTTLE:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self._throttled(ticket, retry_after)
            self.context.events(
                "throttle", endpoint=limiter.endpoint, status=response.status, retry_after=retry_after
            )
            return ThrottledError(message, retry_after=retry_after, adapter=self.name, status=status, code=code)
        if verdict is Classification.TRANSIENT:
            ticket.failed()
            return TransientError(message, adapter=self.name, status=status, code=code)
        ticket.success()  # the endpoint is healthy; the answer is just final
        if verdict is Classification.AUTH:
            raise AuthError(message)
        if verdict is Classification.NOT_FOUND:
            raise NotFoundError(message, adapter=self.name, status=status, code=code)
        raise FatalError(message, adapter=self.name, status=status, code=code)

    def _throttled(self, ticket: Ticket, retry_after: float | None) -> None:
        """Tell the endpoint's controller it was throttled (a subclass with its own controller
        for throttles overrides this, so that one 429 is answered once)."""
        ticket.throttled(retry_after)

    def _network_error(self, method: str, url: str, exc: BaseException) -> TransientError:
        kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else repr(exc)
        error = TransientError(f"{self.name}: {method} {redact_url(url)}: {kind}", adapter=self.name)
        error.__cause__ = exc
        return error

    def _note_rate_limit(self, limiter: EndpointLimiter, headers: Mapping[str, str]) -> None:
        quota = parse_rate_limit(headers)
        if quota is not None:
            limiter.note_quota(*quota)

    def _retrying(self, limiter: EndpointLimiter) -> Retrying:
        return Retrying(limiter, max_attempts=self.max_attempts, events=self.context.events)

    async def _before_retry(self, retrying: Retrying, error: RetryableError, *, retry_transient: bool) -> None:
        """Give up (raise ``error``) or wait the backoff delay (the shared retry driver)."""
        throttled = isinstance(error, ThrottledError)
        if not throttled and not retry_transient:
            raise error
        await retrying.wait_or_raise(error, throttled=throttled)
