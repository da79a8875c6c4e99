"""SSE-C: the customer key goes with every request S3 needs it on, checked by the front.

moto accepts SSE-C headers without checking them, so the front enforces S3's rules
(``FrontSettings.sse_c``): a part, a GET, a HEAD or a copy of an object written with a key and
sent without it is refused, with another key denied. Every byte is read back and compared.
"""

from __future__ import annotations

import base64
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from adapters.s3 import S3Config, S3Store
from core.errors import AuthError, ConfigError, FatalError
from core.protocols import AdapterContext
from ratelimit import LimiterRegistry
from tests.e2e.test_cli import write_config
from tests.reliability.servers import engine
from tests.servers.s3front import S3Stack

from .conftest import PART
from .test_remote_export import SYNTHETIC

KEY = random.Random(5).randbytes(32)
OTHER_KEY = random.Random(6).randbytes(32)


def config(front: S3Stack, key_env: str = "") -> S3Config:
    return S3Config(
        endpoint_url=front.front_url, part_size=PART, multipart_threshold=PART, copy_threshold=PART,
        part_concurrency=4, ranged_get_threshold=2 * PART, sse_customer_key_env=key_env,
    )


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read(s3: S3Store, url: str, parallelism: int | None = None) -> bytes:
    return b"".join([piece async for piece in s3.get_stream(url, parallelism=parallelism)])


@pytest.fixture
def sse_front(front: S3Stack, monkeypatch: pytest.MonkeyPatch) -> S3Stack:
    monkeypatch.setenv("RF_SSE_KEY", base64.b64encode(KEY).decode())
    monkeypatch.setenv("RF_OTHER_KEY", base64.b64encode(OTHER_KEY).decode())
    front.configure(sse_c=True)
    return front


@pytest.mark.parametrize("size", [0, 1000, 3 * PART + 5])
async def test_the_key_goes_with_every_object_request(sse_front: S3Stack, bucket: str, size: int) -> None:
    data = random.Random(size).randbytes(size)
    parts = -(-size // PART) if size > PART else 0
    url, copy_url = f"s3://{bucket}/enc/obj", f"s3://{bucket}/enc/copy"
    async with S3Store(config(sse_front, "RF_SSE_KEY"), AdapterContext(limiters=LimiterRegistry())) as s3:
        result = await s3.put_stream(url, one(data), size=size)
        assert (result.size, result.parts) == (size, parts)
        info = await s3.head(url)
        assert (info.size, info.etag_is_md5) == (size, False)
        assert await read(s3, url) == data  # ranged GETs above 2 parts, one GET below
        assert await read(s3, url, parallelism=1) == data
        copied = await s3.copy(url, copy_url)
        assert copied.parts == parts
        assert await read(s3, copy_url) == data
        assert await s3.list_open_uploads(f"s3://{bucket}/") == []
    served = sse_front.stats()[f"{bucket}/enc"]
    assert served["sse_c_refused"] == 0
    counts = served["sse_c"]
    if parts:
        assert (counts["CreateMultipartUpload"], counts["UploadPart"], counts["CompleteMultipartUpload"]) == (2, parts, 2)
        assert counts["UploadPartCopy"] == parts
        assert counts["GetObject"] == 1 + parts + 1 + 1 + parts  # GET, ranges; streamed GET; copy: GET, ranges
    else:
        assert (counts["PutObject"], counts["CopyObject"], counts["GetObject"]) == (1, 1, 3)
    assert counts["HeadObject"] >= 2  # the object, the copy's source


async def test_without_the_key_or_with_another_the_object_is_refused(sse_front: S3Stack, bucket: str) -> None:
    data = random.Random(1).randbytes(2 * PART + 3)
    url = f"s3://{bucket}/enc/obj"
    async with S3Store(config(sse_front, "RF_SSE_KEY")) as s3:
        await s3.put_stream(url, one(data), size=len(data))
    async with S3Store(config(sse_front)) as plain:
        with pytest.raises(FatalError, match="400"):
            await plain.head(url)
        with pytest.raises(FatalError, match="400"):
            await read(plain, url)
    async with S3Store(config(sse_front, "RF_OTHER_KEY")) as other:
        with pytest.raises(AuthError):
            await read(other, url)
    # 4: botocore answers a HEAD's 400 by checking the bucket's region and sending it once more
    assert sse_front.stats()[f"{bucket}/enc"]["sse_c_refused"] == 4


async def test_upload_extra_args_key_reaches_every_part(sse_front: S3Stack, bucket: str) -> None:
    """MLflow's ``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` way: the key given per upload, not configured."""
    data = random.Random(2).randbytes(3 * PART + 1)
    url = f"s3://{bucket}/enc/mlflow"
    key = "k" * 32  # a key as JSON can hold it: 32 characters
    async with S3Store(config(sse_front)) as plain:
        result = await plain.put_stream(
            url, one(data), size=len(data),
            extra_args={"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key, "ContentType": "application/x-bin"},
        )
        assert result.parts == 4
    sse_front.configure(sse_c=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RF_K", base64.b64encode(key.encode()).decode())
        async with S3Store(config(sse_front, "RF_K")) as s3:
            assert await read(s3, url) == data
    served = sse_front.stats()[f"{bucket}/enc"]
    assert (served["sse_c"]["UploadPart"], served["sse_c_refused"]) == (4, 0)


@pytest.mark.parametrize(
    ("value", "says"),
    [(None, "RF_SSE_MISSING (SSE-C key) is not set"), ("bm90IGEga2V5", "must hold a base64-encoded 256-bit key")],
)
async def test_a_bad_key_variable_is_a_config_error_that_never_shows_the_value(
    front: S3Stack, monkeypatch: pytest.MonkeyPatch, value: str | None, says: str
) -> None:
    if value is not None:
        monkeypatch.setenv("RF_SSE_MISSING", value)
    with pytest.raises(ConfigError, match=r"RF_SSE_MISSING") as caught:
        async with S3Store(dataclasses.replace(config(front), sse_customer_key_env="RF_SSE_MISSING")):
            pass
    assert says in str(caught.value)
    assert value is None or value not in str(caught.value)


def test_an_export_with_an_sse_c_key_is_encrypted_and_reads_back(sse_front: S3Stack, bucket: str, tmp_path: Path) -> None:
    """``s3_sse_customer_key_env`` of the local destination: every object of the export is written
    with the key (the front refuses a keyless read), and ``verify`` reads the runs back with it."""
    destination = {"type": "local", "path": f"s3://{bucket}/sse-export", "s3_endpoint_url": sse_front.front_url,
                   "s3_sse_customer_key_env": "RF_SSE_KEY"}
    config = write_config(tmp_path / "sse.toml", SYNTHETIC, destination, {"ledger": str(tmp_path / "sse.jsonl")})
    done = engine("migrate", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    verified = engine("verify", str(config))
    assert verified.returncode == 0 and "runs identical:      3" in verified.stdout, verified.stdout + verified.stderr
    served = sse_front.stats()
    written = sum(cell["sse_c"].get("PutObject", 0) + cell["sse_c"].get("CreateMultipartUpload", 0) for cell in served.values())
    assert written > 3 and all(cell["sse_c_refused"] == 0 for cell in served.values())
    plain = boto3.client("s3", endpoint_url=sse_front.front_url, region_name="us-east-1")
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidRequest"):
        plain.get_object(Bucket=bucket, Key="sse-export/runs.parquet")
