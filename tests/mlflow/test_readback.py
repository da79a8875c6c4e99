"""Reading a W&B-shaped MLflow run back: each ``history_nonnumeric.jsonl`` line gives back the
point it was written from, its value's JSON text byte for byte (pure: no server)."""

from __future__ import annotations

import pytest

from adapters.mlflow._readback import nonnumeric_point
from adapters.mlflow._wandb import nonnumeric_line

POINTS = [
    ("media/img", 3, 1700000000.123456, None, '{"_type":"image-file","path":"media/a.png","sha256":"x"}'),
    ('odd,"value":key', 0, 1.5, None, '"text with ,\\"value\\": inside"'),
    ("flag", 7, 1700000001.0, None, "true"),
    ("nothing", 8, 1700000002.0, None, "null"),
    ("list", 9, 1700000003.25, None, '[1,2.5,"x",{"value":3}]'),
    ("k" * 300, 10, 1700000004.0, 0.25, None),  # a number whose key MLflow cannot hold
    ("k" * 300, 11, 1700000005.0, 12.0, "12"),  # an integer beside its float
    ("ünïcode/ключ", 12, 1700000006.5, None, '"ß"'),
]


@pytest.mark.parametrize("point", POINTS, ids=range(len(POINTS)))
def test_a_line_reads_back_as_its_point(point: tuple) -> None:  # type: ignore[type-arg]
    assert nonnumeric_point(nonnumeric_line(*point)) == point
