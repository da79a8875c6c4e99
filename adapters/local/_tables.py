"""runs.parquet / runs.csv: one row per exported run, for pandas and polars users.

Columns: identity, state, times (epoch seconds and ISO 8601 UTC), user, labels, notes, group...
then ``config.<k>``, ``summary.<k>`` and ``tags.<k>`` (nested dicts flattened with dots), like
W&B's "export runs to CSV" recipe. Built in two streaming passes over every run.json (types,
then rows in batches), so memory does not grow with the number of runs beyond the column set.
Blocking: call through ``anyio.to_thread``.

Runs from W&B (``source_system = "wandb"``) follow W&B's documented recipe exactly: ``id`` is
the bare run id (``run.id``; ``entity``/``project`` beside it), ``created_at`` is
``run.created_at``'s text (UTC, ``2024-05-01T10:20:30``), ``tags`` the W&B tags as a JSON list,
``config.*`` leaves out keys starting with ``_`` (``_wandb``), and config and summary (the whole
``summary._json_dict``, ``_step``/``_runtime``/``_wandb`` included) are flattened as
``pd.json_normalize`` does (empty dicts leave no column). Lists are JSON text cells.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from adapters.local._arrow import record_batch
from adapters.local._layout import RUN_JSON, TMP_MARK, temp_sibling
from core.flatten import flatten_normalized

BATCH_ROWS = 1000
_INT64 = (-(2**63), 2**63 - 1)
_BASE: dict[str, pa.DataType] = {
    "id": pa.string(),
    "name": pa.string(),
    "entity": pa.string(),
    "project": pa.string(),
    "namespace": pa.string(),
    "state": pa.string(),
    "start_time": pa.float64(),
    "end_time": pa.float64(),
    "start_time_iso": pa.string(),
    "end_time_iso": pa.string(),
    "runtime_s": pa.float64(),
    "user": pa.string(),
    "labels": pa.string(),
    "notes": pa.string(),
    "group": pa.string(),
    "job_type": pa.string(),
    "git_commit": pa.string(),
    "program": pa.string(),
    "host": pa.string(),
    "parent_id": pa.string(),
    "history_points": pa.int64(),
    "file_bytes": pa.int64(),
    "path": pa.string(),
}


def run_json_paths(root: Path) -> Iterator[Path]:
    """Every runs/<entity>/<project>/<run>/run.json under ``root``, in sorted order."""
    runs = root / "runs"
    for entity in sorted_dirs(runs):
        for project in sorted_dirs(entity):
            for run in sorted_dirs(project):
                if (run / RUN_JSON).is_file():
                    yield run / RUN_JSON


def sorted_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [folder / n for n in sorted(os.listdir(folder)) if TMP_MARK not in n and (folder / n).is_dir()]


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)) or ts != ts or ts in (float("inf"), float("-inf")):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def _created_at(ts: Any) -> str | None:
    if _iso(ts) is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _wandb_columns(doc: dict[str, Any], row: dict[str, Any]) -> None:
    run_id = next((v for k, v in doc.get("source_extra") or () if k == "run_id"), None)
    if run_id:
        row["id"] = run_id
    row["created_at"] = _created_at(doc.get("start_time"))
    row["tags"] = json.dumps(doc.get("labels") or [], ensure_ascii=False)
    config = {k: v for k, v in (doc.get("config") or {}).items() if not k.startswith("_")}
    for section, values in (("config", config), ("summary", doc.get("summary") or {})):
        row.update(flatten_normalized(values, f"{section}."))


def run_row(doc: dict[str, Any], rel_dir: str) -> dict[str, Any]:
    start, end = doc.get("start_time"), doc.get("end_time")
    row: dict[str, Any] = {
        "id": doc["id"],
        "name": doc.get("display_name") or doc.get("name"),
        "entity": doc.get("entity"),
        "project": doc.get("project"),
        "namespace": f"{doc.get('entity')}/{doc.get('project')}" if doc.get("entity") else doc.get("project"),
        "state": doc.get("state"),
        "start_time": start,
        "end_time": end,
        "start_time_iso": _iso(start),
        "end_time_iso": _iso(end),
        "runtime_s": end - start if isinstance(start, (int, float)) and isinstance(end, (int, float)) else None,
        "labels": json.dumps(doc.get("labels") or [], ensure_ascii=False),
        "path": rel_dir,
    }
    for name in ("user", "notes", "group", "job_type", "git_commit", "program", "host", "parent_id",
                 "history_points", "file_bytes"):  # fmt: skip
        row[name] = doc.get(name)
    if doc.get("source_system") == "wandb":
        _wandb_columns(doc, row)
        return row
    for section in ("config", "summary", "tags"):
        for key, value in (doc.get(section) or {}).items():
            _flatten(f"{section}.{key}", value, row)
    return row


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "string"
    if isinstance(value, float):
        return "float"
    return "string"


def _join(a: str, b: str) -> str:
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if {a, b} == {"int", "float"}:
        return "float"
    return "string"


_TYPES = {"null": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}


def _cell(value: Any, kind: pa.DataType) -> Any:
    if value is None or kind != pa.string() or isinstance(value, str):
        return value
    return json.dumps(value, allow_nan=True, ensure_ascii=False, default=str)


def _load(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        doc: dict[str, Any] = json.loads(f.read())
        return doc


def write_runs_tables(root: Path, *, csv: bool) -> int:
    """(Re)build runs.parquet (and runs.csv) from every run.json; returns the row count."""
    kinds: dict[str, str] = {}
    for path in run_json_paths(root):
        for key, value in run_row(_load(path), str(path.parent.relative_to(root))).items():
            if key not in _BASE:
                kinds[key] = _join(kinds.get(key, "null"), _kind(value))
    extra = sorted(kinds)
    schema = pa.schema([pa.field(k, t) for k, t in _BASE.items()] + [pa.field(k, _TYPES[kinds[k]]) for k in extra])
    targets = [root / "runs.parquet"] + ([root / "runs.csv"] if csv else [])
    temps = [temp_sibling(t) for t in targets]
    rows = 0
    try:
        writers: list[Any] = [pq.ParquetWriter(temps[0], schema, compression="zstd")]
        if csv:
            writers.append(pacsv.CSVWriter(temps[1], schema))
        try:
            for batch in _batches(root, schema):
                rows += batch.num_rows
                for w in writers:
                    w.write_batch(batch)
        finally:
            for w in writers:
                w.close()
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    return rows


def _batches(root: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    types = {f.name: f.type for f in schema}
    pending: list[dict[str, Any]] = []
    for path in run_json_paths(root):
        row = run_row(_load(path), str(path.parent.relative_to(root)))
        pending.append({k: _cell(v, types[k]) for k, v in row.items()})
        if len(pending) >= BATCH_ROWS:
            yield record_batch(pending, schema)
            pending = []
    if pending:
        yield record_batch(pending, schema)
