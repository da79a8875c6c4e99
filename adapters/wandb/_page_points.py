"""One page of W&B history rows (or system-metrics lines) as long points, column by column.

Why: a W&B export or migration is bound by the reader's CPU, and turning every row into points
one Python call at a time cost about 2 us a point. Here a page is converted a key at a time:
one list comprehension per key gathers its values, floats (the common case) go into numpy as a
block, and the long layout (row-major, keys sorted within a row) comes from one ``flatnonzero``
over a rows x keys presence mask. Only values that are not floats (ints, text, media) pass
through ``split_value`` one by one. Pages whose rows share few keys (very wide, sparse logging)
would make that mask much bigger than the points, so they take the row-at-a-time path.

Both paths give the same points (the conventions are in ``_history_read``'s docstring).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.model import history_batch

_MISSING = object()  # a key the row does not have
_MissingType = type(_MISSING)
_DENSE_SLACK = 4  # the column path while rows x keys <= 4 x points (+ a small constant)


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
    # Each key's values are gathered compactly (only the rows that have it), key after key;
    # the row-major output then takes from that layout through one index array.
    n, width = len(rows), len(columns)
    present = np.ones((width, n), dtype=bool)
    values: list[np.ndarray] = []
    valid: list[np.ndarray | None] = []
    texts: list[pa.Array | None] = []
    for j, (_, key) in enumerate(columns):
        try:
            column = [row[key] for row in rows]
        except KeyError:
            column = [row.get(key, _MISSING) for row in rows]
            present[j] = np.fromiter((v is not _MISSING for v in column), dtype=bool, count=n)
            column = [v for v in column if v is not _MISSING]
        number, ok, text = _column(column)
        values.append(number)
        valid.append(ok)
        texts.append(text)
    rank = np.cumsum(present, axis=1) - 1  # a present cell's place among its key's values
    counts = rank[:, -1] + 1
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    row_of, key_of = np.divmod(np.flatnonzero(present.T), width)
    if row_of.size == 0:
        return None
    at = starts[key_of] + rank[key_of, row_of]
    keys = pc.take(pa.array([point for point, _ in columns], pa.string()), pa.array(key_of))
    mask = None
    if any(ok is not None for ok in valid):
        mask = ~np.concatenate([np.ones(len(v), dtype=bool) if ok is None else ok for v, ok in zip(values, valid, strict=True)])[at]
    value_array = pa.array(np.concatenate(values)[at], pa.float64(), mask=mask)
    text_array = None
    if any(t is not None for t in texts):
        parts = [pa.nulls(len(v), pa.string()) if t is None else t for v, t in zip(values, texts, strict=True)]
        text_array = pc.take(pa.concat_arrays(parts), pa.array(at))
    return history_batch(keys, steps[row_of], times[row_of], value_array, text_array)


def _column(column: list[Any]) -> tuple[np.ndarray, np.ndarray | None, pa.Array | None]:
    """One key's values as (floats, which are numbers (None: all), texts (None: none))."""
    kinds = set(map(type, column))
    if kinds <= {float}:
        return np.array(column, dtype=np.float64), None, None
    if kinds == {int}:  # counters, epochs: their float and their exact text, in bulk
        try:
            return np.array(column, dtype=np.float64), None, pa.array(column, pa.int64()).cast(pa.string())
        except (OverflowError, pa.ArrowInvalid):  # beyond 64 bits: one at a time below
            pass
    numbers, strings = zip(*map(split_value, column), strict=True)
    floats = np.array([0.0 if v is None else v for v in numbers], dtype=np.float64)
    return floats, np.array([v is not None for v in numbers], dtype=bool), pa.array(strings, pa.string())


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
