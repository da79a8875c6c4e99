"""Reports copied between projects: same title, description and spec, namespaces rewritten."""

from __future__ import annotations

import json

from adapters.wandb import _gql
from adapters.wandb._reports import UPSERT_VIEW, copy_reports, project_reports, remap_spec

from .conftest import Events, clients

SRC = ("runferry", "reports-src")
DST = ("team2", "reports-dst")


def spec_for(entity: str, project: str) -> dict:
    """A report spec shaped as wandb-workspaces writes it (one panel grid with a runset)."""
    return {
        "version": 5,
        "panelSettings": {},
        "blocks": [
            {"type": "heading", "level": 1, "children": [{"text": "Loss"}]},
            {"type": "panel-grid", "children": [{"text": ""}], "metadata": {
                "openViz": True,
                "runSets": [{"id": "rs1", "runFeed": {"version": 2, "columnVisible": {"run:name": False}},
                             "project": {"entityName": entity, "name": project},
                             "filters": {"op": "OR", "filters": []}, "name": "Run set", "enabled": True}],
                "panelBankSectionConfig": {"name": "Report Panels", "panels": [
                    {"viewType": "Run History Line Plot", "config": {"metrics": ["loss"]}, "__id__": "p1"}]},
            }},
            {"type": "weave-panel", "config": {"entityName": entity, "projectName": project, "nan": "NaN"}},
        ],
        "width": "readable",
        "authors": [],
    }


def dest_project_of(path: str) -> tuple[str, str]:
    return DST if path == "/".join(SRC) else tuple(path.split("/", 1))


async def test_reports_copied_with_rewritten_namespaces(wandb_server, public_api):
    events = Events()
    async with clients(wandb_server) as (api, _):
        made = await _gql.call(api, UPSERT_VIEW, {
            "entityName": SRC[0], "projectName": SRC[1], "type": "runs", "name": "loss-report-1",
            "displayName": "Loss report", "description": "how the loss fell",
            "spec": json.dumps(spec_for(*SRC))}, name="upsertView")
        assert made["upsertView"]["inserted"] is True
        first = await copy_reports(api, api, "/".join(SRC), dest_project_of=dest_project_of, events=events)
        again = await copy_reports(api, api, "/".join(SRC), dest_project_of=dest_project_of, events=events)
        copies = [v async for v in project_reports(api, "/".join(DST))]
    assert [c["inserted"] for c in first + again] == [True, False]
    assert first[0]["id"] == again[0]["id"]
    [copy] = copies
    assert (copy["name"], copy["displayName"], copy["description"]) == ("loss-report-1", "Loss report", "how the loss fell")
    assert json.loads(copy["spec"]) == spec_for(*DST)
    [sdk_report] = public_api.reports("/".join(DST))
    assert (sdk_report.display_name, sdk_report.description) == ("Loss report", "how the loss fell")
    assert sdk_report.spec == spec_for(*DST)
    assert [e["inserted"] for e in events.named("report_copied")] == [True, False]


def test_remap_spec_leaves_other_projects_and_values_alone():
    spec = {"a": [{"project": {"entityName": "x", "name": "y", "id": 3}}], "entityName": "only-entity",
            "n": [1.5, None, "runferry"]}
    assert remap_spec(spec, lambda p: ("E", "P") if p == "x/y" else tuple(p.split("/"))) == {
        "a": [{"project": {"entityName": "E", "name": "P", "id": 3}}], "entityName": "only-entity",
        "n": [1.5, None, "runferry"]}
