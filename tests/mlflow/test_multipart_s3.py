"""Multipart artifact upload through the proxy for real: an MLflow server whose artifact store is
S3 (moto's server on loopback) hands out presigned part URLs; parts go straight to S3, then
``mpu/complete``. A failed part upload aborts the upload (no half-written object)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from adapters.mlflow import MlflowDestination
from core.errors import TransferError
from core.model import FileRef, Namespace, RunRecord, RunRef
from tests.mlflow.fault_proxy import Answer, FaultProxy
from tests.mlflow.helpers import context, dest_config
from tests.mlflow.seed import blob
from tests.servers.mlflow_server import MlflowServer, free_port

BUCKET = "mlflow-artifacts"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, str]]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, **_boto_args()).create_bucket(Bucket=BUCKET)
    server = MlflowServer(
        tmp_path_factory.mktemp("mlflow-s3"),
        artifacts_destination=f"s3://{BUCKET}/root",
        env={"MLFLOW_S3_ENDPOINT_URL": endpoint, **AWS},
    )
    try:
        server.start()
        yield server, endpoint
    finally:
        server.stop()
        moto.stop()


def _boto_args() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


def record(run_id: str) -> RunRecord:
    return RunRecord(ref=RunRef(id=run_id, namespace=Namespace("", "multipart")), display_name=run_id, start_time=1.7e9)


async def pieces(data: bytes, size: int = 700_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def s3_objects(endpoint: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_args())
    listing = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


async def test_multipart_upload_through_the_proxy(s3_mlflow: tuple[MlflowServer, str], tmp_path: Path) -> None:
    server, endpoint = s3_mlflow
    data = blob(11 * 1024 * 1024 + 3, 5)  # three parts of 5 MiB, the last short
    proxy = FaultProxy(server.url).start()
    try:
        cfg = dest_config(proxy.url, multipart_threshold=1 << 20, part_size=5 << 20)
        async with MlflowDestination(cfg, context()) as dest:
            assert dest.multipart_supported is True  # server-info: S3 store
            writer = await dest.open_run(record("mpu-ok"), None)
            await writer.write_file(FileRef(path="model/big weights.bin", size=len(data)), pieces(data))
            await writer.write_file(FileRef(path="small.txt", size=5), pieces(b"small"))
            await writer.finish(record("mpu-ok"))
            await writer.aclose()
        assert proxy.count("mpu/create") == 1 and proxy.count("mpu/complete") == 1
        assert proxy.count("mpu/abort") == 0
        objects = s3_objects(endpoint)
        big = [k for k in objects if k.endswith(f"{writer.dest_id}/artifacts/model/big weights.bin")]
        assert len(big) == 1 and objects[big[0]] == data
        small = [k for k in objects if k.endswith(f"{writer.dest_id}/artifacts/small.txt")]
        assert len(small) == 1 and objects[small[0]] == b"small"

        # a part that cannot be stored: the upload is aborted and the error surfaces
        proxy.fail("mpu/complete", Answer(400, b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "bad parts"}'))
        async with MlflowDestination(cfg, context()) as dest:
            writer = await dest.open_run(record("mpu-abort"), None)
            with pytest.raises(TransferError, match="bad parts"):
                await writer.write_file(FileRef(path="big.bin", size=len(data)), pieces(data))
            await writer.aclose()
        assert proxy.count("mpu/abort") == 1
        assert not [k for k in s3_objects(endpoint) if k.endswith(f"{writer.dest_id}/artifacts/big.bin")]
    finally:
        proxy.stop()
