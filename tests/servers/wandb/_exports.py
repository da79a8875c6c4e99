"""Parquet history exports, the "parquet history path" of ``parquetHistory(liveKeys)``.

Why: W&B's backend exports finished history to parquet and wandb-core (>= 0.23) reads those
files, asking GraphQL only for the live tail. Exporting here lets that path, and any
runferry reader of it, be tested. Columns are typed as wandb-core's reader expects them: a key
whose values are all integers is int64 (``_step`` always), all numbers float64, all booleans
bool, all strings string, all objects or all lists Arrow structs and lists (as pyarrow infers
them); a key whose values mix kinds is written as JSON text (how W&B's backend stores those is
not documented). A key missing from a row, or logged as null, is null. Rows are written in row
groups (streamed, never the whole history in one table).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ._state import Blob, Run, ServerState

ROW_GROUP = 10_000


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "float"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "struct"
    return "list" if isinstance(value, list) else "json"


_SCALARS = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}


def _column_types(run: Run, upto: int) -> dict[str, pa.DataType | None]:
    kinds: dict[str, set[str]] = {}
    objects: dict[str, list] = {}
    for line in run.history[:upto]:
        if line is None:
            continue
        for key, value in json.loads(line).items():
            if value is None:
                kinds.setdefault(key, set())
                continue
            kind = _kind(value)
            kinds.setdefault(key, set()).add(kind)
            if kind in ("struct", "list"):
                objects.setdefault(key, []).append(value)
    types: dict[str, pa.DataType | None] = {}
    for key, found in kinds.items():
        if key == "_step":
            types[key] = pa.int64()
        elif found <= {"int", "float"} and found:
            types[key] = _SCALARS["float" if "float" in found else "int"]
        elif len(found) == 1 and next(iter(found)) in _SCALARS:
            types[key] = _SCALARS[next(iter(found))]
        elif found in ({"struct"}, {"list"}):
            try:
                types[key] = pa.array(objects[key]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                types[key] = None
        else:
            types[key] = None  # JSON text
    return types


_JSON_TEXT = pa.string()
_JSON_FIELD = {b"encoding": b"json"}  # which string columns hold JSON text (mixed kinds)


def _cell(value, field: pa.Field):
    if value is None:
        return None
    kind = field.type
    if field.metadata == _JSON_FIELD:
        return json.dumps(value)
    if kind == pa.int64():
        return int(value)
    if kind == pa.float64():
        return float(value)
    return value


def _batches(run: Run, upto: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    buffer: list[dict] = []
    for line in run.history[:upto]:
        if line is None:
            continue
        buffer.append(json.loads(line))
        if len(buffer) >= ROW_GROUP:
            yield _batch(buffer, schema)
            buffer = []
    if buffer:
        yield _batch(buffer, schema)


def _batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    arrays = [pa.array([_cell(row.get(field.name), field) for row in rows], type=field.type) for field in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def export_history(state: ServerState, run: Run) -> str | None:
    """Export every current history line of ``run`` to one parquet blob; returns its key."""
    with state.lock:
        upto = len(run.history)
        if upto == 0 or upto == run.exported_lines:
            return None
        types = _column_types(run, upto)
        schema = pa.schema([
            pa.field(k, _JSON_TEXT, metadata=_JSON_FIELD) if t is None else pa.field(k, t)
            for k, t in sorted(types.items(), key=lambda kv: kv[0] != "_step")
        ])
        key = f"history-exports/{run.entity}/{run.project}/{run.name}/{len(run.parquet_exports)}.parquet"
        path = state.blob_path(key)
        with pq.ParquetWriter(path, schema) as writer:
            for batch in _batches(run, upto, schema):
                writer.write_batch(batch, row_group_size=ROW_GROUP)
        md5 = hashlib.md5()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                md5.update(chunk)
                size += len(chunk)
        digest = md5.digest()
        state.blobs[key] = Blob(key, path, size, base64.b64encode(digest).decode(), digest.hex(), f'"{digest.hex()}"')
        # one file covers everything exported so far (replaces earlier partial exports)
        run.parquet_exports = [key]
        run.exported_lines = upto
        return key
