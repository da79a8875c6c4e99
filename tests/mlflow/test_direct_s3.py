"""MLflow runs whose artifact root is ``s3://`` are read straight from the bucket when asked:
same files, same bytes as through the tracking server, and the bytes come from S3."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.mlflow import MlflowSource
from ratelimit import LimiterRegistry
from tests.mlflow.helpers import AWS_TEST_ENV, context, moto_bucket, source_config
from tests.servers.mlflow_server import MlflowServer

BUCKET = "direct-artifacts"
AWS = AWS_TEST_ENV
FILES = {
    "model/weights.bin": bytes(range(256)) * 4096 + b"tail",  # 1 MiB + 4 bytes
    "model/deep/er/config.json": b'{"layers": 3}',
    "empty.txt": b"",
    "spaced name/ünï.txt": "ünïcode".encode(),
}


@pytest.fixture(scope="module")
def direct_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, str, str]]:
    with moto_bucket(BUCKET) as endpoint:
        root = tmp_path_factory.mktemp("mlflow-direct-s3")
        server = MlflowServer(
            root,
            extra_args=("--default-artifact-root", f"s3://{BUCKET}/runs"),
            env={"MLFLOW_S3_ENDPOINT_URL": endpoint, **AWS},
        )
        try:
            server.start()
            mp = pytest.MonkeyPatch()
            for k, v in {"MLFLOW_S3_ENDPOINT_URL": endpoint, **AWS}.items():
                mp.setenv(k, v)
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=server.url)
            experiment = client.create_experiment("direct-s3")
            run = client.create_run(experiment, run_name="with-s3-artifacts")
            staged = Path(root) / "staged"
            for rel, data in FILES.items():
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            client.log_artifacts(run.info.run_id, str(staged))
            client.set_terminated(run.info.run_id)
            yield server, run.info.run_id, endpoint
            mp.undo()
        finally:
            server.stop()


async def read_all(source: MlflowSource, run_id: str) -> dict[str, bytes]:
    refs = [r async for r in source.list_runs() if r.id == run_id]
    record = await source.get_run(refs[0])
    assert str(record.system["artifact_uri"]).startswith(f"s3://{BUCKET}/")
    out = {}
    async for f in source.list_files(record):
        out[f.path] = b"".join([piece async for piece in source.read_file(record, f)])
        assert f.size == len(out[f.path])
    return out


async def test_direct_reads_equal_proxied_reads(direct_server: tuple[MlflowServer, str, str]) -> None:
    server, run_id, endpoint = direct_server
    limiters = LimiterRegistry()
    async with MlflowSource(source_config(server.url, experiments=["direct-s3"], artifacts_direct_s3=True),
                            context(limiters=limiters)) as direct:
        from_bucket = await read_all(direct, run_id)
    async with MlflowSource(source_config(server.url, experiments=["direct-s3"]), context()) as proxied:
        via_server = await read_all(proxied, run_id)
    digest = {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}
    assert {k: hashlib.sha256(v).hexdigest() for k, v in from_bucket.items()} == digest
    assert {k: hashlib.sha256(v).hexdigest() for k, v in via_server.items()} == digest
    s3_endpoints = [s for s in limiters.statistics() if s.endpoint.startswith("s3://")]
    assert s3_endpoints and sum(s.successes for s in s3_endpoints) >= len(FILES)  # bytes came from S3
