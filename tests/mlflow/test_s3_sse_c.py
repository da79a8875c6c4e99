"""MLflow ``s3://`` artifact roots encrypted with a customer key (SSE-C), both ways.

A proxied server's run goes to a server whose root is ``s3://`` (no proxy), with
``s3_sse_customer_key_env`` on the destination: every object lands encrypted with the key
(the front in front of moto enforces S3's SSE-C rules: a read without the key is refused).
Then the encrypted root is the source (``artifacts_direct_s3`` with the same key) of a copy
back into a proxied server, whose files the official client downloads byte for byte.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from mlflow.tracking import MlflowClient

from core.errors import ConfigError
from engine.pipeline import migrate
from engine.progress import Progress
from tests.mlflow.helpers import moto_bucket
from tests.mlflow.test_s3_roots import FILES, config, destination_run, downloaded, proxied_and_s3_root, seed, sha
from tests.servers.mlflow_server import MlflowServer
from tests.servers.s3front import FrontSettings, S3Front

BUCKET = "runferry-sse-c"
KEY = random.Random(11).randbytes(32)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, MlflowServer, str]]:
    """(proxied server, server with an ``s3://`` root and no proxy, the enforcing front's URL)."""
    with moto_bucket(BUCKET) as endpoint:
        front = S3Front(endpoint, FrontSettings(sse_c=True)).start()
        try:
            with proxied_and_s3_root(tmp_path_factory.mktemp("mlflow-sse-c"), BUCKET, front.url,
                                     {"RF_SSE_KEY": base64.b64encode(KEY).decode()}) as (proxied, direct):
                yield proxied, direct, front.url
        finally:
            front.stop()


async def test_encrypted_s3_root_written_and_read_back_with_the_customer_key(
    servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path
) -> None:
    proxied, direct, front_url = servers
    source_run = seed(proxied, "to-sse", tmp_path)
    into_s3 = config(proxied, direct, "to-sse", tmp_path, destination={"s3_sse_customer_key_env": "RF_SSE_KEY"})
    report = await migrate(into_s3, progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    encrypted_run, root = destination_run(direct, "to-sse", source_run)

    s3 = boto3.client("s3", endpoint_url=front_url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    prefix = root[len(f"s3://{BUCKET}/") :] + "/"
    got = {}
    for rel in FILES:
        got[rel] = s3.get_object(Bucket=BUCKET, Key=prefix + rel, SSECustomerAlgorithm="AES256",
                                 SSECustomerKey=KEY)["Body"].read()
        with pytest.raises(botocore.exceptions.ClientError):  # encrypted: refused without the key
            s3.head_object(Bucket=BUCKET, Key=prefix + rel)
    assert sha(got) == sha(FILES)

    back = config(direct, proxied, "to-sse", tmp_path / "back",
                  source={"artifacts_direct_s3": True, "s3_sse_customer_key_env": "RF_SSE_KEY"},
                  destination={"experiment": "back-{experiment}"})
    (tmp_path / "back").mkdir()
    report = await migrate(back, progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    final_run, _ = destination_run(proxied, "back-to-sse", encrypted_run)
    assert sha(downloaded(proxied, final_run, tmp_path)) == sha(FILES)


async def test_a_malformed_customer_key_stops_the_start(
    servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxied, direct, _ = servers
    monkeypatch.setenv("RF_BAD_KEY", base64.b64encode(b"too short").decode())
    seed(proxied, "bad-key", tmp_path)
    bad = config(proxied, direct, "bad-key", tmp_path, destination={"s3_sse_customer_key_env": "RF_BAD_KEY"})
    with pytest.raises(ConfigError, match="RF_BAD_KEY must hold a base64-encoded 256-bit key"):
        await migrate(bad, progress=Progress(mode="none"))
    assert MlflowClient(direct.url).get_experiment_by_name("bad-key") is None  # nothing written
