"""GraphQL resolvers for artifacts (placeholder; filled in by the artifact work)."""

from __future__ import annotations


def project_fields(ctx, entity: str, project: str) -> dict:
    return {}


def run_fields(ctx, run) -> dict:
    return {}


def root_resolvers(ctx) -> dict:
    return {}


def on_blob_stored(state, blob) -> None:
    return None
