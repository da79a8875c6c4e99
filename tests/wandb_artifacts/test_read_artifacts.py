"""Reading artifacts written by the official SDK, compared with what ``wandb.Api`` reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import pytest

from adapters.wandb._read_artifacts import logged_artifact_files, read_artifact_file, used_artifacts
from core.errors import NotFoundError
from core.model import ArtifactRef, FileRef

from .conftest import Events, clients
from .sdk_scripts.artifact_data import DESCRIPTIONS, FILES, METADATA


async def listed(server, dataset, run_name, events=None):
    async with clients(server, events) as (api, storage):
        return [f async for f in logged_artifact_files(api, storage, entity=dataset.entity, project=dataset.project,
                                                       run_name=run_name, events=events or Events())]


def test_sdk_wrote_without_problems(wandb_server, artifact_dataset):
    assert artifact_dataset.sdk_problems == []
    assert wandb_server.state.unknown_operations == []


async def test_logged_files_match_the_sdk_view(wandb_server, artifact_dataset, public_api):
    files = await listed(wandb_server, artifact_dataset, "logger-b")
    source = f"{artifact_dataset.entity}/{artifact_dataset.project}"
    # versions oldest first per collection, paths sorted within a version
    assert [(f.artifact.name, f.artifact.version, f.path) for f in files] == [
        (name, f"v{version}", path)
        for name, version in (("data", 1), ("data", 2), ("model", 0))
        for path in sorted(FILES[(name, version)])
    ]
    expected_aliases = {("data", 1): ("candidate",), ("data", 2): ("best",), ("model", 0): ()}
    sdk_run = public_api.run(f"{source}/logger-b")
    sdk_arts = {(a.name.split(":")[0], a.version): a for a in sdk_run.logged_artifacts()}
    assert set(sdk_arts) == {("data", "v1"), ("data", "v2"), ("model", "v0")}
    for f in files:
        art, key = f.artifact, (f.artifact.name, int(f.artifact.version[1:]))
        sdk = sdk_arts[(art.name, art.version)]
        assert art == ArtifactRef(name=key[0], type=sdk.type, version=sdk.version, aliases=expected_aliases[key],
                                  description=DESCRIPTIONS.get(key), metadata=tuple(sorted((METADATA.get(key) or {}).items())),
                                  source_project=source, digest=sdk.digest)
        assert sorted(a for a in sdk.aliases if a != "latest") == list(art.aliases)
        assert dict(art.metadata) == sdk.metadata
        entry = sdk.manifest.entries[f.path]
        content = FILES[key][f.path]
        assert (f.size, f.md5) == (entry.size, hashlib.md5(content).hexdigest()) == (len(content), f.md5)


async def test_file_bytes_equal_sdk_download(wandb_server, artifact_dataset, public_api, tmp_path):
    files = await listed(wandb_server, artifact_dataset, "logger-a")
    sdk = public_api.artifact(f"{artifact_dataset.entity}/{artifact_dataset.project}/data:v0")
    root = sdk.download(root=str(tmp_path / "sdk"), skip_cache=True)
    async with clients(wandb_server) as (api, storage):
        got = {}
        for f in files:
            got[f.path] = b"".join([p async for p in read_artifact_file(storage, api, f, chunk_size=1000)])
    on_disk = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                on_disk[os.path.relpath(path, root).replace(os.sep, "/")] = fh.read()
    assert got == on_disk == FILES[("data", 0)]
    assert got["empty.txt"] == b""


async def test_shared_file_is_stored_once(wandb_server, artifact_dataset):
    files = await listed(wandb_server, artifact_dataset, "logger-b")
    first = await listed(wandb_server, artifact_dataset, "logger-a")
    a0 = next(f for f in first if f.path == "a.txt")
    a1 = next(f for f in files if f.path == "a.txt" and f.artifact.version == "v1")
    assert a0.md5 == a1.md5
    state = wandb_server.state
    v0, v1 = state.artifacts_of_collection(artifact_dataset.entity, artifact_dataset.project, "data")[:2]
    assert v0.files["a.txt"].blob_key == v1.files["a.txt"].blob_key


async def test_expired_url_is_refreshed_once(wandb_server, artifact_dataset, monkeypatch):
    [f, *_] = await listed(wandb_server, artifact_dataset, "logger-a")
    from adapters.wandb import _read_artifacts

    real = _read_artifacts.artifact_file_url
    handed = []

    async def first_expired(api, file):
        url = await real(api, file)
        handed.append(url)
        return url.replace("token=", "token=expired") if len(handed) == 1 else url

    monkeypatch.setattr(_read_artifacts, "artifact_file_url", first_expired)
    async with clients(wandb_server) as (api, storage):
        data = b"".join([p async for p in read_artifact_file(storage, api, f)])
    assert data == FILES[("data", 0)][f.path] and len(handed) == 2


async def test_missing_member_is_not_found(wandb_server, artifact_dataset):
    [f, *_] = await listed(wandb_server, artifact_dataset, "logger-a")
    ghost = FileRef(path="ghost.txt", artifact=f.artifact)
    async with clients(wandb_server) as (api, storage):
        with pytest.raises(NotFoundError, match="ghost.txt"):
            async with contextlib.aclosing(read_artifact_file(storage, api, ghost)) as pieces:
                async for _ in pieces:
                    pass


async def test_used_artifacts_across_projects(wandb_server, artifact_dataset, public_api):
    source = f"{artifact_dataset.entity}/{artifact_dataset.project}"
    async with clients(wandb_server) as (api, _):
        used = await used_artifacts(api, entity=artifact_dataset.entity, project=artifact_dataset.other,
                                    run_name="user")
        used_b = await used_artifacts(api, entity=artifact_dataset.entity, project=artifact_dataset.project,
                                      run_name="logger-b")
    sdk = public_api.artifact(f"{source}/data:v1")
    assert used == [{"artifact": {"project": source, "name": "data", "version": "v1", "type": "dataset",
                                  "digest": sdk.digest}}]
    assert [u["artifact"]["version"] for u in used_b] == ["v0"]
    assert json.dumps(used)  # the RunRecord.inputs form is plain JSON (ledger, run.json)


async def test_history_artifacts_and_references_are_skipped(wandb_server, artifact_dataset):
    """A ``wandb-history`` version and a reference entry, made through the server state the
    way W&B's exports and ``add_reference`` leave them."""
    state = wandb_server.state
    [model] = state.artifacts_of_collection(artifact_dataset.entity, artifact_dataset.project, "model")
    events = Events()
    files = await listed(wandb_server, artifact_dataset, "logger-b", events)
    assert "weights.bin" in [f.path for f in files]
    with state.lock:
        blob = state.blob(model.manifest_blob_key)
        manifest = json.loads(blob.read_bytes())
        original = blob.path.read_bytes()
        manifest["contents"]["external.csv"] = {"digest": "etag", "ref": "s3://bucket/external.csv", "size": 3}
        blob.path.write_bytes(json.dumps(manifest).encode())
        model.type = "wandb-history"
    try:
        files = await listed(wandb_server, artifact_dataset, "logger-b", events)
        assert {f.artifact.name for f in files} == {"data"}
        model.type = "model"
        files = await listed(wandb_server, artifact_dataset, "logger-b", events)
        assert [f.path for f in files if f.artifact.name == "model"] == ["weights.bin"]
        assert events.named("artifact_reference_skipped") == [{"artifact": f"{model.entity}/{model.project}/model:v0", "n": 1}]
    finally:
        model.type = "model"
        blob.path.write_bytes(original)
