"""A W&B run as MLflow holds it (design.md's mapping read backwards), for records whose
``source_system`` is ``"wandb"``.

- Params: the config flattened as W&B's UI and ``pd.json_normalize`` do (``opt.beta1``; lists
  as JSON text; strings as they are, other scalars ``str()`` as MLflow's client does), without
  ``_wandb``. A param MLflow cannot hold (key over 250 characters, value over 6000) is skipped,
  never cut, and reported (``param_skipped``, also for a second key mapping to the same
  name); the whole config, ``_wandb`` included, is the
  artifact ``wandb/config.json``.
- Names MLflow's server refuses (characters outside letters, digits, ``_ - . : / space``, or
  paths such as ``a//b``, ``./a``, ``a/``) are mapped by ``mlflow_name`` and reported
  (``param_renamed`` / ``metric_renamed``, once per name and run).
- Tags: notes, commit, program, user as MLflow's own tags; ``wandb.group``, ``wandb.job_type``,
  ``wandb.host``, ``wandb.tags`` (the W&B tags as one JSON list: labels are free text, tag keys
  are not), ``wandb.run_id``, ``wandb.path`` (``entity/project/run_id``), ``wandb.state`` (the W&B
  state: MLflow has no "crashed", so a crashed run is FAILED with ``wandb.state = crashed``)
  and ``wandb.url`` when the source gives ``system["url"]``.
- History: numbers become metrics with their step and timestamp (integers as their float; the
  SQL store keeps +-inf as +-DBL_MAX, NaN as NaN). Points MLflow cannot hold as
  metrics (strings, bools, lists, dicts, media, histograms, null; names over 250 characters)
  go, in history order, to ``wandb/history_nonnumeric.jsonl``: one JSON object per line,
  ``{"step", "timestamp", "key", "value"}`` with ``value`` the point's exact JSON (the file is
  empty when there are none). Each chunk's lines are stored before the chunk counts as
  durable, as a part named by the chunk's point range (``wandb/history_nonnumeric.parts/
  <start>-<end>.jsonl``, empty when the chunk has no such point); ``flush_history`` joins the
  parts into the one file (streamed) once they tile the whole history, then deletes them. On
  resume, parts reaching beyond the resume point are deleted first, so a replayed chunk never
  leaves a line twice; parts that no longer tile the history beside a joined file are the
  leftovers of a deletion that broke off, and are deleted.
- System metrics (``system/cpu``, ``system/gpu.0.gpu``) keep their names: MLflow's own system
  metrics live under ``system/`` too. Integers beyond 2**53 keep only their float here (the
  exact text stays in W&B and in local exports).
- Files: run files at their paths, the console log at ``output.log``, artifact members at
  ``<artifact>/<version>/<path>`` (``MlflowRunWriter.write_file``).
- Summary: the whole summary is ``wandb/summary.json``. Top-level numbers set directly (keys
  never in the history, not ``_``-prefixed) become one metric point each at the summary's
  ``_step`` and ``_timestamp``; values logged as history already have their points. When the
  history keys are unknown (no ``metric_keys`` and the writer resumed mid-history) no summary
  metric is written and ``summary_metrics_skipped`` says so.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from adapters.mlflow._batching import MAX_KEY_LENGTH, MAX_PARAM_VALUE
from core.flatten import flatten_normalized
from core.model import RunRecord

CONFIG_ARTIFACT = "wandb/config.json"
SUMMARY_ARTIFACT = "wandb/summary.json"
NONNUMERIC_ARTIFACT = "wandb/history_nonnumeric.jsonl"
NONNUMERIC_PARTS = "wandb/history_nonnumeric.parts"
INTERNAL_CONFIG_KEY = "_wandb"

_REFUSED_CHARACTERS = re.compile(r"[^/\w.\- :]")  # mlflow.utils.validation (POSIX servers)

Emit = Callable[..., None]


def is_wandb(record: RunRecord) -> bool:
    return record.source_system == "wandb"


def mlflow_name(name: str) -> str:
    """``name`` as MLflow's server accepts a metric, param or tag key: refused characters become
    ``_``; empty, ``.`` and ``..`` path segments become ``_`` / ``__``; never a leading ``..``.
    Names the server already accepts come back unchanged."""
    parts = []
    for part in _REFUSED_CHARACTERS.sub("_", name).split("/"):
        parts.append({"": "_", ".": "_", "..": "__"}.get(part, part))
    mapped = "/".join(parts)
    return "_" + mapped if mapped.startswith("..") else mapped


def json_text(value: Any) -> str:
    """Compact JSON that keeps NaN and infinities (as Python's ``json`` writes them)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=True, separators=(",", ":"), default=str)


def json_document(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=True, indent=1, default=str).encode("utf-8")


def param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json_text(value)
    return str(value)


def wandb_params(config: dict[str, Any], emit: Emit) -> list[tuple[str, str]]:
    """The flattened config as ``(key, value)`` params MLflow can hold (see the module doc)."""
    params: dict[str, str] = {}
    user_config = {k: v for k, v in config.items() if k != INTERNAL_CONFIG_KEY}
    for key, leaf in flatten_normalized(user_config):
        name = mlflow_name(key)
        value = param_value(leaf)
        reason = None
        if len(name) > MAX_KEY_LENGTH:
            reason = "key_too_long"
        elif len(value) > MAX_PARAM_VALUE:
            reason = "value_too_long"
        elif name in params:
            reason = "duplicate_name"
        if reason is not None:
            emit("param_skipped", key=key, reason=reason, length=len(value))
            continue
        if name != key:
            emit("param_renamed", key=key, mlflow_key=name)
        params[name] = value
    return list(params.items())


def wandb_tags(record: RunRecord) -> dict[str, str]:
    """The W&B fields MLflow has no attribute for, as tags (see the module doc)."""
    tags = {
        "wandb.run_id": record.ref.run_id,
        "wandb.path": record.ref.id,
        "wandb.state": record.state.value,
    }
    for key, value in (
        ("wandb.group", record.group),
        ("wandb.job_type", record.job_type),
        ("wandb.host", record.host),
        ("wandb.url", record.system.get("url")),
    ):
        if value:
            tags[key] = str(value)
    if record.labels:
        tags["wandb.tags"] = json_text(list(record.labels))
    return tags


def nonnumeric_line(key: str, step: int, timestamp: float, value: float | None, value_json: str | None) -> str:
    """One line of ``wandb/history_nonnumeric.jsonl``; ``value`` is the point's own JSON text."""
    if value_json is not None:
        text = value_json
    elif value is not None:
        text = json_text(value)
    else:
        text = "null"
    return f'{{"step":{int(step)},"timestamp":{json_text(timestamp)},"key":{json_text(key)},"value":{text}}}\n'


def part_name(start: int, end: int) -> str:
    """The part holding the lines of history points ``start`` to ``end`` (exclusive)."""
    return f"{NONNUMERIC_PARTS}/{start:012d}-{end:012d}.jsonl"


def part_span(path: str) -> tuple[int, int] | None:
    start, _, end = path.rsplit("/", 1)[-1].removesuffix(".jsonl").partition("-")
    return (int(start), int(end)) if start.isdigit() and end.isdigit() else None


def covers(spans: list[tuple[int, int]], total: int) -> bool:
    """Whether sorted ``spans`` tile ``[0, total)`` exactly: every chunk's part is there."""
    position = 0
    for start, end in spans:
        if start != position:
            return False
        position = end
    return position == total


class MetricNames:
    """Per-run cache of history key -> MLflow metric name, reporting each rename once."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._names: dict[str, str | None] = {}
        self.seen: set[str] = set()

    def __call__(self, key: str) -> str | None:
        """The metric name of ``key``, or None when MLflow cannot hold it (too long)."""
        try:
            return self._names[key]
        except KeyError:
            pass
        name: str | None = mlflow_name(key)
        if name is not None and len(name) > MAX_KEY_LENGTH:
            name = None
        elif name != key:
            self._emit("metric_renamed", key=key, mlflow_key=name)
        self._names[key] = name
        self.seen.add(key)
        return name


def split_points(
    names: MetricNames,
    rows: Iterable[tuple[str, int, float, float | None, str | None]],
    metric: Callable[[str, int, float, float], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """History rows -> (MLflow metric entries, side-file lines) in history order."""
    metrics: list[dict[str, Any]] = []
    lines: list[str] = []
    for key, step, ts, value, value_json in rows:
        name = names(key)
        if value is None or name is None:
            lines.append(nonnumeric_line(key, step, ts, value, value_json))
        else:
            metrics.append(metric(name, step, ts, value))
    return metrics, lines


def summary_points(record: RunRecord, history_keys: set[str] | None, emit: Emit) -> Iterator[tuple[str, int, float, float]]:
    """``(key, step, timestamp, value)`` for numbers set directly in the summary."""
    summary = record.summary
    candidates = [
        k for k, v in summary.items()
        if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]  # fmt: skip
    if not candidates:
        return
    if history_keys is None:
        emit("summary_metrics_skipped", n=len(candidates), reason="history keys unknown after resume")
        return
    step = summary.get("_step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else 0
    ts = summary.get("_timestamp")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        ts = record.end_time if record.end_time is not None else (record.start_time or 0.0)
    for key in candidates:
        if key not in history_keys:
            yield key, step, float(ts), float(summary[key])
