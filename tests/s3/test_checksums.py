"""Stored CRC-32 checksums: a streamed PutObject leaves one with the object, downloads check by it.

The official client (boto3, which validates a stored CRC-32 itself) reads what runferry wrote;
objects whose stored checksum does not match their bytes are made with boto3 straight on moto
(which keeps a given checksum unchecked, as a faulty store or a corrupted read would present it),
so a download that still passed would prove the CRC was not what was checked.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import AsyncGenerator
from typing import Any

import boto3
import pytest

from adapters.s3 import S3Config, S3Store
from adapters.s3._listing import full_object_crc32
from core.errors import TransientError
from core.protocols import AdapterContext
from ratelimit import LimiterRegistry
from tests.servers.s3front import S3Stack

from .conftest import PART, Events, Generated, sha256_of


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def official(front: S3Stack) -> Any:
    """boto3 with its defaults (it sends and validates CRC-32 checksums when supported)."""
    return boto3.client("s3", endpoint_url=front.moto_url, region_name="us-east-1")


def opener(data: Generated) -> Any:
    async def read() -> AsyncGenerator[bytes, None]:
        async for piece in data.stream():
            yield piece

    return read


def whole(data: Generated) -> bytes:
    return b"".join(data._blocks())


def stored_crc32(front: S3Stack, bucket: str, key: str) -> str | None:
    answer = official(front).head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return answer.get("ChecksumCRC32")


async def test_streamed_put_leaves_a_crc32_the_official_client_checks(store: S3Store, bucket: str, front: S3Stack) -> None:
    data = Generated(PART + 123, seed=41)  # re-readable, above multipart_threshold: one streamed PUT
    await store.put_stream(f"s3://{bucket}/crc/obj", opener(data), size=data.size)
    assert stored_crc32(front, bucket, "crc/obj") == crc32_b64(whole(data))
    body = official(front).get_object(Bucket=bucket, Key="crc/obj", ChecksumMode="ENABLED")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == data.sha256
    info = await store.head(f"s3://{bucket}/crc/obj")
    assert info.crc32 == crc32_b64(whole(data))
    for parallelism in (None, 1, 3):  # streamed, and ranged with the CRC fed in order
        assert await sha256_of(store.get_stream(f"s3://{bucket}/crc/obj", parallelism=parallelism)) == (data.sha256, data.size)


@pytest.mark.parametrize("parallelism", [None, 3])
async def test_a_download_that_does_not_match_the_stored_crc32_fails(
    store: S3Store, bucket: str, front: S3Stack, registry: LimiterRegistry, parallelism: int | None
) -> None:
    data = Generated(PART + 7, seed=42)
    body = whole(data)
    wrong = crc32_b64(body + b"x")
    official(front).put_object(Bucket=bucket, Key="bad/obj", Body=body, ChecksumAlgorithm="CRC32", ChecksumCRC32=wrong)
    assert stored_crc32(front, bucket, "bad/obj") == wrong  # the ETag is still the bytes' MD5
    with pytest.raises(TransientError, match="CRC-32 does not match"):
        await sha256_of(store.get_stream(f"s3://{bucket}/bad/obj", parallelism=parallelism))
    # With checksums off the store neither asks for the CRC nor checks it: the ETag's MD5 passes.
    config = S3Config(endpoint_url=front.front_url, part_size=PART, ranged_get_threshold=2 * PART, checksums=False)
    async with S3Store(config, AdapterContext(limiters=registry)) as plain:
        assert (await plain.head(f"s3://{bucket}/bad/obj")).crc32 is None
        assert await sha256_of(plain.get_stream(f"s3://{bucket}/bad/obj", parallelism=parallelism)) == (data.sha256, data.size)


async def test_checksums_off_store_none(front: S3Stack, bucket: str, registry: LimiterRegistry) -> None:
    data = Generated(PART + 5, seed=43)
    config = S3Config(endpoint_url=front.front_url, part_size=PART, multipart_threshold=PART, checksums=False)
    async with S3Store(config, AdapterContext(limiters=registry)) as plain:
        await plain.put_stream(f"s3://{bucket}/off/obj", opener(data), size=data.size)
        assert await sha256_of(plain.get_stream(f"s3://{bucket}/off/obj")) == (data.sha256, data.size)
    assert stored_crc32(front, bucket, "off/obj") is None


async def test_composite_checksums_are_left_to_the_part_md5s(store: S3Store, bucket: str, front: S3Stack) -> None:
    # boto3's multipart upload with per-part CRC-32s: the object's checksum is a composite
    # ("value-3"), no digest of the bytes; the download checks the parts' MD5s instead.
    client = official(front)
    pieces = [Generated(PART, seed=44), Generated(PART, seed=45), Generated(99, seed=46)]
    upload = client.create_multipart_upload(Bucket=bucket, Key="comp/obj", ChecksumAlgorithm="CRC32")
    done = []
    for number, piece in enumerate(pieces, 1):
        answer = client.upload_part(Bucket=bucket, Key="comp/obj", UploadId=upload["UploadId"], PartNumber=number,
                                    Body=whole(piece), ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32": answer["ChecksumCRC32"]})
    client.complete_multipart_upload(Bucket=bucket, Key="comp/obj", UploadId=upload["UploadId"], MultipartUpload={"Parts": done})
    expected = hashlib.sha256(b"".join(whole(piece) for piece in pieces)).hexdigest()
    assert (await store.head(f"s3://{bucket}/comp/obj")).crc32 is None
    for parallelism in (None, 1, 3):
        assert await sha256_of(store.get_stream(f"s3://{bucket}/comp/obj", parallelism=parallelism)) == (expected, 2 * PART + 99)


async def test_streamed_get_checked_by_crc32_resumes_after_a_cut(store: S3Store, bucket: str, front: S3Stack, events: Events) -> None:
    data = Generated(2 * PART - 3, seed=47)
    url = f"s3://{bucket}/cutcrc/obj"
    await store.put_stream(url, opener(data), size=data.size)
    assert (await store.head(url)).crc32 == crc32_b64(whole(data))
    front.configure(cut_gets=2, cut_after=PART // 3 + 7)
    assert await sha256_of(store.get_stream(url, parallelism=1)) == (data.sha256, data.size)
    assert front.stats()[f"{bucket}/cutcrc"]["cut"] == 2
    assert sum(1 for n, f in zip(events.names, events.fields, strict=True) if n == "retry" and "broke off" in str(f["error"])) == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"ChecksumCRC32": "AAAAAQ==", "ETag": '"0cc175b9c0f1b6a831c399e269772661"'}, "AAAAAQ=="),
        ({"ChecksumCRC32": "AAAAAQ==", "ChecksumType": "FULL_OBJECT", "ETag": '"0cc175b9c0f1b6a831c399e269772661-4"'}, "AAAAAQ=="),
        ({"ChecksumCRC32": "AAAAAQ==-4", "ChecksumType": "COMPOSITE", "ETag": '"0cc175b9c0f1b6a831c399e269772661-4"'}, None),
        ({"ChecksumCRC32": "AAAAAQ==", "ChecksumType": "COMPOSITE"}, None),
        ({"ChecksumCRC32": "AAAAAQ==", "ETag": '"0cc175b9c0f1b6a831c399e269772661-4"'}, None),  # moto's HEAD of a composite
        ({"ChecksumCRC32": "AAAAAQ==-4"}, None),
        ({"ChecksumCRC64NVME": "AAAAAAAAAAE=", "ETag": '"0cc175b9c0f1b6a831c399e269772661"'}, None),
        ({"ETag": '"0cc175b9c0f1b6a831c399e269772661"'}, None),
    ],
)
def test_full_object_crc32(answer: dict[str, str], expected: str | None) -> None:
    assert full_object_crc32(answer) == expected
