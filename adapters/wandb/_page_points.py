"""One page of W&B history rows (or system-metrics lines) as long points, column by column.

Why: a W&B export or migration is bound by the reader's CPU, and turning every row into points
one Python call at a time cost about 2 us a point. Here a page is converted a key at a time:
one list comprehension per key gathers its values, floats (the common case) go into numpy as a
block, and the long layout (row-major, keys sorted within a row) comes from one ``flatnonzero``
over a rows x keys presence mask. Only values that are not floats (ints, text, media) pass
through ``split_value`` one by one. Pages whose rows share few keys (very wide, sparse logging)
would make that mask much bigger than the points, so they take the row-at-a-time path.

Both paths give the same points (the conventions are in ``_history_read``'s docstring).
``assemble`` (key-major parts -> row-major points) also serves parquet exports
(``_history_exports``), whose columns arrive typed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from core.model import history_batch

Compact = tuple[np.ndarray, "np.ndarray | None", "pa.Array | None"]
"""One key's values for the rows that have it: floats (0.0 where none), which of them are
numbers (None: all), and their ``value_json`` texts (None: none)."""

INTERNAL_KEYS = frozenset({"_step", "_timestamp", "_runtime"})
"""Row keys that are not points: the step, the timestamp, and ``_runtime`` (recomputed)."""

_MISSING = object()  # a key the row does not have
_MissingType = type(_MISSING)
_DENSE_SLACK = 4  # the column path while rows x keys <= 4 x points (+ a small constant)


def loads(text: str | bytes) -> Any:
    """One JSON document as W&B writes it: orjson when it can, the standard parser for the
    SDK's bare ``NaN``/``Infinity`` tokens and integers beyond 64 bits (both keep floats
    bit-exact and integers as integers)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def value_json(value: Any) -> str:
    """Compact JSON text of a non-float value, as the SDK would read it back."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def split_value(value: Any) -> tuple[float | None, str | None]:
    """``(value, value_json)`` of one history value (see ``_history_read``)."""
    if isinstance(value, float):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value), str(value)
        except OverflowError:  # beyond float range: the exact text only
            return None, str(value)
    return None, value_json(value)


def step_order(steps: np.ndarray) -> np.ndarray | None:
    """The stable order that sorts rows by step, or None when they already are."""
    if steps.size > 1 and bool(np.any(steps[1:] < steps[:-1])):
        return np.argsort(steps, kind="stable")
    return None


def page_batch(
    rows: Sequence[dict[str, Any]],
    steps: np.ndarray,
    times: np.ndarray,
    point_key: Callable[[str], str | None],
) -> pa.RecordBatch | None:
    """The points of ``rows`` (``steps[i]``/``times[i]`` for row i), or None when there are none.

    ``point_key`` names a row key's point (None: not a point); point keys sort as row keys do."""
    columns = sorted((point, key) for key in set().union(*rows) if (point := point_key(key)))
    if not columns:
        return None
    if len(rows) * len(columns) > _DENSE_SLACK * sum(map(len, rows)) + 4096:
        return _by_rows(rows, steps, times, columns)
    return _by_columns(rows, steps, times, columns)


def _by_columns(rows: Sequence[dict[str, Any]], steps: np.ndarray, times: np.ndarray,
                columns: list[tuple[str, str]]) -> pa.RecordBatch | None:
    n, width = len(rows), len(columns)
    present = np.ones((width, n), dtype=bool)
    compact: list[Compact] = []
    for j, (_, key) in enumerate(columns):
        try:
            column = [row[key] for row in rows]
        except KeyError:
            column = [row.get(key, _MISSING) for row in rows]
            present[j] = np.fromiter((v is not _MISSING for v in column), dtype=bool, count=n)
            column = [v for v in column if v is not _MISSING]
        compact.append(_column(column))
    return assemble([point for point, _ in columns], present, compact, steps, times)


def assemble(point_keys: list[str], present: np.ndarray, compact: list[Compact], steps: np.ndarray,
             times: np.ndarray) -> pa.RecordBatch | None:
    """Row-major points from key-major parts: ``present[j, i]`` says row i has key j, and
    ``compact[j]`` holds key j's values for those rows only, in row order."""
    width = len(point_keys)
    rank = np.cumsum(present, axis=1) - 1  # a present cell's place among its key's values
    starts = np.concatenate(([0], np.cumsum(rank[:, -1] + 1)[:-1]))
    row_of, key_of = np.divmod(np.flatnonzero(present.T), width)
    if row_of.size == 0:
        return None
    at = starts[key_of] + rank[key_of, row_of]
    keys = pc.take(pa.array(point_keys, pa.string()), pa.array(key_of))
    mask = None
    if any(ok is not None for _, ok, _ in compact):
        numbered = [np.ones(len(v), dtype=bool) if ok is None else ok for v, ok, _ in compact]
        mask = ~np.concatenate(numbered)[at]
    value_array = pa.array(np.concatenate([v for v, _, _ in compact])[at], pa.float64(), mask=mask)
    text_array = None
    if any(t is not None for _, _, t in compact):
        parts = [pa.nulls(len(v), pa.string()) if t is None else t for v, _, t in compact]
        text_array = pc.take(pa.concat_arrays(parts), pa.array(at))
    return history_batch(keys, steps[row_of], times[row_of], value_array, text_array)


def _column(column: list[Any]) -> Compact:
    """One key's values (Python objects) as a ``Compact``."""
    kinds = set(map(type, column))
    if kinds <= {float}:
        return np.array(column, dtype=np.float64), None, None
    if kinds == {int}:  # counters, epochs: their float and their exact text, in bulk
        try:
            return np.array(column, dtype=np.float64), None, pa.array(column, pa.int64()).cast(pa.string())
        except (OverflowError, pa.ArrowInvalid):  # beyond 64 bits: one at a time below
            pass
    return split_values(column)


def split_values(values: Iterable[Any]) -> Compact:
    """Values of any kind, one ``split_value`` at a time, as a ``Compact``."""
    pairs = list(map(split_value, values))
    floats = np.array([0.0 if v is None else v for v, _ in pairs], dtype=np.float64)
    numbered = np.array([v is not None for v, _ in pairs], dtype=bool)
    return floats, numbered, pa.array([t for _, t in pairs], pa.string())


def _by_rows(rows: Sequence[dict[str, Any]], steps: np.ndarray, times: np.ndarray,
             columns: list[tuple[str, str]]) -> pa.RecordBatch | None:
    point_of = {key: point for point, key in columns}
    keys: list[str] = []
    values: list[float | None] = []
    texts: list[str | None] = []
    sizes = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        here = sorted((point_of[key], value) for key, value in row.items() if key in point_of)
        sizes[i] = len(here)
        for point, value in here:
            number, text = split_value(value)
            keys.append(point)
            values.append(number)
            texts.append(text)
    if not keys:
        return None
    return history_batch(keys, np.repeat(steps, sizes), np.repeat(times, sizes), values, texts)
