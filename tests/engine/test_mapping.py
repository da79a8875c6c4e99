"""[[remap]] rules: exact, wildcard, first match wins, source namespace remembered."""

from __future__ import annotations

import pytest

from engine.config import Remap
from engine.mapping import apply_remap, remap_namespace
from core.model import Namespace, RunRecord, RunRef

RULES = (
    Remap(source="old-team/old-project", target="new-team/new-project"),
    Remap(source="old-team/*", target="new-team/*"),
    Remap(source="*/scratch", target="archive/scratch-all"),
)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (Namespace("old-team", "old-project"), Namespace("new-team", "new-project")),
        (Namespace("old-team", "other"), Namespace("new-team", "other")),
        (Namespace("someone", "scratch"), Namespace("archive", "scratch-all")),
        (Namespace("someone", "kept"), Namespace("someone", "kept")),
    ],
)
def test_rules(before: Namespace, after: Namespace) -> None:
    assert remap_namespace(before, RULES) == after


def test_apply_remap_keeps_the_source_namespace() -> None:
    record = RunRecord(ref=RunRef(id="r1", namespace=Namespace("old-team", "x")))
    out = apply_remap(record, RULES)
    assert out.ref.namespace == Namespace("new-team", "x")
    assert out.ref.id == "r1"
    assert out.system["source_namespace"] == "old-team/x"
    untouched = RunRecord(ref=RunRef(id="r2", namespace=Namespace("a", "b")))
    assert apply_remap(untouched, RULES).system == {}
