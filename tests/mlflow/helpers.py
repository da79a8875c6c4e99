"""Drive an MLflow source into a destination without the engine, and compare two servers
field by field through the official client (the oracle)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from core.protocols import AdapterContext, Checkpoint
from adapters.mlflow import (
    MlflowDestination,
    MlflowDestinationConfig,
    MlflowSource,
    MlflowSourceConfig,
)
from ratelimit import ControlConfig, LimiterRegistry
from tests.mlflow.seed import float_bits

OUR_TAGS = ("runferry.source_run_id", "runferry.source", "runferry.pending_parent")


class Events:
    """An ``AdapterContext.events`` hook that records everything."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, **fields: Any) -> None:
        self.seen.append((name, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [f for n, f in self.seen if n == name]


def context(chunk_points: int = 700, events: Events | None = None, *, limiters: Any = None) -> AdapterContext:
    return AdapterContext(chunk_points=chunk_points, events=events or Events(), limiters=limiters)


def quick_recovery() -> LimiterRegistry:
    """Limiters that back off as usual but never pace below 200 requests/s: fault tests check
    outcomes, not the recovery curve (that is ratelimit's own tests' business)."""
    return LimiterRegistry(default=ControlConfig(min_rate=200.0, backoff_base=0.01, backoff_cap=0.1))


async def copy_all(
    source: MlflowSource,
    destination: MlflowDestination,
    *,
    resume: dict[str, Checkpoint] | None = None,
    files: bool = True,
) -> dict[str, str]:
    """Copy every selected run; returns source run id -> destination run id."""
    mapping = {}
    async with contextlib.aclosing(source.list_runs()) as refs:
        async for ref in refs:
            record = await source.get_run(ref)
            writer = await destination.open_run(record, (resume or {}).get(ref.id))
            try:
                start = writer.checkpoint().history_points
                async with contextlib.aclosing(source.iter_history(record, start)) as chunks:
                    async for chunk in chunks:
                        await writer.write_history(chunk)
                await writer.flush_history()
                if files:
                    async with contextlib.aclosing(source.list_files(record)) as listing:
                        async for file in listing:
                            async with contextlib.aclosing(source.read_file(record, file)) as data:
                                await writer.write_file(file, data)
                await writer.finish(record)
            finally:
                await writer.aclose()
            mapping[ref.id] = writer.dest_id
    await destination.finalize()
    return mapping


def source_config(url: str, **overrides: Any) -> MlflowSourceConfig:
    return MlflowSourceConfig(tracking_uri=url, **overrides)


def dest_config(url: str, **overrides: Any) -> MlflowDestinationConfig:
    return MlflowDestinationConfig(tracking_uri=url, **overrides)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[Any, ...]]:
    points = client.get_metric_history(run_id, key)
    return sorted((p.step, p.timestamp, float_bits(p.value)) for p in points)


def dest_run_for(client: MlflowClient, experiment_name: str, source_run_id: str) -> list[Any]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, experiment_name
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`runferry.source_run_id` = '{source_run_id}'",
        run_view_type=ViewType.ALL,
    )


def artifact_tree(tracking_uri: str, run_id: str, into: Path) -> dict[str, bytes]:
    target = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=tracking_uri, dst_path=str(into)))
    out = {}
    for dirpath, _, names in os.walk(target):
        for name in names:
            full = Path(dirpath) / name
            out[full.relative_to(target).as_posix()] = full.read_bytes()
    return out


def assert_same_run(
    src: MlflowClient, dst: MlflowClient, src_id: str, dst_id: str, *, parent_map: dict[str, str] | None = None
) -> None:
    """Every field the official client shows, source vs destination."""
    a, b = src.get_run(src_id), dst.get_run(dst_id)
    assert b.info.run_name == a.info.run_name
    assert b.info.status == a.info.status
    assert b.info.start_time == a.info.start_time
    assert b.info.end_time == a.info.end_time
    assert b.info.user_id == a.info.user_id
    assert b.info.lifecycle_stage == a.info.lifecycle_stage
    assert b.data.params == a.data.params
    src_tags = dict(a.data.tags)
    dst_tags = {k: v for k, v in b.data.tags.items() if k not in OUR_TAGS}
    if "mlflow.parentRunId" in src_tags:
        assert parent_map is not None
        src_tags["mlflow.parentRunId"] = parent_map[src_tags["mlflow.parentRunId"]]
    assert dst_tags == src_tags, (set(dst_tags.items()) ^ set(src_tags.items()))
    assert b.data.tags["runferry.source_run_id"] == src_id
    assert set(b.data.metrics) == set(a.data.metrics)
    for key in a.data.metrics:
        assert history(dst, dst_id, key) == history(src, src_id, key), key
    assert [(i.dataset.name, i.dataset.digest, i.dataset.source) for i in b.inputs.dataset_inputs] == [
        (i.dataset.name, i.dataset.digest, i.dataset.source) for i in a.inputs.dataset_inputs
    ]


AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_bucket(bucket: str) -> Iterator[str]:
    """Moto's S3 server on a free loopback port with ``bucket`` created; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.servers.mlflow_server import free_port

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        moto.stop()
