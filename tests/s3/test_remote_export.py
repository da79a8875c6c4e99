"""Exports to and from an object store (``path = "s3://bucket/prefix"``), through the CLI: killed
at random ledger moments and resumed, the bucket holds byte for byte what a local export of the
same source holds (and nothing else: no part left over, no half object); the local source reads
the runs back from the bucket exactly; pyarrow reads the history straight from the bucket; a
bad ``s3://`` path is refused in one line with exit 2. The bucket sits behind the throttling
front, so the export also goes through SlowDown answers."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from adapters.local import LocalSource
from tests.adapters.contract import all_files, all_refs, assert_history_equal, read_bytes, read_history
from tests.e2e.test_cli import write_config
from tests.reliability.servers import engine
from tests.servers.mlflow_server import MlflowServer
from tests.servers.s3front import S3Stack

pytestmark = pytest.mark.timeout(900)

SYNTHETIC = {
    "type": "synthetic", "seed": 21, "runs": 3, "projects": 1, "steps": 600, "keys": 3, "system_keys": 1,
    "console_lines": 4, "file_sizes": [3000, 0], "artifact_sizes": [9000, 2], "json_keys": 1,
}
TRANSFER = {"chunk_points": 300, "runs_concurrency": 2}
LEDGER_LINES = 36  # at least what either export appends (synthetic 42, MLflow 36): every moment kills
MOMENTS = sorted(random.Random("s3-export").sample(range(2, LEDGER_LINES), 2))


def s3_client(url: str) -> object:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def bucket_tree(url: str, bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = s3_client(url)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):  # type: ignore[attr-defined]
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()  # type: ignore[attr-defined]
            out[item["Key"][len(prefix) + 1 :]] = body
    return out


def local_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bucket(s3_stack: S3Stack) -> Iterator[str]:
    name = "rf-exports"
    s3_client(s3_stack.moto_url).create_bucket(Bucket=name)  # type: ignore[attr-defined]
    s3_stack.configure(write_rate=300.0, read_rate=600.0, burst_seconds=0.2)  # some SlowDown on the way
    yield name
    s3_stack.configure(write_rate=None, read_rate=None)


@pytest.fixture(scope="module")
def mlflow_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow server holding the synthetic runs (written by our MLflow destination)."""
    root = tmp_path_factory.mktemp("mlflow-export-source")
    server = MlflowServer(root / "server").start()
    try:
        config = write_config(root / "seed.toml", SYNTHETIC, {"type": "mlflow", "tracking_uri": server.url},
                              {"ledger": str(root / "seed.jsonl")})
        done = engine("migrate", str(config))
        assert done.returncode == 0, done.stderr[-3000:]
        yield server
    finally:
        server.stop()


def export(tmp: Path, name: str, source: dict, path: str, endpoint: str, *, kill_at: int = 0) -> Path:
    """Export ``source`` to ``path``: killed before ledger line ``kill_at`` (if given), then resumed."""
    destination = {"type": "local", "path": path, "s3_endpoint_url": endpoint}
    if not path.startswith("s3://"):
        destination.pop("s3_endpoint_url")
    config = write_config(tmp / f"{name}.toml", source, destination, {"ledger": str(tmp / f"{name}.jsonl"), **TRANSFER})
    if kill_at:
        crashed = engine("migrate", str(config), env={"RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE": str(kill_at)})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]  # killed mid-way
    done = engine("migrate", str(config))
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    return config


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("kind", ["synthetic", "mlflow"])
def test_killed_and_resumed_s3_export_equals_a_local_export(
    kind: str, moment: int, s3_stack: S3Stack, bucket: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source = SYNTHETIC if kind == "synthetic" else {
        "type": "mlflow", "tracking_uri": request.getfixturevalue("mlflow_source").url, "experiments": ["*"]}
    export(tmp_path, "local", source, str(tmp_path / "local"), s3_stack.front_url)
    prefix = f"exports/{kind}-{moment}"
    config = export(tmp_path, "s3", source, f"s3://{bucket}/{prefix}", s3_stack.front_url, kill_at=moment)
    expected = local_tree(tmp_path / "local")
    assert any(k.endswith("/history.parquet") for k in expected) and "runs.parquet" in expected
    assert bucket_tree(s3_stack.moto_url, bucket, prefix) == expected
    assert s3_client(s3_stack.moto_url).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # type: ignore[attr-defined]
    verified = engine("verify", str(config))  # reads the bucket back through the local source
    assert verified.returncode == 0 and "runs identical:      3" in verified.stdout, verified.stdout + verified.stderr


async def test_local_source_reads_the_bucket_as_the_directory(s3_stack: S3Stack, bucket: str, tmp_path: Path) -> None:
    export(tmp_path, "local", SYNTHETIC, str(tmp_path / "local"), s3_stack.front_url)
    export(tmp_path, "s3", SYNTHETIC, f"s3://{bucket}/read-back", s3_stack.front_url)
    async with LocalSource(LocalSource.Config(path=str(tmp_path / "local"))) as local, LocalSource(
        LocalSource.Config(path=f"s3://{bucket}/read-back", s3_endpoint_url=s3_stack.front_url)
    ) as remote:
        refs = await all_refs(local)
        assert [r.id for r in await all_refs(remote)] == [r.id for r in refs] and len(refs) == 3
        for ref in refs:
            want, got = await local.get_run(ref), await remote.get_run(ref)
            assert got == want
            assert_history_equal((await read_history(remote, got))[0], (await read_history(local, want))[0])
            resumed, _ = await read_history(remote, got, start=450)
            assert_history_equal(resumed, (await read_history(local, want, start=450))[0])
            files = {(f.path, f.role, f.artifact): await read_bytes(local, want, f) for f in await all_files(local, want)}
            remote_files = {(f.path, f.role, f.artifact): await read_bytes(remote, got, f) for f in await all_files(remote, got)}
            assert remote_files == files and len(files) == 5


def test_pyarrow_reads_the_history_from_the_bucket(s3_stack: S3Stack, bucket: str, tmp_path: Path) -> None:
    export(tmp_path, "local", SYNTHETIC, str(tmp_path / "local"), s3_stack.front_url)
    export(tmp_path, "s3", SYNTHETIC, f"s3://{bucket}/for-pyarrow", s3_stack.front_url)
    endpoint = urlsplit(s3_stack.moto_url)
    fs = pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme, access_key="testing",
                           secret_key="testing", region="us-east-1")
    runs = pq.read_table(f"{bucket}/for-pyarrow/runs.parquet", filesystem=fs)
    local_runs = pq.read_table(tmp_path / "local" / "runs.parquet")
    assert runs.schema == local_runs.schema and runs.num_rows == 3
    assert runs.column("id").equals(local_runs.column("id")) and runs.column("path").equals(local_runs.column("path"))
    for path in runs.column("path").to_pylist():
        remote = pq.read_table(f"{bucket}/for-pyarrow/{path}/history.parquet", filesystem=fs)
        assert remote.num_rows == 600 * 3
        assert_history_equal(remote, pq.read_table(tmp_path / "local" / path / "history.parquet"))
    # the README's dataset query: one key across every run's history
    paths = [f"{bucket}/for-pyarrow/{p}/history.parquet" for p in runs.column("path").to_pylist()]
    key = remote.column("key")[0].as_py()
    history = ds.dataset(paths, filesystem=fs, format="parquet").to_table(filter=ds.field("key") == key)
    assert history.num_rows == 600 * 3 and set(history.column("key").to_pylist()) == {key}


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("s3://Bad_Bucket/x", "is not an S3 bucket name"),
        ("s3://", "is not an S3 bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("gs://bucket/x", "only s3:// object stores are supported"),
    ],
)
def test_a_bad_s3_path_is_refused_in_one_line(path: str, says: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", SYNTHETIC, {"type": "local", "path": path},
                          {"ledger": str(tmp_path / "ledger.jsonl")})
    refused = engine("migrate", str(config))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "path" in lines[0], refused.stderr
    assert not (tmp_path / "ledger.jsonl").exists()


def test_a_missing_bucket_is_refused_in_one_line(s3_stack: S3Stack, tmp_path: Path) -> None:
    config = write_config(tmp_path / "nobucket.toml", SYNTHETIC,
                          {"type": "local", "path": "s3://no-such-bucket/x", "s3_endpoint_url": s3_stack.moto_url},
                          {"ledger": str(tmp_path / "ledger.jsonl")})
    refused = engine("migrate", str(config))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket" in lines[0] and "does not exist" in lines[0], refused.stderr
