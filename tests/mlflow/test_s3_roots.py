"""MLflow servers whose artifact root is ``s3://`` and that do not proxy artifacts
(``--default-artifact-root s3://... --no-serve-artifacts``, moto on loopback): runferry writes
their runs' files straight to the bucket and reads them from it, and the official client
downloads exactly the bytes of the other side, both ways. Roots on stores runferry cannot write
fail the runs with files, naming them, and pass with artifacts off."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow import MlflowDestination
from core.errors import ConfigError
from engine.config import parse_config
from engine.pipeline import migrate
from engine.progress import Progress
from tests.adapters.contract import copy_run
from tests.engine.wandb_shaped import WandbShapedSource
from tests.mlflow.helpers import AWS_TEST_ENV, context, dest_config, moto_bucket
from tests.mlflow.seed import blob
from tests.mlflow.test_wandb_shape import assert_wandb_run
from tests.servers.mlflow_server import MlflowServer

BUCKET = "runferry-roots"
AWS = AWS_TEST_ENV
THRESHOLD, PART = 1 << 20, 5 << 20
FILES = {
    "empty.txt": b"",
    "a/b/c/d/e/f/deep.bin": blob(70_000, 1),
    "dir with space/ünïcødé 文件.txt": "héllo wörld\n".encode(),
    "model/weights.bin": blob(2 * PART + 12_345, 2),  # above the threshold: three parts
    "small.json.gz": b"\x1f\x8b not really gzip",
}


@contextlib.contextmanager
def proxied_and_s3_root(root: Path, bucket: str, endpoint: str, env: dict[str, str] | None = None
                        ) -> Iterator[tuple[MlflowServer, MlflowServer]]:
    """(proxied server, server whose root is ``s3://bucket/roots``, no proxy), both talking to
    the S3 ``endpoint``; this process's environment points MLflow's client and runferry at it
    too (plus ``env``), as a user's shell would."""
    mp = pytest.MonkeyPatch()
    for key, value in {"MLFLOW_S3_ENDPOINT_URL": endpoint, **AWS, **(env or {})}.items():
        mp.setenv(key, value)
    proxied = MlflowServer(root / "proxied")
    direct = MlflowServer(
        root / "direct",
        extra_args=("--default-artifact-root", f"s3://{bucket}/roots", "--no-serve-artifacts"),
        env={"MLFLOW_S3_ENDPOINT_URL": endpoint, **AWS},
    )
    try:
        proxied.start()
        direct.start()
        yield proxied, direct
    finally:
        proxied.stop()
        direct.stop()
        mp.undo()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, MlflowServer, str]]:
    """(proxied server, s3-root server without proxy, moto endpoint)."""
    with moto_bucket(BUCKET) as endpoint, \
            proxied_and_s3_root(tmp_path_factory.mktemp("mlflow-s3-roots"), BUCKET, endpoint) as (proxied, direct):
        yield proxied, direct, endpoint


def seed(server: MlflowServer, experiment: str, tmp: Path, *, artifact_location: str | None = None) -> str:
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    run = client.create_run(experiment_id, run_name="with files")
    client.log_metric(run.info.run_id, "loss", 0.5, timestamp=1_700_000_000_000, step=3)
    staged = tmp / experiment
    for rel, data in FILES.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(data)
    client.log_artifacts(run.info.run_id, str(staged))
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def downloaded(server: MlflowServer, run_id: str, tmp: Path) -> dict[str, bytes]:
    """Every file of the run as the official client downloads it."""
    target = tmp / f"download-{run_id}"
    target.mkdir()
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=server.url, dst_path=str(target)))
    return {p.relative_to(local).as_posix(): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}


def destination_run(server: MlflowServer, experiment: str, source_run: str) -> tuple[str, str]:
    client = MlflowClient(server.url)
    found = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"tags.`runferry.source_run_id` LIKE '%{source_run}%'",
    )
    assert len(found) == 1
    return found[0].info.run_id, found[0].info.artifact_uri


def config(
    src: MlflowServer, dst: MlflowServer, experiment: str, tmp: Path, *,
    source: dict[str, object] | None = None, destination: dict[str, object] | None = None,
    transfer: dict[str, object] | None = None,
) -> Any:
    return parse_config(
        {
            "source": {"type": "mlflow", "tracking_uri": src.url, "experiments": [experiment], **(source or {})},
            "destination": {"type": "mlflow", "tracking_uri": dst.url, "multipart_threshold": THRESHOLD,
                            "part_size": PART, **(destination or {})},
            "transfer": {"ledger": str(tmp / f"ledger-{experiment}.jsonl"), **(transfer or {})},
        },
        "test",
    )


def sha(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


async def test_proxied_source_into_s3_root(servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path) -> None:
    proxied, direct, endpoint = servers
    source_run = seed(proxied, "to-s3", tmp_path)
    assert downloaded(proxied, source_run, tmp_path) == FILES  # the oracle reads what was seeded

    report = await migrate(config(proxied, direct, "to-s3", tmp_path), progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    dest_run, root = destination_run(direct, "to-s3", source_run)
    assert root.startswith(f"s3://{BUCKET}/roots/")
    assert sha(downloaded(direct, dest_run, tmp_path)) == sha(FILES)

    # the bytes are objects in the bucket under the run's root; the large one went multipart
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    prefix = root[len(f"s3://{BUCKET}/") :] + "/"
    listed = {o["Key"][len(prefix) :]: o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert set(listed) == set(FILES)
    assert listed["model/weights.bin"]["ETag"].strip('"').endswith("-3")
    assert "-" not in listed["a/b/c/d/e/f/deep.bin"]["ETag"]
    head = s3.head_object(Bucket=BUCKET, Key=prefix + "small.json.gz")
    assert (head["ContentType"], head["ContentEncoding"]) == ("application/json", "gzip")  # as MLflow's client

    again = await migrate(config(proxied, direct, "to-s3", tmp_path), progress=Progress(mode="none"))
    assert again.exit_code == 0 and again.progress.totals.runs_skipped == 1


async def test_s3_root_source_into_proxied(servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path) -> None:
    proxied, direct, _ = servers
    source_run = seed(direct, "from-s3", tmp_path)  # the official client writes to the bucket
    assert downloaded(direct, source_run, tmp_path) == FILES

    cfg = config(direct, proxied, "from-s3", tmp_path, source={"artifacts_direct_s3": True})
    report = await migrate(cfg, progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    dest_run, root = destination_run(proxied, "from-s3", source_run)
    assert root.startswith("mlflow-artifacts:/")
    assert sha(downloaded(proxied, dest_run, tmp_path)) == sha(FILES)


async def test_s3_root_to_s3_root(servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path) -> None:
    """Both sides in the bucket: read from it and written to it, never through a server."""
    _, direct, _ = servers
    source_run = seed(direct, "s3-to-s3", tmp_path)
    cfg = config(direct, direct, "s3-to-s3", tmp_path, source={"artifacts_direct_s3": True},
                 destination={"experiment": "copied-{experiment}"})
    report = await migrate(cfg, progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    dest_run, _ = destination_run(direct, "copied-s3-to-s3", source_run)
    assert sha(downloaded(direct, dest_run, tmp_path)) == sha(FILES)


async def test_unsupported_root_fails_the_run_unless_artifacts_are_off(
    servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path
) -> None:
    proxied, direct, _ = servers
    source_run = seed(proxied, "to-gcs", tmp_path)
    MlflowClient(direct.url).create_experiment("to-gcs", artifact_location="gs://elsewhere/mlflow")

    report = await migrate(config(proxied, direct, "to-gcs", tmp_path), progress=Progress(mode="none"))
    assert report.exit_code == 1
    [(run, reason)] = report.progress.totals.failures
    assert run == source_run
    assert f"run {source_run} ('with files')" in reason and "gs://elsewhere/mlflow" in reason
    assert "artifacts = false" in reason

    off = config(proxied, direct, "to-gcs", tmp_path, transfer={"artifacts": False, "incremental": False})
    report = await migrate(off, progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    dest_run, root = destination_run(direct, "to-gcs", source_run)
    assert root.startswith("gs://elsewhere/mlflow/")
    assert MlflowClient(direct.url).get_metric_history(dest_run, "loss")[0].value == 0.5


async def test_wandb_side_files_in_an_s3_root_survive_a_crash(
    servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path
) -> None:
    """W&B runs write their own artifacts (non-numeric history parts, joined at the end; config
    and summary): in an s3:// root they are listed, read, joined and deleted in the bucket."""
    _, direct, _ = servers
    client = MlflowClient(direct.url)
    source = WandbShapedSource(context(100))
    config = dest_config(direct.url, experiment="wb-s3-{experiment}", multipart_threshold=THRESHOLD, part_size=PART)
    ref = source.refs()[1]
    async with MlflowDestination(config, context(100)) as dest:
        record = await source.get_run(ref)
        writer, checkpoints = await copy_run(source, record, dest, stop_after_chunks=4)  # "crash"
    assert writer.dest.artifact_uri.startswith(f"s3://{BUCKET}/")
    parts = "wandb/history_nonnumeric.parts"
    stored = [f.path for f in client.list_artifacts(writer.dest_id, parts)]
    assert stored == [f"{parts}/{start:012d}-{start + 100:012d}.jsonl" for start in (0, 100, 200, 300)]
    async with MlflowDestination(config, context(70)) as dest:
        resumed, _ = await copy_run(source, record, dest, resume=checkpoints[2])
    assert resumed.dest_id == writer.dest_id
    assert client.list_artifacts(writer.dest_id, parts) == []  # joined, then deleted
    assert_wandb_run(client, direct.url, writer.dest_id, 1, tmp_path)


def test_unset_s3_key_variable_is_a_config_error(
    servers: tuple[MlflowServer, MlflowServer, str], tmp_path: Path
) -> None:
    proxied, direct, _ = servers
    with pytest.raises(ConfigError, match="RUNFERRY_TEST_UNSET_KEY, which is not set"):
        config(proxied, direct, "to-s3", tmp_path, destination={
            "s3_access_key_id_env": "RUNFERRY_TEST_UNSET_KEY", "s3_secret_access_key_env": "RUNFERRY_TEST_UNSET_SECRET"})
