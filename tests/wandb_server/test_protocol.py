"""Wire-level behaviour a real W&B server has and the SDK does not exercise on its own."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.wandb_server.conftest import OTHER_KEY
from tests.wandb_server.wire import auth, file_stream, gql, upsert_run


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


async def test_wrong_or_missing_key_is_401(session, wandb_server):
    status, body, _ = await gql(session, wandb_server, "query Viewer { viewer { username } }", key="x" * 40)
    assert status == 401
    assert body["errors"][0]["message"] == "user is not logged in"
    async with session.post(f"{wandb_server.base_url}/graphql", json={"query": "{ viewer { id } }"}) as response:
        assert response.status == 401


async def test_foreign_entity_is_403_with_permission_error_body(session, wandb_server):
    status, body, _ = await upsert_run(session, wandb_server, "r1", entity="stranger")
    assert status == 403
    assert body == {
        "errors": [{"message": "permission denied", "path": ["upsertBucket"], "extensions": {"code": "PERMISSION_ERROR"}}],
        "data": {"upsertBucket": None},
    }
    status, _, _ = await file_stream(session, wandb_server, "r1", {"files": {}}, entity="stranger")
    assert status == 403
    status, _, _ = await upsert_run(session, wandb_server, "r1", entity="stranger", key=OTHER_KEY)
    assert status == 200


async def test_viewer_lists_key_entities(session, wandb_server):
    status, body, _ = await gql(session, wandb_server, "{ viewer { entity username teams { edges { node { name } } } } }")
    assert status == 200
    viewer = body["data"]["viewer"]
    assert viewer["entity"] == "runferry"
    assert [e["node"]["name"] for e in viewer["teams"]["edges"]] == ["runferry", "team2"]


async def test_unknown_operation_is_a_loud_error(session, wandb_server):
    status, body, _ = await gql(session, wandb_server, "mutation DeleteRun { deleteRun(input: {id: \"x\"}) { clientMutationId } }")
    assert status == 400
    assert "deleteRun" in body["errors"][0]["message"] and "DeleteRun" in body["errors"][0]["message"]
    assert any("deleteRun" in op for op in wandb_server.state.unknown_operations)
    wandb_server.state.unknown_operations.clear()


async def test_upsert_inserts_once_then_updates(session, wandb_server):
    status, first, _ = await upsert_run(session, wandb_server, "upsert1")
    assert status == 200 and first["data"]["upsertBucket"]["inserted"] is True
    _, second, _ = await upsert_run(session, wandb_server, "upsert1")
    assert second["data"]["upsertBucket"]["inserted"] is False
    assert second["data"]["upsertBucket"]["bucket"]["id"] == first["data"]["upsertBucket"]["bucket"]["id"]


async def test_file_stream_offsets_overwrite_and_finish(session, wandb_server):
    await upsert_run(session, wandb_server, "fs1")
    lines = [json.dumps({"_step": i, "v": i}) for i in range(4)]
    status, _, _ = await file_stream(session, wandb_server, "fs1", {"files": {"wandb-history.jsonl": {"offset": 0, "content": lines}}})
    assert status == 200
    resent = [json.dumps({"_step": 1, "v": 10}), json.dumps({"_step": 2, "v": 20}), json.dumps({"_step": 4, "v": 40})]
    payload = {
        "files": {
            "wandb-history.jsonl": {"offset": 1, "content": resent},
            "wandb-summary.json": {"offset": 0, "content": [json.dumps({"v": 40})]},
            "output.log": {"offset": 0, "content": ["hello\n"]},
        },
        "uploaded": ["notes.txt"],
        "complete": True,
        "exitcode": 2,
    }
    status, _, _ = await file_stream(session, wandb_server, "fs1", payload)
    assert status == 200
    run = wandb_server.state.run(wandb_server.entity, "proto", "fs1")
    assert [json.loads(line)["v"] for line in run.history] == [0, 10, 20, 40]  # line 3 overwritten
    assert run.summary == {"v": 40}
    assert run.logs == ["hello\n"]
    assert run.files["notes.txt"].uploaded
    assert (run.state, run.exitcode) == ("failed", 2)
    query = "query RunResumeStatus($e: String, $p: String, $n: String!) { model(name: $p, entityName: $e) { bucket(name: $n, missingOk: true) { historyLineCount logLineCount historyTail } } }"
    _, body, _ = await gql(session, wandb_server, query, {"e": wandb_server.entity, "p": "proto", "n": "fs1"})
    bucket = body["data"]["model"]["bucket"]
    assert bucket["historyLineCount"] == 4 and bucket["logLineCount"] == 1
    assert json.loads(json.loads(bucket["historyTail"])[-1]) == {"_step": 4, "v": 40}


async def test_file_stream_accepts_gzip_bodies(session, wandb_server):
    import gzip

    await upsert_run(session, wandb_server, "gz1")
    body = json.dumps({"files": {"wandb-history.jsonl": {"offset": 0, "content": ['{"_step":0,"v":NaN}']}}}).encode()
    url = f"{wandb_server.base_url}/files/runferry/proto/gz1/file_stream"
    headers = {**auth(wandb_server.api_key), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with session.post(url, data=gzip.compress(body), headers=headers) as response:
        assert response.status == 200
    run = wandb_server.state.run(wandb_server.entity, "proto", "gz1")
    assert run.history == ['{"_step":0,"v":NaN}']


async def test_file_stream_for_missing_run_is_404(session, wandb_server):
    status, _, _ = await file_stream(session, wandb_server, "never-created", {"files": {}})
    assert status == 404


async def test_run_file_upload_and_authenticated_download(session, wandb_server):
    await upsert_run(session, wandb_server, "files1")
    mutation = """mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, $files: [String!]!) {
      createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) {
        runID uploadHeaders files { name uploadUrl } } }"""
    _, body, _ = await gql(session, wandb_server, mutation, {"entity": "runferry", "project": "proto", "run": "files1", "files": ["a/b.txt"]})
    [entry] = body["data"]["createRunFiles"]["files"]
    async with session.put(entry["uploadUrl"], data=b"payload bytes") as response:
        assert response.status == 200
    url = f"{wandb_server.base_url}/files/runferry/proto/files1/a/b.txt"
    async with session.get(url, headers=auth(wandb_server.api_key)) as response:
        assert response.status == 200 and await response.read() == b"payload bytes"
    async with session.get(url) as response:
        assert response.status == 401
    async with session.put(entry["uploadUrl"].split("?")[0], data=b"x") as response:
        assert response.status == 403  # presigned URL without its token


async def test_reports_round_trip_through_public_api(session, wandb_server, public_api):
    mutation = """mutation upsertView($entityName: String, $projectName: String, $type: String, $name: String,
        $displayName: String, $description: String, $spec: String!) {
      upsertView(input: {entityName: $entityName, projectName: $projectName, name: $name, displayName: $displayName,
        description: $description, type: $type, spec: $spec}) { view { id name } inserted } }"""
    spec = json.dumps({"version": 5, "blocks": [{"type": "paragraph", "children": [{"text": "hi"}]}]})
    variables = {"entityName": "runferry", "projectName": "reports", "type": "runs", "name": "r-1", "displayName": "My report", "description": "d", "spec": spec}
    status, body, _ = await gql(session, wandb_server, mutation, variables)
    assert status == 200 and body["data"]["upsertView"]["inserted"] is True
    query = """query ProjectViews($project: String!, $entity: String!, $reportCursor: String, $reportLimit: Int!, $viewType: String = "runs") {
      project(name: $project, entityName: $entity) { allViews(viewType: $viewType, first: $reportLimit, after: $reportCursor) {
        edges { node { id name displayName description spec user { username } } cursor } pageInfo { endCursor hasNextPage } } } }"""
    _, body, _ = await gql(session, wandb_server, query, {"project": "reports", "entity": "runferry", "reportLimit": 10})
    [edge] = body["data"]["project"]["allViews"]["edges"]
    assert edge["node"]["displayName"] == "My report" and json.loads(edge["node"]["spec"]) == json.loads(spec)


def test_reports_listed_by_public_api(wandb_server, public_api):
    reports = list(public_api.reports("runferry/reports"))
    assert [r.display_name for r in reports] == ["My report"]


async def test_scan_keeps_every_line_even_with_repeated_steps(session, wandb_server, public_api):
    await upsert_run(session, wandb_server, "dup1")
    lines = [json.dumps({"_step": s, "v": i}) for i, s in enumerate([0, 1, 1, 2])]
    status, _, _ = await file_stream(session, wandb_server, "dup1", {"files": {"wandb-history.jsonl": {"offset": 0, "content": lines}}})
    assert status == 200
    rows = list(public_api.run("runferry/proto/dup1").scan_history())
    assert [(r["_step"], r["v"]) for r in rows] == [(0, 0), (1, 1), (1, 2), (2, 3)]
