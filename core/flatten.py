"""Nested config and summary dicts as flat ``a.b.c`` columns, the way W&B users flatten them.

W&B's UI and its "export runs to CSV" recipe (``pd.json_normalize`` over ``run.config`` and
``run.summary._json_dict``) join nested dict keys with ``.``; lists stay whole values and an empty
dict leaves no column at all. The MLflow destination (params) and the local runs table both
follow this, so one W&B run reads the same in both places.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def flatten_normalized(value: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` pairs with ``pd.json_normalize``'s keys and leaves (in the dict's
    order, which pandas does not keep): dicts are walked, empty dicts vanish, everything else
    (lists included) is a leaf."""
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            yield from flatten_normalized(item, f"{name}.")
        else:
            yield name, item
