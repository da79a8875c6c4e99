"""Run records as MLflow sees them: the identity tag, parent links, tags, params and metric
entries, decided from the record alone (pure; the destination and its writer share them)."""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, TYPE_CHECKING

import orjson

from adapters.mlflow import _wandb
from adapters.mlflow._batching import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    Packed,
    clean_entries,
)
from adapters.mlflow._client import (
    decode_value,
    encode_value,
)
from core.model import RunRecord, RunState

if TYPE_CHECKING:
    from adapters.mlflow._destination import MlflowDestination


SOURCE_URI_TAG = "runferry.source"
PENDING_PARENT_TAG = "runferry.pending_parent"
PARENT_TAG = "mlflow.parentRunId"
STATUSES = {
    RunState.RUNNING: "RUNNING",
    RunState.SCHEDULED: "SCHEDULED",
    RunState.FINISHED: "FINISHED",
    RunState.FAILED: "FAILED",
    RunState.KILLED: "KILLED",
    RunState.CRASHED: "FAILED",
}


def source_identity(record: RunRecord) -> str:
    """What the destination tag holds: MLflow run ids are globally unique uuids and W&B refs
    are already qualified (``entity/project/run``); other sources' ids are unique within
    their namespace, which is prefixed."""
    if record.source_system == "mlflow" or _wandb.is_wandb(record):
        return record.ref.id
    namespace = record.source_namespace or str(record.ref.namespace)
    return f"{namespace}/{record.ref.id}"


def parent_identity(record: RunRecord) -> str | None:
    if not record.parent_id:
        return None
    if record.source_system == "mlflow":
        return record.parent_id
    namespace = record.source_namespace or str(record.ref.namespace)
    return f"{namespace}/{record.parent_id}"


def run_tags(record: RunRecord) -> dict[str, str]:
    """The run's tags; for non-MLflow sources, system tags are filled from the record's fields
    (an MLflow source's own tags are authoritative and copied as they are)."""
    tags = dict(record.tags)
    if record.source_system == "mlflow":
        return tags
    for key, value in (
        ("mlflow.note.content", record.notes),
        ("mlflow.source.git.commit", record.git_commit),
        ("mlflow.source.name", record.program),
        ("mlflow.user", record.user),
    ):
        if value and key not in tags:
            tags[key] = value
    if _wandb.is_wandb(record):
        tags.update(_wandb.wandb_tags(record))
    return tags


def metric_entry(key: str, step: int, ts: float, value: float) -> dict[str, Any]:
    """One log-batch metric: the timestamp in integer milliseconds, NaN/inf as MLflow's JSON."""
    if math.isnan(value) or math.isinf(value):
        return {"key": key, "value": encode_value(value), "timestamp": round(ts * 1000.0), "step": step}
    return {"key": key, "value": value, "timestamp": round(ts * 1000.0), "step": step}


def point_identity(key: str, step: Any, timestamp: Any, value: Any) -> tuple[Any, ...]:
    number = decode_value(value)
    if math.isinf(number):  # the SQL store keeps +-inf as +-DBL_MAX: the same point either way
        number = math.copysign(sys.float_info.max, number)
    bits = "nan" if math.isnan(number) else repr(number)
    return (key, int(step), int(timestamp), bits)


def param_text(value: Any) -> str:
    """Params are strings at MLflow: strings pass as they are, containers become JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    return str(value)


def prepare_metadata(destination: MlflowDestination, record: RunRecord) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Params and tags as log-batch entries: values cut to the server's limits (each cut is
    reported), over-long keys dropped (reported), the parent remapped or marked pending."""
    config = destination.config
    tags = {
        k: v
        for k, v in run_tags(record).items()
        if k not in (PARENT_TAG, "mlflow.runName", config.source_tag, SOURCE_URI_TAG, PENDING_PARENT_TAG)
    }
    parent = parent_identity(record)
    if parent is not None:
        found = destination.find_run(parent)
        if found is not None:
            tags[PARENT_TAG] = found.run_id
        else:
            tags[PENDING_PARENT_TAG] = parent
    packed = Packed()
    if _wandb.is_wandb(record):
        emit = functools.partial(destination.context.events, run=record.ref.id)
        config_params = _wandb.wandb_params(record.config, emit)
    else:
        config_params = [(k, param_text(v)) for k, v in record.config.items()]
    params = clean_entries(config_params, max_value=MAX_PARAM_VALUE, packed=packed)
    tag_entries = clean_entries(tags.items(), max_value=MAX_TAG_VALUE, packed=packed)
    for key in packed.truncated:
        destination.context.events("value_truncated", run=record.ref.id, key=key)
    for key in packed.dropped:
        destination.context.events("key_dropped", run=record.ref.id, key=key)
    return params, tag_entries
