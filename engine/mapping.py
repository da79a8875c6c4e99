"""Namespace remapping ([[remap]]) applied between source and destination.

A remap rule ``from = "old-team/old-project"`` -> ``to = "new-team/new-project"`` moves every run
of that source namespace; ``*`` in ``from`` matches any entity or project (``"old-team/*"``), and
``*`` in ``to`` keeps the source's part. The first matching rule wins. The source namespace is
kept in ``RunRecord.system["source_namespace"]``.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from engine.config import Remap
from core.model import Namespace, RunRecord


def remap_namespace(namespace: Namespace, rules: tuple[Remap, ...]) -> Namespace:
    for rule in rules:
        src_entity, _, src_project = rule.source.partition("/")
        if fnmatch.fnmatchcase(namespace.entity, src_entity) and fnmatch.fnmatchcase(namespace.project, src_project):
            dst_entity, _, dst_project = rule.target.partition("/")
            return Namespace(
                entity=namespace.entity if dst_entity == "*" else dst_entity,
                project=namespace.project if dst_project == "*" else dst_project,
            )
    return namespace


def apply_remap(record: RunRecord, rules: tuple[Remap, ...]) -> RunRecord:
    target = remap_namespace(record.ref.namespace, rules)
    if target == record.ref.namespace:
        return record
    record.system.setdefault("source_namespace", str(record.ref.namespace))  # provenance, as copied
    if record.source_namespace is None:
        record.source_namespace = str(record.ref.namespace)
    record.ref = dataclasses.replace(record.ref, namespace=target)
    return record
