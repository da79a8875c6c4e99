"""One streamed PutObject for sources that can be read twice (``put_stream`` given an opener).

The store's ``multipart_threshold`` is one part and ``single_put_threshold`` two: an opener's
bytes up to two parts go in one PUT (read once for the MD5, once as the body, again on a retry),
larger ones and one-shot streams multipart. Every object is read back byte for byte; the front
counts the operations it served.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncGenerator

import pytest

from adapters.s3 import S3Config, S3Store
from core.errors import FatalError, NotFoundError
from core.protocols import AdapterContext
from ratelimit import LimiterRegistry
from tests.servers.s3front import S3Stack

from .conftest import PART, Generated, sha256_of


class Opener:
    """A re-readable source: ``Generated`` bytes, a fresh stream per call, calls counted;
    ``later`` (if given) is what every call after the first gives instead."""

    def __init__(self, data: Generated, later: Generated | None = None) -> None:
        self.data, self.later = data, later
        self.opens = 0

    async def __call__(self) -> AsyncGenerator[bytes, None]:
        self.opens += 1
        data = self.data if self.opens == 1 or self.later is None else self.later
        async for piece in data.stream():
            yield piece


# (size, opens, operations): a source up to multipart_threshold is read once and sent from
# memory; above it, up to single_put_threshold, read twice and streamed; above that, multipart.
CASES = [
    (0, 1, {"PutObject": 1}),
    (1, 1, {"PutObject": 1}),
    (PART, 1, {"PutObject": 1}),
    (PART + 1, 2, {"PutObject": 1}),
    (2 * PART - 1, 2, {"PutObject": 1}),
    (2 * PART, 2, {"PutObject": 1}),
    (2 * PART + 1, 1, {"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1}),
]


@pytest.mark.parametrize(("size", "opens", "operations"), CASES)
async def test_opener_goes_in_one_put_up_to_the_threshold(
    store: S3Store, bucket: str, front: S3Stack, size: int, opens: int, operations: dict[str, int]
) -> None:
    data = Generated(size, seed=size, piece=777_777)
    source = Opener(data)
    url = f"s3://{bucket}/one/obj"
    result = await store.put_stream(url, source, size=size)
    assert front.stats()[f"{bucket}/one"]["operations"] == operations
    assert source.opens == opens
    assert (result.size, result.parts) == (size, 3 if size > 2 * PART else 0)
    assert await sha256_of(store.get_stream(url)) == (data.sha256, size)


async def test_one_shot_stream_still_goes_multipart(store: S3Store, bucket: str, front: S3Stack) -> None:
    data = Generated(PART + 1, seed=3)
    result = await store.put_stream(f"s3://{bucket}/shot/obj", data.stream(), size=data.size)
    assert result.parts == 2
    assert front.stats()[f"{bucket}/shot"]["operations"] == {"CreateMultipartUpload": 1, "UploadPart": 2, "CompleteMultipartUpload": 1}
    assert await sha256_of(store.get_stream(f"s3://{bucket}/shot/obj")) == (data.sha256, data.size)


@pytest.mark.parametrize("failure", ["slowdown", "reset"])
async def test_failed_put_is_retried_by_reopening(store: S3Store, bucket: str, front: S3Stack, failure: str) -> None:
    if failure == "slowdown":
        front.configure(slowdown_puts=1, retry_after=0.01)
    else:
        front.configure(cut_puts=1, cut_after=PART // 2 + 3)
    data = Generated(PART + 12345, seed=11)
    source = Opener(data)
    url = f"s3://{bucket}/retry/obj"
    result = await store.put_stream(url, source, size=data.size)
    served = front.stats()[f"{bucket}/retry"]
    assert source.opens == 3  # the MD5 pass, the failed PUT, the retry
    assert (served["throttled"], served["cut"]) == ((1, 0) if failure == "slowdown" else (0, 1))
    assert "CreateMultipartUpload" not in served["operations"]
    assert (result.size, result.parts) == (data.size, 0)
    assert await sha256_of(store.get_stream(url)) == (data.sha256, data.size)


SIZE = PART + 103


@pytest.mark.parametrize(
    ("later", "message"),
    [
        (Generated(SIZE, seed=13), "changed between its two reads"),  # same size, other bytes
        (Generated(SIZE - 3, seed=12), f"gave {SIZE - 3} bytes, expected {SIZE}"),  # shorter
        (Generated(SIZE + 1, seed=12), f"gave more than {SIZE} bytes"),  # longer
    ],
)
async def test_source_that_changes_between_reads_raises_and_leaves_no_object(
    store: S3Store, bucket: str, later: Generated, message: str
) -> None:
    source = Opener(Generated(SIZE, seed=12), later)
    url = f"s3://{bucket}/changed/obj"
    with pytest.raises(FatalError, match=message):
        await store.put_stream(url, source, size=SIZE)
    assert source.opens == 2  # an error of the source, not retried
    with pytest.raises(NotFoundError):
        await store.head(url)
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


async def test_sse_c_opener_goes_in_one_put_without_the_etag_check(
    front: S3Stack, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SSE-C: one PUT with Content-MD5 and the key (its ETag, no MD5 on S3, is not compared)
    monkeypatch.setenv("RF_SSE_KEY", base64.b64encode(random.Random(5).randbytes(32)).decode())
    front.configure(sse_c=True)
    config = S3Config(
        endpoint_url=front.front_url, part_size=PART, multipart_threshold=PART,
        single_put_threshold=2 * PART, sse_customer_key_env="RF_SSE_KEY",
    )
    data = Generated(PART + 5, seed=21)
    url = f"s3://{bucket}/enc/obj"
    async with S3Store(config, AdapterContext(limiters=LimiterRegistry())) as s3:
        result = await s3.put_stream(url, Opener(data), size=data.size)
        assert result.parts == 0
        assert await sha256_of(s3.get_stream(url)) == (data.sha256, data.size)
    served = front.stats()[f"{bucket}/enc"]
    assert served["sse_c_refused"] == 0
    assert served["sse_c"]["PutObject"] == 1
    assert "CreateMultipartUpload" not in served["operations"]
