"""W&B reports (saved views of type ``runs``): read from one project, written to another.

Why: reports are how teams read their runs; a W&B -> W&B migration that leaves them behind, or
copies them still pointing at the old entity/project (as W&B's importer did: it remapped only
the view's own project), leaves dashboards that show nothing. ``copy_reports`` rewrites every
namespace reference of the spec (runsets' ``project: {entityName, name}`` and any object with
``entityName`` + ``projectName``) through the same mapping as the runs, and upserts the view
by name, so running it again updates the same report instead of adding a copy.
Reads follow ``ProjectViews`` (wandb-protocol.md §3.6), writes ``upsertView`` (§2.7).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from adapters.http import HttpClient

from . import _gql
from ._read_artifacts import paged, split_project

VIEW_FIELDS = "id name displayName description type spec createdAt updatedAt"

PROJECT_VIEWS = """
query ProjectViews($project: String!, $entity: String!, $cursor: String, $perPage: Int,
  $viewType: String = "runs", $viewName: String) {
  project(name: $project, entityName: $entity) {
    allViews(viewType: $viewType, viewName: $viewName, first: $perPage, after: $cursor) {
      edges { node { """ + VIEW_FIELDS + """ } cursor }
      pageInfo { endCursor hasNextPage }
    }
  }
}"""

UPSERT_VIEW = """
mutation upsertView($id: ID, $entityName: String, $projectName: String, $type: String, $name: String,
  $displayName: String, $description: String, $spec: String!) {
  upsertView(input: {id: $id, entityName: $entityName, projectName: $projectName, name: $name,
    displayName: $displayName, description: $description, type: $type, createdUsing: WANDB_SDK, spec: $spec}) {
    view { id name displayName description project { name entityName } spec updatedAt }
    inserted
  }
}"""

DestProjectOf = Callable[[str], tuple[str, str]]


async def project_reports(api: HttpClient, project_path: str, *, name: str | None = None) -> AsyncGenerator[dict[str, Any], None]:
    """Every report (view of type ``runs``) of ``entity/project``, oldest first, spec as text."""
    entity, project = split_project(project_path)
    async for node in paged(api, PROJECT_VIEWS, "ProjectViews",
                            {"entity": entity, "project": project, "viewName": name}, ("project", "allViews")):
        yield node


def remap_spec(spec: Any, dest_project_of: DestProjectOf) -> Any:
    """The spec with every entity/project reference mapped (other values untouched)."""
    if isinstance(spec, list):
        return [remap_spec(item, dest_project_of) for item in spec]
    if not isinstance(spec, dict):
        return spec
    out = {key: remap_spec(value, dest_project_of) for key, value in spec.items()}
    project = out.get("project")
    if isinstance(project, dict) and isinstance(project.get("entityName"), str) and isinstance(project.get("name"), str):
        entity, name = dest_project_of(f"{project['entityName']}/{project['name']}")
        out["project"] = {**project, "entityName": entity, "name": name}
    if isinstance(out.get("entityName"), str) and isinstance(out.get("projectName"), str):
        out["entityName"], out["projectName"] = dest_project_of(f"{out['entityName']}/{out['projectName']}")
    return out


async def copy_reports(
    source_api: HttpClient, dest_api: HttpClient, source_project: str, *, dest_project_of: DestProjectOf,
    events: Callable[..., None] | None = None,
) -> list[dict[str, Any]]:
    """Copy every report of ``source_project`` to its destination project; returns the
    destination views (``{"id", "name", "inserted"}``)."""
    entity, project = dest_project_of(source_project)
    copied = []
    async for view in project_reports(source_api, source_project):
        spec = json.dumps(remap_spec(json.loads(view.get("spec") or "{}"), dest_project_of))
        existing = [v async for v in project_reports(dest_api, f"{entity}/{project}", name=view["name"])]
        answer = await _gql.call(dest_api, UPSERT_VIEW, {
            "id": existing[0]["id"] if existing else None, "entityName": entity, "projectName": project,
            "type": view.get("type") or "runs", "name": view["name"], "displayName": view.get("displayName"),
            "description": view.get("description"), "spec": spec}, name="upsertView")
        made = answer["upsertView"]
        copied.append({"id": made["view"]["id"], "name": made["view"]["name"], "inserted": bool(made["inserted"])})
        if events is not None:
            events("report_copied", report=view["name"], dest=f"{entity}/{project}", inserted=bool(made["inserted"]))
    return copied
