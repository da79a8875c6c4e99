"""Packing params, tags and metric points into ``runs/log-batch`` requests within every limit.

Pure functions, so the limits are tested table-driven without a server: at most 1000 metrics,
100 params, 100 tags and 1000 entities per request, and a JSON body under 1 MB. Values longer
than the server keeps (params 6000, tags 8000 characters) are cut here, and the caller counts
each cut, instead of the server cutting them silently; keys longer than 250 characters cannot
be stored at all and are returned separately so the caller can report them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapters.mlflow._config import (
    MAX_BATCH_BYTES,
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_ENTRY_OVERHEAD = 32  # braces, quotes, field names of one {"key":..,"value":..}


@dataclass
class Packed:
    """What packing did besides producing bodies: cut values and keys that cannot be stored."""

    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def clean_entries(
    items: Iterable[tuple[str, str]], *, max_value: int, packed: Packed
) -> list[dict[str, str]]:
    """``(key, value)`` pairs as log-batch entries: over-long keys dropped, values cut."""
    entries = []
    for key, value in items:
        if len(key) > MAX_KEY_LENGTH:
            packed.dropped.append(key)
            continue
        if len(value) > max_value:
            packed.truncated.append(key)
            value = value[:max_value]
        entries.append({"key": key, "value": value})
    return entries


def _entry_size(entry: dict[str, Any]) -> int:
    return len(orjson.dumps(entry)) + 1


def pack_params_and_tags(
    params: list[dict[str, str]], tags: list[dict[str, str]]
) -> Iterator[dict[str, list[dict[str, str]]]]:
    """Bodies (without ``run_id``) holding every param and tag, each within the limits."""
    params_left, tags_left = list(params), list(tags)
    while params_left or tags_left:
        body: dict[str, list[dict[str, str]]] = {"params": [], "tags": []}
        size = 64
        for name, left in (("params", params_left), ("tags", tags_left)):
            bucket = body[name]
            while left and len(bucket) < MAX_PARAMS_TAGS_PER_BATCH:
                entry_size = _entry_size(left[0])
                empty = not (body["params"] or body["tags"])
                if not empty and size + entry_size > MAX_BATCH_BYTES:
                    break
                bucket.append(left.pop(0))
                size += entry_size
        yield {k: v for k, v in body.items() if v}


def pack_metrics(metrics: list[dict[str, Any]], *, key_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Slices of at most 1000 metric entries whose JSON stays under the body cap.

    ``key_bytes`` is the longest key's encoded length, so the size bound needs no per-entry
    encoding: an entry is at most key + 24 (value) + 20 (timestamp) + 20 (step) + overhead.
    """
    per_entry = key_bytes + 24 + 20 + 20 + _ENTRY_OVERHEAD + 16
    per_request = max(1, min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH, (MAX_BATCH_BYTES - 64) // per_entry))
    for i in range(0, len(metrics), per_request):
        yield metrics[i : i + per_request]
