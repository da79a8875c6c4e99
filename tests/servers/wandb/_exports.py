"""Parquet history exports, the "parquet history path" of ``parquetHistory(liveKeys)``.

Why: W&B's backend exports finished history to parquet and wandb-core (>= 0.23) reads those
files, asking GraphQL only for the live tail. Exporting here lets that path, and any
runferry reader of it, be tested. Numbers become float64 columns (``_step`` int64); other
values are JSON text; a key missing from a row is null. Rows are written in row groups
(streamed, never the whole history in one table).
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


def _column_types(run: Run, upto: int) -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {}
    for line in run.history[:upto]:
        if line is None:
            continue
        for key, value in json.loads(line).items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            current = types.get(key)
            if key == "_step":
                types[key] = pa.int64()
            elif current is None:
                types[key] = pa.float64() if numeric else pa.string()
            elif current == pa.float64() and not numeric:
                types[key] = pa.string()
    return types


def _cell(value, kind: pa.DataType):
    if value is None:
        return None
    if kind == pa.int64():
        return int(value)
    if kind == pa.float64():
        return float(value)
    return json.dumps(value)  # non-numeric values (and mixed columns) as JSON text


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
    arrays = [
        pa.array([_cell(row.get(field.name), field.type) for row in rows], type=field.type)
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def export_history(state: ServerState, run: Run) -> str | None:
    """Export every current history line of ``run`` to one parquet blob; returns its key."""
    with state.lock:
        upto = len(run.history)
        if upto == 0 or upto == run.exported_lines:
            return None
        types = _column_types(run, upto)
        schema = pa.schema([pa.field(k, t) for k, t in sorted(types.items(), key=lambda kv: kv[0] != "_step")])
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
