"""MongoDB-style run filters and ``order`` strings, as the W&B ``Runs`` query accepts them.

Why: ``api.runs(path, filters=..., order=...)`` is pushed down to the server; runferry's W&B
source relies on the same semantics, so they live in one small, testable module.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from ._state import Run

_MISSING = object()

_ALIASES = {
    "name": "name",
    "id": "name",
    "displayName": "display_name",
    "display_name": "display_name",
    "state": "state",
    "tags": "tags",
    "createdAt": "created_at",
    "created_at": "created_at",
    "heartbeatAt": "heartbeat_at",
    "heartbeat_at": "heartbeat_at",
    "group": "group",
    "jobType": "job_type",
    "job_type": "job_type",
    "notes": "notes",
    "sweep": "sweep",
    "host": "host",
}


def field_value(run: Run, path: str) -> Any:
    """The value a filter/order path names, or ``_MISSING``."""
    if path in _ALIASES:
        return getattr(run, _ALIASES[path])
    head, _, rest = path.partition(".")
    if head == "config":
        rest = rest[: -len(".value")] if rest.endswith(".value") else rest
        return _dig(run.config_values(), rest)
    if head in ("summary_metrics", "summaryMetrics", "summary"):
        return _dig(run.summary, rest)
    return _MISSING


def _dig(value: Any, dotted: str) -> Any:
    if not dotted:
        return _MISSING
    if isinstance(value, dict) and dotted in value:  # keys may themselves contain dots
        return value[dotted]
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _as_comparable(value: Any, operand: Any) -> tuple[Any, Any]:
    if isinstance(value, dt.datetime) and isinstance(operand, str):
        parsed = dt.datetime.fromisoformat(operand.replace("Z", "+00:00"))
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value, parsed
    return value, operand


def _compare(value: Any, operand: Any, op: str) -> bool:
    if value is _MISSING or value is None:
        return False
    value, operand = _as_comparable(value, operand)
    try:
        if op == "$gt":
            return value > operand
        if op == "$gte":
            return value >= operand
        if op == "$lt":
            return value < operand
        return value <= operand
    except TypeError:
        return False


def _equals(value: Any, operand: Any) -> bool:
    if isinstance(value, list) and not isinstance(operand, list):
        return operand in value
    value, operand = _as_comparable(value, operand)
    return value == operand


def _match_condition(value: Any, condition: Any) -> bool:
    if not (isinstance(condition, dict) and any(k.startswith("$") for k in condition)):
        return value is not _MISSING and _equals(value, condition)
    for op, operand in condition.items():
        if op == "$eq":
            ok = value is not _MISSING and _equals(value, operand)
        elif op == "$ne":
            ok = value is _MISSING or not _equals(value, operand)
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            ok = _compare(value, operand, op)
        elif op == "$in":
            ok = value is not _MISSING and any(_equals(value, o) for o in operand)
        elif op == "$nin":
            ok = value is _MISSING or not any(_equals(value, o) for o in operand)
        elif op == "$regex":
            candidates = value if isinstance(value, list) else [value]
            ok = any(isinstance(c, str) and re.search(operand, c) for c in candidates)
        elif op == "$exists":
            ok = (value is not _MISSING and value is not None) == bool(operand)
        elif op == "$not":
            ok = not _match_condition(value, operand)
        else:
            raise ValueError(f"unsupported filter operator {op!r}")
        if not ok:
            return False
    return True


def matches_filters(run: Run, filters: dict | None) -> bool:
    """True when ``run`` satisfies the MongoDB-style ``filters`` document."""
    for key, condition in (filters or {}).items():
        if key == "$and":
            ok = all(matches_filters(run, sub) for sub in condition)
        elif key == "$or":
            ok = any(matches_filters(run, sub) for sub in condition)
        elif key == "$nor":
            ok = not any(matches_filters(run, sub) for sub in condition)
        else:
            ok = _match_condition(field_value(run, key), condition)
        if not ok:
            return False
    return True


def _rank(value: Any) -> tuple:
    if value is _MISSING or value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (2, -math.inf if math.isnan(value) else value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, dt.datetime):
        return (4, value)
    return (5, repr(value))


def order_key(run: Run, order: str) -> tuple:
    """Sort key for ``order`` such as ``+created_at`` or ``-summary_metrics.loss``.

    Ties fall back to creation order, so paging is stable.
    """
    path = order.lstrip("+-")
    if path in ("created_at", "createdAt"):
        return (_rank(run.created_at), run.seq)
    return (_rank(field_value(run, path)), run.seq)
