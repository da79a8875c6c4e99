"""The history a W&B server has already exported to parquet, read as points.

Why: W&B's backend exports a finished run's history to parquet files and wandb-core reads
those (``parquetHistory(liveKeys)``: signed URLs of the exports, and the steps not yet
exported). Reading typed columns costs the reader a fraction of decoding JSON rows, and the
server serves files instead of building pages. The rows after the exports (the live tail) are
read with ``HistoryPage`` as before, from the step after the last exported one.

Each export is downloaded to a temporary file (never held in memory), removed once read, and
read a row group slice at a time. Files are read in the order of their first ``_step`` (the
server lists them in no stable order). Columns map to points as the JSON rows do
(``_history_read``): float columns give ``value``; integer columns ``value`` and the exact
decimal ``value_json``; booleans, strings, structs and lists ``value_json`` (structs without
their null fields, as wandb-core reads them). A string column whose field metadata says
``encoding: json`` holds JSON text and is decoded first. What an export cannot say: a key
logged as null reads as missing, and a key that mixed integers and floats reads as floats.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adapters.http import HttpClient
from core.errors import FatalError

from . import _read_ops
from ._gql import call
from ._page_points import INTERNAL_KEYS, Compact, assemble, loads, split_values, step_order
from ._spool import Spooled, spool

_JSON_FIELD = {b"encoding": b"json"}


class ExportSupport:
    """Asks a server for a run's exports until it shows it has no ``parquetHistory`` (an
    older or self-hosted server): then the source stops asking (one per source). Exports are
    downloaded through ``storage``, the client that never sends W&B credentials (their URLs
    are signed)."""

    def __init__(self, storage: HttpClient) -> None:
        self.storage = storage
        self.available = True

    async def urls(self, api: HttpClient, entity: str, project: str, run: str) -> list[str]:
        """Signed URLs of the run's parquet history exports (empty when there are none)."""
        if not self.available:
            return []
        try:
            data = await call(
                api, _read_ops.RUN_PARQUET_HISTORY,
                {"entity": entity, "project": project, "runName": run, "liveKeys": ["_step"]},
                name="RunParquetHistory",
            )
        except FatalError:  # the schema has no parquetHistory: read JSON pages
            self.available = False
            return []
        found = ((data.get("project") or {}).get("run") or {}).get("parquetHistory") or {}
        return [url for url in found.get("parquetUrls") or [] if url]


async def export_batches(
    storage: HttpClient, urls: list[str], start_time: float, points_per_batch: int
) -> AsyncGenerator[tuple[pa.RecordBatch | None, int], None]:
    """Every exported row's points, a slice of rows at a time (about ``points_per_batch``
    points each), in step order, with the highest step seen so far."""
    files: list[Spooled] = []
    try:
        for url in urls:
            async with contextlib.aclosing(storage.download(url)) as pieces:
                files.append(await spool(pieces))
        opened = [await anyio.to_thread.run_sync(pq.ParquetFile, f.path) for f in files]
        last_step = -1
        for parquet in sorted(opened, key=_first_step):
            width = max(1, len(set(parquet.schema_arrow.names) - INTERNAL_KEYS))
            slices = parquet.iter_batches(batch_size=max(1, points_per_batch // width))
            while (batch := await anyio.to_thread.run_sync(next, slices, None)) is not None:
                points, top = arrow_page_batch(batch, start_time)
                last_step = max(last_step, top)
                yield points, last_step
    finally:
        for f in files:
            f.discard()


def _first_step(parquet: pq.ParquetFile) -> int:
    names = parquet.schema_arrow.names
    if "_step" not in names or parquet.metadata.num_row_groups == 0:
        return -1
    stats = parquet.metadata.row_group(0).column(names.index("_step")).statistics
    if stats is not None and stats.has_min_max:
        return int(stats.min)
    column = parquet.read_row_group(0, columns=["_step"]).column(0).drop_null()
    return int(column[0].as_py()) if len(column) else -1


def arrow_page_batch(batch: pa.RecordBatch, start_time: float) -> tuple[pa.RecordBatch | None, int]:
    """One slice of exported rows as points (rows in step order, stable), and its top step."""
    n = batch.num_rows
    names = batch.schema.names
    steps = _numbers(batch, "_step", np.int64, 0)
    times = _numbers(batch, "_timestamp", np.float64, start_time)
    top = int(steps.max()) if n else -1
    if (order := step_order(steps)) is not None:
        batch, steps, times = batch.take(pa.array(order)), steps[order], times[order]
    keys = sorted(name for name in names if name not in INTERNAL_KEYS)
    if not keys:
        return None, top
    present = np.ones((len(keys), n), dtype=bool)
    compact: list[Compact] = []
    for j, key in enumerate(keys):
        column = batch.column(key)
        if column.null_count:
            present[j] = column.is_valid().to_numpy(zero_copy_only=False)
            column = column.drop_null()
        compact.append(_compact(column, batch.schema.field(key)))
    return assemble(keys, present, compact, steps, times), top


def _numbers(batch: pa.RecordBatch, name: str, kind: Any, missing: float) -> np.ndarray:
    if name not in batch.schema.names:
        return np.full(batch.num_rows, missing, dtype=kind)
    column = batch.column(name)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return np.full(batch.num_rows, missing, dtype=kind)
    return np.asarray(column.cast(pa.from_numpy_dtype(kind)).fill_null(missing).to_numpy(zero_copy_only=False))


def _compact(column: pa.Array, field: pa.Field) -> Compact:
    """A column's non-null values as (floats, which are numbers, texts) (``_page_points``)."""
    kind = column.type
    if pa.types.is_floating(kind):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False), None, None
    if pa.types.is_integer(kind):
        floats = column.cast(pa.float64(), safe=False)  # rounded to nearest, as float(int) is
        return floats.to_numpy(zero_copy_only=False), None, column.cast(pa.string())
    values: Iterator[Any] = iter(column.to_pylist())
    if field.metadata == _JSON_FIELD and pa.types.is_string(kind):
        values = map(loads, values)
    elif pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        values = map(_without_nulls, values)
    return split_values(values)


def _without_nulls(value: Any) -> Any:
    """A struct as wandb-core reads it: fields that are null left out, at every depth."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
