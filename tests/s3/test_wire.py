"""What S3Store puts on the wire for bodies: checked against a recording loopback server.

The upload path leans on botocore details (no BytesIO wrapping, no payload SHA-256, a sliced
body with a length); these tests fail loudly if a botocore/aiohttp upgrade changes them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from adapters.s3 import S3Config, S3Store
from adapters.s3._upload import SlicedBody, body_of
from core.errors import TransientError
from tests.s3.conftest import serving


def test_sliced_body_reads_and_iterates_the_same_bytes() -> None:
    data = bytes(range(256)) * 4099  # not a multiple of the slice
    body = SlicedBody(data)
    assert len(body) == len(data)
    assert body.read(10) + body.read() == data
    assert body.read() == b""


async def test_sliced_body_slices_are_views_in_order() -> None:
    data = b"ab" * (SlicedBody.SLICE + 3)
    slices = [piece async for piece in SlicedBody(data)]
    assert all(isinstance(piece, memoryview) for piece in slices)
    assert [len(piece) for piece in slices] == [SlicedBody.SLICE, SlicedBody.SLICE, 6]
    assert b"".join(slices) == data


def test_small_bodies_go_as_bytes() -> None:
    assert body_of(b"x" * SlicedBody.SLICE) == b"x" * SlicedBody.SLICE
    assert isinstance(body_of(b"x" * (SlicedBody.SLICE + 1)), SlicedBody)


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024 + 5])
async def test_put_sends_length_md5_and_no_payload_hash(recorder: tuple[str, list[dict[str, Any]]], size: int) -> None:
    url, seen = recorder
    data = bytes(size % 251 for _ in range(size)) if size < 10_000 else b"\x07" * size

    async def one() -> AsyncIterator[bytes]:
        yield data

    async with S3Store(S3Config(endpoint_url=url, multipart_threshold=8 * 1024 * 1024)) as s3:
        result = await s3.put_stream("s3://bucket/k/obj", one(), size=size)
    assert result.size == size
    [request] = seen
    headers = request["headers"]
    assert isinstance(headers, CIMultiDict)
    assert request["body"] == data
    assert headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in headers
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert headers["Content-MD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert str(headers["User-Agent"]).startswith("runferry aiobotocore/")  # fixed, built once


@pytest.mark.parametrize("piece", [1, 7, 100, 250, 256, 1000])
async def test_rechunk_cuts_exact_parts_from_any_pieces(piece: int) -> None:
    from adapters.s3._upload import _rechunk

    data = bytes(i % 251 for i in range(1000 + 3))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), piece):
            yield data[start : start + piece]

    parts = [bytes(p) async for p in _rechunk(pieces(), 256)]
    assert b"".join(parts) == data
    assert [len(p) for p in parts] == [256, 256, 256, 235]


async def test_rechunk_passes_whole_parts_through_and_never_yields_empty() -> None:
    from adapters.s3._upload import _rechunk

    part = b"x" * 256

    async def pieces() -> AsyncIterator[bytes]:
        yield part
        yield b""
        yield part

    assert [p async for p in _rechunk(pieces(), 256)] == [part, part]
    out = [p async for p in _rechunk(pieces(), 256)]
    assert out[0] is part  # no copy


async def test_rechunk_of_nothing_is_nothing() -> None:
    from adapters.s3._upload import _rechunk

    async def pieces() -> AsyncIterator[bytes]:
        return
        yield b""

    assert [p async for p in _rechunk(pieces(), 256)] == []


async def test_rechunk_small_object_is_its_piece_and_reused_buffers_are_copied() -> None:
    """A piece smaller than a part is passed on as it is (no part-sized buffer); a mutable
    piece the producer reuses is copied before the next one is asked for."""
    from adapters.s3._upload import _rechunk

    small = b"a small object"

    async def one() -> AsyncIterator[bytes]:
        yield small

    out = [p async for p in _rechunk(one(), 256)]
    assert out == [small] and out[0] is small

    buffer = bytearray(b"x" * 100)

    async def reused() -> AsyncIterator[bytes]:
        for fill in (b"x", b"y", b"z"):
            buffer[:] = fill * 100
            yield buffer  # type: ignore[misc]

    assert [bytes(p) for p in [p async for p in _rechunk(reused(), 256)]] == [b"x" * 100 + b"y" * 100 + b"z" * 56, b"z" * 44]


@pytest.fixture
async def object_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, dict[str, tuple[bytes, str]]]]:
    """Serves GETs of ``objects[path] = (body, etag)``: the ETag may lie about the body."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    objects: dict[str, tuple[bytes, str]] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        body, etag = objects[request.path]
        response = web.StreamResponse(headers={"ETag": f'"{etag}"', "Content-Length": str(len(body))})
        await response.prepare(request)
        for start in range(0, len(body), 100_000):  # in pieces, as a server streams
            await response.write(body[start : start + 100_000])
        return response

    async with serving(handle) as url:
        yield url, objects


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024 + 7, 20 * 1024 * 1024 + 1])
async def test_streamed_get_checks_every_byte_against_the_etag(
    object_server: tuple[str, dict[str, tuple[bytes, str]]], size: int
) -> None:
    url, objects = object_server
    body = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
    damaged = body[:-1] + bytes([body[-1] ^ 1])
    objects["/bucket/k/good"] = (body, hashlib.md5(body).hexdigest())
    objects["/bucket/k/bad"] = (damaged, hashlib.md5(body).hexdigest())  # one bit off at the very end
    async with S3Store(S3Config(endpoint_url=url, max_attempts=1)) as s3:
        assert b"".join([piece async for piece in s3.get_stream("s3://bucket/k/good")]) == body
        with pytest.raises(TransientError, match="downloaded MD5"):
            async for _ in s3.get_stream("s3://bucket/k/bad"):
                pass
