"""HttpClient against a real loopback server: retries, limits and error mapping, exact outcomes."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.protocols import AdapterContext
from adapters.http import (
    Classification,
    HttpClient,
    classify_default,
    parse_rate_limit,
    parse_retry_after,
    redact_url,
    server_message,
)
from core.errors import (
    AuthError,
    FatalError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from ratelimit import ControlConfig, FakeClock, LimiterRegistry
from tests.servers.scripted_http import (
    HANG,
    RESET,
    ScriptedServer,
    pattern,
    reply,
    truncated,
)

from .conftest import Recorder


def unique(prefix: str = "/p") -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


def client(server: ScriptedServer, context: AdapterContext, **kwargs: object) -> HttpClient:
    return HttpClient(base_url=server.url, name="test", context=context, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Classification.OK), (204, Classification.OK), (401, Classification.AUTH),
        (403, Classification.AUTH), (404, Classification.NOT_FOUND), (429, Classification.THROTTLE),
        (503, Classification.THROTTLE), (500, Classification.TRANSIENT), (502, Classification.TRANSIENT),
        (408, Classification.TRANSIENT), (400, Classification.FATAL), (409, Classification.FATAL),
    ],
)
def test_classify_default(status: int, expected: Classification) -> None:
    assert classify_default(status, {}, b"") is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0), ("soon", None), (None, None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, wall_now=1445412480.0) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"RateLimit-Remaining": "10", "RateLimit-Reset": "5"}, (10.0, 5.0)),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000030"}, (0.0, 30.0)),
        ({"RateLimit": "limit=100, remaining=50, reset=5"}, (50.0, 5.0)),
        ({"RateLimit": '"default";r=7;t=2'}, (7.0, 2.0)),
        ({"RateLimit-Remaining": "x", "RateLimit-Reset": "5"}, None),
        ({}, None),
    ],
)
def test_parse_rate_limit(headers: dict[str, str], expected: tuple[float, float] | None) -> None:
    assert parse_rate_limit(headers, wall_now=1700000000.0) == expected


def test_redact_url_drops_query_and_user_info() -> None:
    assert redact_url("https://user:pw@s3.local:9000/b/k?X-Amz-Signature=abc#f") == "https://s3.local:9000/b/k"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run x not found"}', "RESOURCE_DOES_NOT_EXIST: Run x not found"),
        (b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>", "SlowDown: Please reduce your request rate."),
        (b"plain text", "plain text"),
    ],
)
def test_server_message(body: bytes, expected: str) -> None:
    assert server_message(body) == expected


async def test_throttles_resets_and_truncation_are_retried_until_success(
    scripted_server: ScriptedServer, context: AdapterContext, events: Recorder, clock: FakeClock
) -> None:
    path = unique()
    scripted_server.script(
        path,
        reply(429, {"message": "slow down"}, {"Retry-After": "3"}),
        reply(503, b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"),
        RESET,
        truncated(b'{"value": 12', 40),
        reply(200, b"{not json"),
        reply(200, {"value": [1.5, "x"]}),
    )
    async with client(scripted_server, context) as http:
        result = await http.request_json("POST", path, json={"a": 1})
    assert result == {"value": [1.5, "x"]}
    assert scripted_server.count(path) == 6
    endpoint = scripted_server.url
    assert [e for e in events.events if e[0] == "throttle"] == [
        ("throttle", {"endpoint": endpoint, "status": 429, "retry_after": 3.0}),
        ("throttle", {"endpoint": endpoint, "status": 503, "retry_after": None}),
    ]
    assert events.names().count("retry") == 5
    stats = http.limiter_for(endpoint).statistics()
    assert (stats.successes, stats.throttles, stats.failures, stats.retries) == (1, 2, 3, 5)
    assert clock.now() >= 3.0  # the Retry-After pause was honoured (in virtual time)
    assert stats.rate_limit is not None  # pacing switched on by the throttle


async def test_attempts_exhausted_raises_last_throttle_with_retry_after(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    path = unique()
    scripted_server.script(path, *[reply(429, {"message": "quota"}, {"Retry-After": "1"})] * 3)
    async with client(scripted_server, context, max_attempts=3) as http:
        with pytest.raises(ThrottledError) as info:
            await http.request_json("GET", path)
    assert info.value.retry_after == 1.0
    assert "429" in str(info.value) and "quota" in str(info.value)
    assert scripted_server.count(path) == 3


async def test_server_errors_exhausted_raise_transient(scripted_server: ScriptedServer, context: AdapterContext) -> None:
    path = unique()
    scripted_server.script(path, *[reply(500, {"message": "boom"})] * 2)
    async with client(scripted_server, context, max_attempts=2) as http:
        with pytest.raises(TransientError, match="500: boom"):
            await http.request_bytes("GET", path)


async def test_non_idempotent_call_is_not_retried_after_a_server_error(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    path = unique()
    scripted_server.script(path, reply(500, {"message": "maybe written"}), reply(200, {"second": True}))
    async with client(scripted_server, context) as http:
        with pytest.raises(TransientError):
            await http.request_json("POST", path, json={}, retry_transient=False)
        # a throttle is still retried: the server refused before doing anything
        scripted_server.script(path, reply(429), reply(200, {"third": True}))
        assert await http.request_json("POST", path, json={}, retry_transient=False) == {"second": True}


async def test_auth_error_carries_status_and_message_but_never_the_secret(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    path = unique()
    scripted_server.script(path, reply(401, {"error_code": "UNAUTHENTICATED", "message": "invalid token"}))
    async with client(scripted_server, context, headers={"Authorization": "Bearer s3cr3t-token"}) as http:
        with pytest.raises(AuthError) as info:
            await http.request_json("GET", path + "?api_key=s3cr3t-token")
    text = str(info.value)
    assert "401" in text and "UNAUTHENTICATED: invalid token" in text
    assert "s3cr3t" not in text
    assert scripted_server.count(path) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(404, NotFoundError), (400, FatalError), (403, AuthError), (409, FatalError)]
)
async def test_final_answers_are_not_retried(
    scripted_server: ScriptedServer, context: AdapterContext, status: int, error: type[Exception]
) -> None:
    path = unique()
    scripted_server.script(path, reply(status, {"message": f"status {status} said no"}))
    async with client(scripted_server, context) as http:
        with pytest.raises(error, match=f"status {status} said no"):
            await http.request_json("GET", path)
    assert scripted_server.count(path) == 1


async def test_adapter_classifier_can_turn_an_error_into_success(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    def classify(status: int, headers: object, body: bytes) -> Classification:
        if status == 400 and b"RESOURCE_ALREADY_EXISTS" in body:
            return Classification.OK
        return classify_default(status, headers, body)  # type: ignore[arg-type]

    path = unique()
    scripted_server.script(path, reply(400, {"error_code": "RESOURCE_ALREADY_EXISTS"}))
    async with client(scripted_server, context, classify=classify) as http:
        assert await http.request_json("POST", path, json={}) == {"error_code": "RESOURCE_ALREADY_EXISTS"}


async def test_retry_budget_stops_a_failing_endpoint(scripted_server: ScriptedServer, clock: FakeClock) -> None:
    registry = LimiterRegistry(default=ControlConfig(retry_budget=10.0, retry_cost=5.0), clock=clock)
    context = AdapterContext(limiters=registry)
    path = unique()
    scripted_server.script(path, *[reply(502)] * 10)
    async with client(scripted_server, context) as http:
        with pytest.raises(TransientError):
            await http.request_json("GET", path)
    assert scripted_server.count(path) == 3  # first try + the two retries the budget paid for
    assert registry.get(scripted_server.url).statistics().retries_refused == 1


async def test_rate_limit_headers_pace_the_endpoint(scripted_server: ScriptedServer, context: AdapterContext, clock: FakeClock) -> None:
    path = unique()
    scripted_server.script(path, reply(200, {}, {"RateLimit-Remaining": "0", "RateLimit-Reset": "30"}))
    async with client(scripted_server, context) as http:
        await http.request_json("GET", path)
        assert http.limiter_for(scripted_server.url).statistics().paused_for == 30.0
        await http.request_json("GET", path)
    assert clock.now() >= 30.0


async def test_upload_streams_body_with_length_and_retries_with_a_fresh_stream(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    data = pattern(3_000_001)
    calls = 0

    def body() -> AsyncIterator[bytes]:
        nonlocal calls
        calls += 1

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1 << 20):
                yield data[start : start + (1 << 20)]

        return pieces()

    scripted_server.script("/upload", reply(503))
    async with client(scripted_server, context) as http:
        headers = await http.upload("PUT", scripted_server.url + "/upload", body, size=len(data))
        assert headers["X-Received"] == str(len(data))
        sent = await http.upload("PUT", "/upload", lambda: b"abc")
        assert sent["X-Received"] == "3"
    assert calls == 2


async def test_upload_without_size_is_chunked(scripted_server: ScriptedServer, context: AdapterContext) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"a" * 10
        yield b"b" * 5

    async with client(scripted_server, context) as http:
        headers = await http.upload("POST", "/upload", pieces)
    assert headers["X-Received"] == "15"


async def test_download_streams_in_pieces_and_retries_before_the_first_byte(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    size = 5 * (1 << 20) + 3
    path = f"/bytes/{size}"
    scripted_server.script(path, reply(503), reply(500))
    digest = hashlib.sha256()
    pieces = 0
    async with client(scripted_server, context) as http:
        async for piece in http.download(scripted_server.url + path, chunk_size=1 << 20):
            assert len(piece) <= 1 << 20
            digest.update(piece)
            pieces += 1
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()
    assert pieces >= 6


async def test_download_broken_off_after_first_bytes_resumes_exactly(
    scripted_server: ScriptedServer, context: AdapterContext, events: Recorder
) -> None:
    size = 4 << 20
    path = f"/bytes/{size}"
    scripted_server.script(path, truncated(b"", 1 << 20))
    digest = hashlib.sha256()
    async with client(scripted_server, context) as http:
        async for piece in http.download(scripted_server.url + path):
            digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()  # no byte twice, none missing
    assert scripted_server.count(path) == 2
    assert events.names().count("retry") == 1  # counted like every retry


async def test_download_missing_object_raises_not_found(scripted_server: ScriptedServer, context: AdapterContext) -> None:
    path = unique()
    scripted_server.script(path, reply(404, b"<Error><Code>NoSuchKey</Code></Error>"))
    async with client(scripted_server, context) as http:
        with pytest.raises(NotFoundError, match="NoSuchKey"):
            async for _ in http.download(path):
                pass


async def test_read_timeout_is_transient_and_retried(scripted_server: ScriptedServer, context: AdapterContext) -> None:
    path = unique()
    scripted_server.script(path, HANG, reply(200, {"late": True}))
    async with client(scripted_server, context, timeout=2.0) as http:  # HANG always times out
        assert await http.request_json("POST", path, json={}) == {"late": True}
    stats = http.limiter_for(scripted_server.url).statistics()
    assert (stats.failures, stats.successes) == (1, 1)


async def test_connection_refused_is_transient(context: AdapterContext) -> None:
    async with HttpClient(base_url="http://127.0.0.1:1", name="t", context=context, max_attempts=2) as http:
        with pytest.raises(TransientError, match="127.0.0.1:1/x"):
            await http.request_json("GET", "/x")


async def test_default_context_gets_a_private_registry(scripted_server: ScriptedServer) -> None:
    async with client(scripted_server, AdapterContext()) as http:
        assert await http.request_json("GET", unique()) == {"ok": True}
        assert http.limiter_for(scripted_server.url).statistics().successes == 1


async def test_used_outside_context_manager_fails_clearly(context: AdapterContext) -> None:
    http = HttpClient(base_url="http://127.0.0.1:1", name="t", context=context)
    with pytest.raises(RuntimeError, match="outside 'async with'"):
        await http.request_json("GET", "/x")


async def test_upload_closes_each_attempts_body_stream(scripted_server: ScriptedServer, context: AdapterContext) -> None:
    closed: list[int] = []

    def body() -> AsyncIterator[bytes]:
        number = len(closed)

        async def pieces() -> AsyncIterator[bytes]:
            try:
                yield b"abc"
                yield b"def"
            finally:
                closed.append(number)

        return pieces()

    scripted_server.script("/upload", reply(429))
    async with client(scripted_server, context) as http:
        headers = await http.upload("PUT", "/upload", body, size=6)
    assert headers["X-Received"] == "6"
    assert closed == [0, 1]


async def test_bare_nan_and_infinity_literals_are_read_exactly(
    scripted_server: ScriptedServer, context: AdapterContext
) -> None:
    """Flask's jsonify writes NaN/Infinity bare (not JSON): read them, keep -0.0, and still
    treat a body cut short as a retryable failure."""
    path = unique()
    body = b'{"v": [NaN, Infinity, -Infinity, -0.0, 0.1]}'
    scripted_server.script(path, reply(200, body[:20]), reply(200, body))
    async with client(scripted_server, context) as http:
        result = await http.request_json("GET", path)
    values = result["v"]
    assert math.isnan(values[0]) and values[1:3] == [math.inf, -math.inf]
    assert math.copysign(1.0, values[3]) == -1.0 and values[4] == 0.1
    assert scripted_server.count(path) == 2


async def test_every_answer_is_acknowledged_at_once(
    scripted_server: ScriptedServer, context: AdapterContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of reading an answer ask the kernel to acknowledge its headers now, on the
    connection's TCP socket (``python -m bench mlflow_latency`` shows the ~40 ms it saves)."""
    import socket

    import adapters.http as http

    quickack = getattr(socket, "TCP_QUICKACK", None)
    seen: list[int | None] = []
    real = http.acknowledge_now

    def spy(response: Any) -> None:
        real(response)
        if response.connection is None:  # the whole answer had arrived: nothing to acknowledge
            seen.append(None)
            return
        sock = response.connection.transport.get_extra_info("socket")
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, quickack) if quickack is not None else 1)

    monkeypatch.setattr(http, "acknowledge_now", spy)
    path = unique()
    body = pattern(4_000_000)  # still arriving when the headers are read
    scripted_server.script(path, reply(200, b'{"a": 1}'))
    scripted_server.script(path + "/bytes", reply(200, body))
    async with client(scripted_server, context) as c:
        assert await c.request_json("GET", path) == {"a": 1}
        streamed = b"".join([piece async for piece in c.download(path + "/bytes")])
    assert streamed == body
    assert len(seen) == 2 and seen[1] == 1  # quick-ACK mode on while the body streams in
