"""Small shared node shapes (project references) used by run and artifact resolvers."""

from __future__ import annotations

import zlib

from ._state import node_id


def stable_number(*parts: str) -> int:
    """A deterministic positive int id (W&B's ``internalId`` is numeric)."""
    return zlib.crc32("/".join(parts).encode()) & 0x7FFFFFFF


def project_ref(entity: str, project: str) -> dict:
    return {
        "__typename": "Project",
        "id": node_id("Project", project, entity),
        "internalId": str(stable_number(entity, project)),
        "name": project,
        "entityName": entity,
        "entity": {"id": node_id("Entity", entity), "name": entity},
    }
