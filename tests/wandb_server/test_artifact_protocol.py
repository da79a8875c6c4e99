"""Artifact upload at the wire level: Content-MD5 checks, multipart parts/ETags, dedup, download."""

from __future__ import annotations

import base64
import hashlib
import json

import aiohttp
import pytest

from tests.wandb_server.wire import gql

CREATE = """mutation CreateArtifact($input: CreateArtifactInput!) {
  createArtifact(input: $input) { artifact { id state versionIndex artifactSequence { latestArtifact { id } } } } }"""
MANIFEST = """mutation CreateArtifactManifest($artifactID: ID!, $name: String!, $digest: String!, $entityName: String!,
  $projectName: String!, $runName: String!, $includeUpload: Boolean!) {
  createArtifactManifest(input: {artifactID: $artifactID, name: $name, digest: $digest, entityName: $entityName,
    projectName: $projectName, runName: $runName, type: FULL}) {
    artifactManifest { id file { id uploadUrl @include(if: $includeUpload) uploadHeaders @include(if: $includeUpload) } } } }"""
FILES = """mutation CreateArtifactFiles($input: CreateArtifactFilesInput!) {
  createArtifactFiles(input: $input) { files { edges { node { storagePath uploadUrl uploadHeaders
    uploadMultipartUrls { uploadID uploadUrlParts { partNumber uploadUrl } } artifact { id } } } } } }"""
COMPLETE = """mutation Complete($artifactID: ID!, $storagePath: String!, $uploadID: String!, $parts: [UploadPartsInput!]!) {
  completeMultipartUploadArtifact(input: {completeMultipartAction: Complete, completedParts: $parts,
    artifactID: $artifactID, storagePath: $storagePath, uploadID: $uploadID}) { digest } }"""
COMMIT = "mutation Commit($id: ID!) { commitArtifact(input: {artifactID: $id}) { artifact { id digest } } }"
READ = """query Files($id: ID!) { artifact(id: $id) { state versionIndex aliases { alias }
  currentManifest { file { directUrl } } files { edges { node { name directUrl sizeBytes md5 } } } } }"""

PART = 5 * 1024 * 1024


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


async def ok(session, server, query, variables):
    status, body, _ = await gql(session, server, query, variables)
    assert status == 200 and "errors" not in body, body
    return body["data"]


async def test_single_and_multipart_upload_commit_and_download(session, wandb_server):
    small = b"small file\n"
    big = bytes(range(256)) * (PART * 2 // 256) + b"tail"  # 3 parts: 5 MiB, 5 MiB, 4 bytes
    parts = [big[i : i + PART] for i in range(0, len(big), PART)]
    data = await ok(session, wandb_server, CREATE, {"input": {
        "entityName": "runferry", "projectName": "arts", "artifactTypeName": "model",
        "artifactCollectionName": "weights", "digest": "digest-1", "digestAlgorithm": "MANIFEST_MD5",
        "aliases": [{"artifactCollectionName": "weights", "alias": "prod"}]}})
    art_id = data["createArtifact"]["artifact"]["id"]
    assert data["createArtifact"]["artifact"]["state"] == "PENDING"
    manifest = await ok(session, wandb_server, MANIFEST, {"artifactID": art_id, "name": "wandb_manifest.json", "digest": "",
        "entityName": "runferry", "projectName": "arts", "runName": "", "includeUpload": False})
    assert "uploadUrl" not in manifest["createArtifactManifest"]["artifactManifest"]["file"]
    specs = [
        {"artifactID": art_id, "artifactManifestID": "m", "name": "small.txt", "md5": b64md5(small)},
        {"artifactID": art_id, "artifactManifestID": "m", "name": "big.bin", "md5": b64md5(big),
         "uploadPartsInput": [{"partNumber": i + 1, "hexMD5": hashlib.md5(p).hexdigest()} for i, p in enumerate(parts)]},
    ]
    files = await ok(session, wandb_server, FILES, {"input": {"artifactFiles": specs, "storageLayout": "V2"}})
    small_node, big_node = [e["node"] for e in files["createArtifactFiles"]["files"]["edges"]]

    async with session.put(small_node["uploadUrl"], data=small, headers={"Content-MD5": b64md5(b"other")}) as response:
        assert response.status == 400 and "<Code>BadDigest</Code>" in await response.text()
    async with session.put(small_node["uploadUrl"], data=small, headers={"Content-MD5": b64md5(small)}) as response:
        assert response.status == 200 and response.headers["ETag"] == f'"{hashlib.md5(small).hexdigest()}"'

    multipart = big_node["uploadMultipartUrls"]
    assert big_node["uploadUrl"] is None and [p["partNumber"] for p in multipart["uploadUrlParts"]] == [1, 2, 3]
    etags = []
    for part, target in zip(parts, multipart["uploadUrlParts"]):
        async with session.put(target["uploadUrl"], data=part, headers={"Content-MD5": b64md5(part)}) as response:
            assert response.status == 200
            etags.append(response.headers["ETag"])
    assert etags == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]
    complete = {"artifactID": art_id, "storagePath": big_node["storagePath"], "uploadID": multipart["uploadID"]}
    status, body, _ = await gql(session, wandb_server, COMPLETE, {**complete, "parts": [{"partNumber": 1, "hexMD5": "bad"}]})
    assert "ETag mismatch" in body["errors"][0]["message"]
    done = await ok(session, wandb_server, COMPLETE, {**complete, "parts": [{"partNumber": i + 1, "hexMD5": e} for i, e in enumerate(etags)]})
    assert done["completeMultipartUploadArtifact"]["digest"] == b64md5(big)

    contents = {"small.txt": {"digest": b64md5(small), "size": len(small)}, "big.bin": {"digest": b64md5(big), "size": len(big)}}
    manifest_bytes = json.dumps({"version": 1, "storagePolicy": "wandb-storage-policy-v1",
                                 "storagePolicyConfig": {"storageLayout": "V2"}, "contents": contents}, indent=4).encode()
    upload = await ok(session, wandb_server, MANIFEST, {"artifactID": art_id, "name": "wandb_manifest.json",
        "digest": b64md5(manifest_bytes), "entityName": "runferry", "projectName": "arts", "runName": "", "includeUpload": True})
    async with session.put(upload["createArtifactManifest"]["artifactManifest"]["file"]["uploadUrl"], data=manifest_bytes) as response:
        assert response.status == 200
    await ok(session, wandb_server, COMMIT, {"id": art_id})

    read = (await ok(session, wandb_server, READ, {"id": art_id}))["artifact"]
    assert (read["state"], read["versionIndex"]) == ("COMMITTED", 0)
    assert sorted(a["alias"] for a in read["aliases"]) == ["latest", "prod"]
    got = {}
    for edge in read["files"]["edges"]:
        async with session.get(edge["node"]["directUrl"]) as response:
            got[edge["node"]["name"]] = await response.read()
        assert edge["node"]["md5"] == b64md5(got[edge["node"]["name"]])
    assert got == {"small.txt": small, "big.bin": big}
    async with session.get(read["currentManifest"]["file"]["directUrl"]) as response:
        assert await response.read() == manifest_bytes
    async with session.get(read["files"]["edges"][0]["node"]["directUrl"], headers={"Range": "bytes=0-3"}) as response:
        assert response.status == 206 and len(await response.read()) == 4

    again = await ok(session, wandb_server, CREATE, {"input": {"entityName": "runferry", "projectName": "arts",
        "artifactTypeName": "model", "artifactCollectionName": "weights", "digest": "digest-1"}})
    assert again["createArtifact"]["artifact"] == {**again["createArtifact"]["artifact"], "id": art_id, "state": "COMMITTED"}
    second = await ok(session, wandb_server, CREATE, {"input": {"entityName": "runferry", "projectName": "arts",
        "artifactTypeName": "model", "artifactCollectionName": "weights", "digest": "digest-2"}})
    second_id = second["createArtifact"]["artifact"]["id"]
    assert second["createArtifact"]["artifact"]["artifactSequence"]["latestArtifact"]["id"] == art_id
    dedup = await ok(session, wandb_server, FILES, {"input": {"artifactFiles": [
        {"artifactID": second_id, "artifactManifestID": "m", "name": "copy.txt", "md5": b64md5(small)}], "storageLayout": "V2"}})
    assert dedup["createArtifactFiles"]["files"]["edges"][0]["node"]["uploadUrl"] is None  # already stored
