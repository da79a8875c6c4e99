"""S3Store against moto's S3 server behind the throttling front: every byte checked."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import anyio
import pytest

from core.protocols import AdapterContext
from adapters.s3 import (
    MAX_PART,
    MAX_PARTS,
    MIB,
    MIN_PART,
    S3Config,
    S3Store,
    S3Url,
    copy_between,
    multipart_etag,
    plan_part_size,
    plan_ranges,
)
from core.errors import (
    ConfigError,
    FatalError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from ratelimit import LimiterRegistry
from tests.servers.s3front import S3Stack, prefix_of

from .conftest import PART, Events, Generated, sha256_of

SIZES = [0, 1, PART - 1, PART, PART + 1, 7 * PART + 12345]


@pytest.mark.parametrize(
    ("size", "preferred", "expected"),
    [
        (None, 8 * MIB, 8 * MIB),
        (0, 8 * MIB, 8 * MIB),
        (1, 1, MIN_PART),
        (8 * MIB * MAX_PARTS, 8 * MIB, 8 * MIB),
        (8 * MIB * MAX_PARTS + 1, 8 * MIB, 9 * MIB),
        (1024**4, 8 * MIB, 105 * MIB),  # 1 TiB: ceil(1 TiB / 10,000) rounded up to a MiB
    ],
)
def test_plan_part_size(size: int | None, preferred: int, expected: int) -> None:
    assert plan_part_size(size, preferred) == expected


def test_plan_part_size_rejects_impossible_objects() -> None:
    with pytest.raises(FatalError):
        plan_part_size(6 * 1024**5, 8 * MIB)


@pytest.mark.parametrize(
    ("size", "part", "expected"),
    [(0, 5, []), (1, 5, [(0, 0)]), (5, 5, [(0, 4)]), (11, 5, [(0, 4), (5, 9), (10, 10)])],
)
def test_plan_ranges(size: int, part: int, expected: list[tuple[int, int]]) -> None:
    assert plan_ranges(size, part) == expected


def test_multipart_etag_matches_s3_rule() -> None:
    import hashlib

    parts = [hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()]
    assert multipart_etag(parts) == hashlib.md5(parts[0] + parts[1]).hexdigest() + "-2"


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [("s3://b/k/x.bin", "b", "k/x.bin"), ("s3://b", "b", ""), ("s3://b/", "b", ""), ("S3://b/k", "b", "k"),
     # S3 keys are not URL paths: '?', '#', '%' and '//' are part of the key
     ("s3://b/runs/run#1?v=2%20.png", "b", "runs/run#1?v=2%20.png"), ("s3://b//x//y", "b", "/x//y")],
)
def test_s3_url(url: str, bucket: str, key: str) -> None:
    assert S3Url.parse(url) == S3Url(bucket, key)


@pytest.mark.parametrize("url", ["http://b/k", "s3:///k", "s3://", "s3:/b/k", "b/k"])
def test_s3_url_rejects_other_schemes_and_no_bucket(url: str) -> None:
    with pytest.raises(ValueError):
        S3Url.parse(url)


@pytest.mark.parametrize(
    ("path", "depth", "expected"),
    [("/b", 1, "b"), ("/b/k", 1, "b"), ("/b/runs/a/f", 1, "b/runs"), ("/b/runs/a/f", 2, "b/runs/a"), ("/b/runs/", 1, "b")],
)
def test_front_prefix_of(path: str, depth: int, expected: str) -> None:
    assert prefix_of(path, depth) == expected


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        S3Config(part_size=MIB)
    with pytest.raises(ConfigError):
        S3Config(addressing_style="sideways")
    with pytest.raises(ConfigError):
        S3Config(ranged_get_threshold=-1)
    with pytest.raises(ConfigError):
        S3Config(single_put_threshold=MAX_PART + 1)  # above S3's PutObject limit


async def test_missing_credentials_env_is_a_config_error() -> None:
    config = S3Config(endpoint_url="http://127.0.0.1:1", access_key_id_env="RUNFERRY_TEST_UNSET_VAR")
    with pytest.raises(ConfigError, match="RUNFERRY_TEST_UNSET_VAR"):
        async with S3Store(config):
            pass


async def roundtrip(store: S3Store, url: str, data: Generated) -> None:
    result = await store.put_stream(url, data.stream(), size=data.size)
    assert result.size == data.size
    assert (await store.head(url)).size == data.size
    # streamed up to the store's ranged_get_threshold, ranged GETs above it
    assert await sha256_of(store.get_stream(url)) == (data.sha256, data.size)
    # one streamed GET whatever the size: same bytes, same verification
    assert await sha256_of(store.get_stream(url, parallelism=1)) == (data.sha256, data.size)


@pytest.mark.parametrize("size", SIZES)
async def test_upload_and_download_through_slowdown(store: S3Store, bucket: str, front: S3Stack, size: int) -> None:
    front.configure(write_rate=20.0, read_rate=40.0, burst_seconds=0.1)
    data = Generated(size, seed=size)
    await roundtrip(store, f"s3://{bucket}/runs/obj-{size}", data)
    copy = await store.copy(f"s3://{bucket}/runs/obj-{size}", f"s3://{bucket}/copies/obj-{size}")
    assert copy.size == size
    assert copy.parts == (0 if size <= PART else -(-size // PART))
    assert await sha256_of(store.get_stream(f"s3://{bucket}/copies/obj-{size}")) == (data.sha256, size)
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


async def test_slowdown_is_retried_and_slows_the_prefix(store: S3Store, bucket: str, front: S3Stack, registry: LimiterRegistry, events: Events) -> None:
    front.configure(write_rate=10.0, burst_seconds=0.1)
    data = Generated(6 * PART + 1, seed=9)
    url = f"s3://{bucket}/hot/obj"
    await roundtrip(store, url, data)
    served = front.stats()[f"{bucket}/hot"]
    assert served["throttled"] > 0  # six parallel parts against 10/s with a burst of 1
    limiter = store.limiter_for(S3Url.parse(url))
    stats = limiter.statistics()
    assert stats.throttles == served["throttled"]
    assert stats.rate_limit is not None  # the prefix is paced now
    assert stats.retries_refused == 0
    assert "throttle" in events.names and "retry" in events.names
    # the other prefix of the bucket is not slowed
    assert store.limiter_for(S3Url(bucket, "cold/x")).statistics().rate_limit is None
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


async def test_dropped_connections_are_retried(store: S3Store, bucket: str, front: S3Stack) -> None:
    front.configure(drop_rate=0.2, seed=5)
    data = Generated(4 * PART + 7, seed=4)
    await roundtrip(store, f"s3://{bucket}/flaky/obj", data)
    assert front.stats()[f"{bucket}/flaky"]["dropped"] > 0
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


@pytest.mark.parametrize(("size", "requests"), [(0, 1), (PART, 1), (2 * PART, 2), (2 * PART + 1, 5)])
async def test_ranged_get_threshold_picks_one_get_or_ranges(store: S3Store, bucket: str, front: S3Stack, size: int, requests: int) -> None:
    # One GET, whose headers give size and ETag (no HEAD), plus a HEAD of part 1 for multipart
    # objects; above the threshold that GET is closed unread and one GET per part follows (3 here)
    data = Generated(size, seed=size)
    await store.put_stream(f"s3://{bucket}/plan/obj-{size}", data.stream(), size=size)
    front.reset_stats()
    assert await sha256_of(store.get_stream(f"s3://{bucket}/plan/obj-{size}")) == (data.sha256, size)
    assert front.stats()[f"{bucket}/plan"]["accepted"] == requests


@pytest.mark.parametrize("size", [3 * PART + 5, PART - 9])  # multipart (part MD5s) and single (whole MD5)
async def test_streamed_get_resumes_after_a_cut(store: S3Store, bucket: str, front: S3Stack, events: Events, size: int) -> None:
    data = Generated(size, seed=31)
    url = f"s3://{bucket}/cut/obj-{size}"
    await store.put_stream(url, data.stream(), size=size)
    front.configure(cut_gets=2, cut_after=PART // 3 + 7)  # two breaks, part way into a part
    assert await sha256_of(store.get_stream(url, parallelism=1)) == (data.sha256, size)
    assert front.stats()[f"{bucket}/cut"]["cut"] == 2
    assert sum(1 for n, f in zip(events.names, events.fields, strict=True) if n == "retry" and "broke off" in str(f["error"])) == 2


async def test_streamed_get_hands_on_socket_chunks_never_across_a_part(store: S3Store, bucket: str) -> None:
    # chunks as aiohttp received them (no 8 MiB joins), each part's MD5 closed on its boundary
    data = Generated(3 * PART + 5, seed=33, piece=333_333)
    url = f"s3://{bucket}/chunks/obj"
    assert (await store.put_stream(url, data.stream(), size=data.size)).parts == 4
    received = hashlib.sha256()
    ends: list[int] = []
    async for piece in store.get_stream(url, parallelism=1):  # streamed (the store's threshold is 2 parts)
        assert 0 < len(piece) <= 256 * 1024
        received.update(piece)
        ends.append((ends[-1] if ends else 0) + len(piece))
    assert (received.hexdigest(), ends[-1]) == (data.sha256, data.size)
    assert {PART, 2 * PART, 3 * PART} <= set(ends)


async def test_streamed_get_gives_up_after_max_attempts(front: S3Stack, registry: LimiterRegistry, bucket: str, store: S3Store) -> None:
    data = Generated(PART + 1, seed=32)
    url = f"s3://{bucket}/cuts/obj"
    await store.put_stream(url, data.stream(), size=data.size)
    front.configure(cut_gets=5, cut_after=1000)
    config = S3Config(endpoint_url=front.front_url, max_attempts=3)
    async with S3Store(config, AdapterContext(limiters=registry)) as s3:
        # (how many bytes arrive before each cut depends on timing: aiohttp drops what it buffered)
        with pytest.raises(TransientError, match="broke off after"):
            await sha256_of(s3.get_stream(url))
    assert front.stats()[f"{bucket}/cuts"]["cut"] == 3


async def test_unknown_size_stream(store: S3Store, bucket: str) -> None:
    data = Generated(3 * PART + 5, seed=8, piece=333_333)
    result = await store.put_stream(f"s3://{bucket}/u/obj", data.stream())
    assert (result.size, result.parts) == (data.size, 4)
    assert await sha256_of(store.get_stream(f"s3://{bucket}/u/obj")) == (data.sha256, data.size)


async def test_failed_stream_aborts_the_multipart_upload(store: S3Store, bucket: str) -> None:
    class SourceBroke(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        async for piece in Generated(3 * PART, seed=1).stream():
            yield piece
        raise SourceBroke("source went away")

    with pytest.raises(SourceBroke):
        await store.put_stream(f"s3://{bucket}/broken/obj", broken(), size=4 * PART)
    assert await store.list_open_uploads(f"s3://{bucket}/") == []
    with pytest.raises(NotFoundError):
        await store.head(f"s3://{bucket}/broken/obj")


async def test_short_stream_is_fatal_and_aborted(store: S3Store, bucket: str) -> None:
    data = Generated(2 * PART + 1, seed=2)
    with pytest.raises(FatalError, match="expected"):
        await store.put_stream(f"s3://{bucket}/short/obj", data.stream(), size=3 * PART)
    with pytest.raises(FatalError, match="expected"):
        await store.put_stream(f"s3://{bucket}/short/small", Generated(10).stream(), size=11)
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


async def test_cancelled_upload_is_aborted(store: S3Store, bucket: str) -> None:
    sent_two_parts = anyio.Event()
    forever = anyio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for piece in Generated(2 * PART + 1, seed=3).stream():
            yield piece
        sent_two_parts.set()
        await forever.wait()
        yield b""

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.put_stream, f"s3://{bucket}/cancel/obj", stalls())
            await sent_two_parts.wait()
            tg.cancel_scope.cancel()
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


async def test_missing_object(store: S3Store, bucket: str) -> None:
    with pytest.raises(NotFoundError):
        await store.head(f"s3://{bucket}/nope")
    with pytest.raises(NotFoundError):
        await sha256_of(store.get_stream(f"s3://{bucket}/nope"))
    with pytest.raises(NotFoundError):
        await store.copy(f"s3://{bucket}/nope", f"s3://{bucket}/nope2")


async def test_throttles_exhausting_attempts_raise_throttled_with_retry_after(front: S3Stack, registry: LimiterRegistry) -> None:
    config = S3Config(endpoint_url=front.front_url, max_attempts=2)
    async with S3Store(config, AdapterContext(limiters=registry)) as s3:
        await s3.client.create_bucket(Bucket="rf-throttled")
        front.configure(write_rate=0.01, burst_seconds=0.0, retry_after=0.01)  # one token per 100 s
        await s3.put_stream("s3://rf-throttled/k/a", Generated(1).stream())  # takes the one token
        with pytest.raises(ThrottledError) as info:
            await s3.put_stream("s3://rf-throttled/k/b", Generated(1).stream())
    assert info.value.retry_after == 0.01
    assert "SlowDown" in str(info.value)


async def test_list_pages_in_key_order(store: S3Store, bucket: str) -> None:
    keys = [f"l/{i:04d}" for i in range(25)]
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(store.put_stream, f"s3://{bucket}/{key}", Generated(1).stream())
    listed = [info async for info in store.list(f"s3://{bucket}/l/", page_size=10)]  # three pages
    assert [i.url.key for i in listed] == keys
    assert {i.size for i in listed} == {1}


async def test_copy_between_stores_on_different_endpoints_streams(front: S3Stack, store: S3Store, bucket: str, registry: LimiterRegistry) -> None:
    data = Generated(2 * PART + 3, seed=6)
    await store.put_stream(f"s3://{bucket}/src/obj", data.stream(), size=data.size)
    direct = S3Config(endpoint_url=front.moto_url, part_size=PART, multipart_threshold=PART)
    async with S3Store(direct, AdapterContext(limiters=registry)) as other:
        assert not other.same_endpoint(store)
        result = await copy_between(store, f"s3://{bucket}/src/obj", other, f"s3://{bucket}/dst/obj")
        assert (result.size, result.parts) == (data.size, 3)
        assert await sha256_of(other.get_stream(f"s3://{bucket}/dst/obj")) == (data.sha256, data.size)


@pytest.mark.skipif(not os.environ.get("RUNFERRY_S3_LARGE_MB"), reason="set RUNFERRY_S3_LARGE_MB=4096 for a multi-GB run")
async def test_large_object_roundtrip(store: S3Store, bucket: str, front: S3Stack) -> None:
    # moto copies the whole object for every ranged GET and UploadPartCopy, so this run reads
    # with one streamed GET and copies with CopyObject (real S3 has no such cost).
    size = int(os.environ["RUNFERRY_S3_LARGE_MB"]) * MIB + 17
    front.configure(write_rate=200.0, read_rate=400.0)
    data = Generated(size, seed=42, piece=8 * MIB)
    large = S3Store(S3Config(endpoint_url=front.front_url, part_size=16 * MIB, copy_threshold=5 * 1024 * MIB), store.context)
    async with large:
        result = await large.put_stream(f"s3://{bucket}/large/obj", data.stream(), size=size)
        assert (result.size, result.parts) == (size, -(-size // (16 * MIB)))
        assert await sha256_of(large.get_stream(f"s3://{bucket}/large/obj", parallelism=1)) == (data.sha256, size)
        copy = await large.copy(f"s3://{bucket}/large/obj", f"s3://{bucket}/large/copy")
        assert copy.size == size
        assert await sha256_of(large.get_stream(f"s3://{bucket}/large/copy", parallelism=1)) == (data.sha256, size)
    assert await store.list_open_uploads(f"s3://{bucket}/") == []


async def test_medium_object_many_parts(store: S3Store, bucket: str, front: S3Stack) -> None:
    """The CI-sized 'large' object: 12 parts, under SlowDown (the multi-GB run is opt-in)."""
    front.configure(write_rate=40.0, read_rate=80.0, burst_seconds=0.1)
    data = Generated(12 * PART - 11, seed=24, piece=4 * MIB)
    await roundtrip(store, f"s3://{bucket}/medium/obj", data)
    assert await store.list_open_uploads(f"s3://{bucket}/") == []
