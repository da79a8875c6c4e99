"""RunRecord -> W&B run fields: identity, namespace, UpsertBucket variables, summary, exit.

Pure functions (no I/O), so the mapping rules are table-tested and documented in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from core.model import RunRecord, RunState

from ._config import WandbDestinationConfig

TAG_MAX_CHARS = 64  # W&B rejects longer tags (the SDK and UI enforce 64)
_RUN_ID_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PROJECT_BAD = re.compile(r"[/\\#?%:]")
PROJECT_MAX_CHARS = 128


def run_id_for(record: RunRecord, config: WandbDestinationConfig, source_uri: str) -> str:
    """Deterministic W&B run id: the source id when allowed, else a hash of URI + id."""
    source_id = record.ref.run_id
    if config.run_id == "source" and _RUN_ID_OK.match(source_id):
        return source_id
    return hashlib.blake2b(f"{source_uri}\x00{record.ref.id}".encode(), digest_size=16).hexdigest()


def _fill(template: str, record: RunRecord) -> str:
    ns = record.ref.namespace
    values = {"project": ns.project, "experiment": ns.project, "entity": ns.entity}
    return template.format_map(values)


def check_template(template: str) -> None:
    """Raise ValueError for placeholders other than {project}, {experiment}, {entity}."""
    try:
        template.format_map({"project": "", "experiment": "", "entity": ""})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"template {template!r}: use only {{project}}, {{experiment}}, {{entity}} ({exc})") from None


def project_for(record: RunRecord, config: WandbDestinationConfig) -> str:
    """Project from the template; characters W&B forbids (/ \\ # ? % :) become ``_``."""
    name = _PROJECT_BAD.sub("_", _fill(config.project, record)).strip() or "uncategorized"
    return name[:PROJECT_MAX_CHARS]


def group_for(record: RunRecord, config: WandbDestinationConfig, parent_run_id: str | None) -> str | None:
    if config.group:
        return _fill(config.group, record) or None
    if record.group:
        return record.group
    return parent_run_id


def wire_config(record: RunRecord, run_id: str) -> dict[str, Any]:
    """The run config in W&B's ``{"key": {"value": v}}`` wire form (nested values kept).

    A run read from W&B keeps its config exactly: every key as it was, and W&B's internal
    ``_wandb`` (metric definitions, custom step metrics, telemetry, start time) as the source
    stored it; runferry's provenance goes inside ``_wandb`` (``runferry_source``), so
    ``run.config`` reads the same on both sides. Other sources get ``source_tags`` /
    ``source_labels`` / ``runferry_source`` keys (see the package docstring).
    """
    provenance = _provenance(record)
    if record.source_system == "wandb":
        out = {key: {"value": value} for key, value in record.config.items() if key != "_wandb"}
        internal = record.config.get("_wandb")
        wandb_internal = dict(internal) if isinstance(internal, dict) else {}
        wandb_internal["runferry_source"] = provenance
        wandb_internal[TIMES_KEY] = _times(record)
        out["_wandb"] = {"value": wandb_internal}
        return out
    out = {key: {"value": value} for key, value in record.config.items()}
    if record.tags:
        out["source_tags"] = {"value": dict(record.tags)}
    long_labels = [label for label in record.labels if len(label) > TAG_MAX_CHARS]
    if long_labels:
        out["source_labels"] = {"value": list(record.labels)}
    out["runferry_source"] = {"value": provenance}
    other_internal: dict[str, Any] = {"t": {}, "runferry_run_id": run_id, TIMES_KEY: _times(record)}
    if record.start_time is not None:
        other_internal["start_time"] = round(record.start_time * 1000)
    out["_wandb"] = {"value": other_internal}
    return out


TIMES_KEY = "runferry_times"
"""``_wandb`` key holding the source run's start and end time (float seconds): W&B sets a run's
creation time itself and has no field for its end, so this is where they survive."""


def _times(record: RunRecord) -> dict[str, float | None]:
    return {"start_time": record.start_time, "end_time": record.end_time}


def original_times(config: dict[str, Any]) -> tuple[float | None, float | None] | None:
    """The (start, end) a migration kept in ``_wandb`` (config values unwrapped), or None."""
    internal = config.get("_wandb")
    times = internal.get(TIMES_KEY) if isinstance(internal, dict) else None
    if not isinstance(times, dict):
        return None
    return times.get("start_time"), times.get("end_time")


def _provenance(record: RunRecord) -> dict[str, Any]:
    """Where the run came from: the source's ``system`` facts, its run id and namespace."""
    source = dict(record.system)
    source.pop("metric_keys", None)  # a source's key list: the history itself holds them
    source.update(run_id=record.ref.run_id, namespace=str(record.ref.namespace))
    if record.parent_id:
        source["parent_run_id"] = record.parent_id
    return source


def wire_tags(record: RunRecord) -> list[str]:
    """W&B tags: the source's labels, plus ``key:value`` of user (non ``mlflow.``) tags, each
    only when it fits W&B's 64-character limit; everything is also kept in config. A run read
    from W&B keeps its tags as they were (W&B accepted them once)."""
    if record.source_system == "wandb":
        return list(dict.fromkeys(record.labels))
    tags: list[str] = []
    for label in record.labels:
        if len(label) <= TAG_MAX_CHARS and label not in tags:
            tags.append(label)
    for key, value in record.tags.items():
        if key.startswith("mlflow."):
            continue
        text = f"{key}:{value}"
        if len(text) <= TAG_MAX_CHARS and text not in tags:
            tags.append(text)
    return tags


def upsert_variables(
    record: RunRecord, *, entity: str, project: str, run_id: str, group: str | None
) -> dict[str, Any]:
    return {
        "name": run_id,
        "entity": entity,
        "project": project,
        "displayName": record.display_name or record.ref.name or run_id,
        "notes": record.notes,
        "groupName": group,
        "jobType": record.job_type,
        "commit": record.git_commit,
        "host": record.host,
        "program": record.program,
        "tags": wire_tags(record),
        "config": dumps_extended(wire_config(record, run_id)),
    }


def dumps_extended(value: Any) -> str:
    """JSON with NaN / Infinity / -Infinity as the SDK writes them (``json.dumps`` default)."""
    return json.dumps(value, allow_nan=True, separators=(",", ":"), default=str)


def summary_for(record: RunRecord, last_line: dict[str, Any] | None, *, system_prefix: str = "") -> dict[str, Any]:
    """The summary line: the source's summary (latest values), plus ``_step``/``_runtime``/
    ``_timestamp`` of the last history line and ``_wandb.runtime`` like the SDK. Keys under
    ``system_prefix`` are system metrics: they live in the system stream, not the summary."""
    summary: dict[str, Any] = {
        k: v for k, v in record.summary.items() if not (system_prefix and k.startswith(system_prefix))
    }
    if last_line:
        for key in ("_step", "_runtime", "_timestamp"):
            if key in last_line:
                summary.setdefault(key, last_line[key])
    runtime = None
    if record.start_time is not None and record.end_time is not None:
        runtime = max(0.0, record.end_time - record.start_time)
    elif last_line and isinstance(last_line.get("_runtime"), (int, float)):
        runtime = float(last_line["_runtime"])
    if runtime is not None and math.isfinite(runtime) and not isinstance(summary.get("_wandb"), dict):
        summary["_wandb"] = {"runtime": int(runtime)}
    return summary


def exit_for(state: RunState) -> tuple[bool, int | None, str | None]:
    """(complete?, exitcode, state to set through UpsertBucket afterwards).

    finished -> exit 0; failed -> exit 1; killed -> exit 255 then state "killed"; crashed ->
    exit 1 then state "crashed"; running / scheduled -> left running (nothing sent).
    """
    if state is RunState.FINISHED:
        return True, 0, None
    if state is RunState.FAILED:
        return True, 1, None
    if state is RunState.KILLED:
        return True, 255, "killed"
    if state is RunState.CRASHED:
        return True, 1, "crashed"
    return False, None, None
