"""W&B -> W&B artifact copies through the W&B destination: same versions (digests, aliases,
description, metadata) in source order across concurrent runs, lineage, whole collections."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from core.protocols import AdapterContext
from adapters.wandb import WandbDestination, WandbDestinationConfig
from adapters.wandb._artifact_copy import (
    PLACEHOLDER_DESCRIPTION,
    PLACEHOLDER_RUN,
    ArtifactFetcher,
    import_artifact_sequences,
)
from adapters.wandb._read_artifacts import logged_artifact_files, read_artifact_file, used_artifacts
from core.model import Namespace, RunRecord, RunRef

from .conftest import Events, clients

KEY_ENV = "RUNFERRY_TEST_WANDB_ARTIFACTS_KEY"
DEST = "team2"


@pytest.fixture
def destination(wandb_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, wandb_server.api_key)

    def make(template: str, events: Events) -> WandbDestination:
        config = WandbDestinationConfig(base_url=wandb_server.base_url, api_key_env=KEY_ENV, entity=DEST,
                                        project=template, filestream_rate=1000.0)
        return WandbDestination(config, AdapterContext(events=events, source_uri="test://src"))

    return make


async def source_record(api, entity: str, project: str, run: str) -> RunRecord:
    inputs = await used_artifacts(api, entity=entity, project=project, run_name=run)
    return RunRecord(ref=RunRef(id=f"{entity}/{project}/{run}", namespace=Namespace(entity, project),
                                extra=(("run_id", run),)), inputs=inputs, source_system="wandb")


async def open_and_write(dest, api, storage, entity, project, run):
    record = await source_record(api, entity, project, run)
    writer = await dest.open_run(record, None)
    async for file in logged_artifact_files(api, storage, entity=entity, project=project, run_name=run):
        await writer.write_file(file, read_artifact_file(storage, api, file))
    await writer.flush_history()
    return writer, record


def versions(public_api, path: str, name: str, type_: str):
    return {a.version: a for a in public_api.artifact_collection(type_, f"{path}/{name}").artifacts()}


def same_version(copy, original) -> None:
    assert (copy.digest, copy.type, copy.description, copy.metadata) == (
        original.digest, original.type, original.description, original.metadata)
    assert sorted(copy.aliases) == sorted(original.aliases)
    assert {p: (e.digest, e.size) for p, e in copy.manifest.entries.items()} == {
        p: (e.digest, e.size) for p, e in original.manifest.entries.items()}


async def test_concurrent_runs_keep_version_order_and_lineage(wandb_server, artifact_dataset, destination,
                                                              public_api, tmp_path):
    entity, project = artifact_dataset.entity, artifact_dataset.project
    events = Events()
    async with clients(wandb_server) as (api, storage), destination("{project}-copy", events) as dest:
        writer_b, record_b = await open_and_write(dest, api, storage, entity, project, "logger-b")
        writer_a, record_a = await open_and_write(dest, api, storage, entity, project, "logger-a")
        b_waits = anyio.Event()
        dest.artifact_order.on_wait = lambda key, index: b_waits.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer_b.finish, record_b)  # data v1 must wait for v0 (logger-a)
            await b_waits.wait()
            await writer_a.finish(record_a)
        for writer in (writer_a, writer_b):
            await writer.aclose()
        user = await source_record(api, entity, artifact_dataset.other, "user")
        writer_u = await dest.open_run(user, None)
        await writer_u.finish(user)
        await writer_u.aclose()
    assert events.named("artifact_order") == [] and events.named("artifact_version_shift") == []
    assert events.named("artifact_digest_mismatch") == []
    source = f"{entity}/{project}"
    copied = f"{DEST}/{project}-copy"
    for name, type_ in (("data", "dataset"), ("model", "model")):
        original, copy = versions(public_api, source, name, type_), versions(public_api, copied, name, type_)
        assert sorted(copy) == sorted(original)
        for version in original:
            same_version(copy[version], original[version])
    run_b = public_api.run(f"{copied}/logger-b")
    assert sorted(a.name for a in run_b.logged_artifacts()) == ["data:v1", "data:v2", "model:v0"]
    assert [(a.name, a.digest) for a in run_b.used_artifacts()] == [
        ("data:v0", public_api.artifact(f"{source}/data:v0").digest)]
    user_run = public_api.run(f"{DEST}/{artifact_dataset.other}-copy/user")
    [used] = user_run.used_artifacts()
    assert (used.name, used.project, used.digest) == ("data:v1", f"{project}-copy",
                                                     public_api.artifact(f"{source}/data:v1").digest)


async def test_bounded_wait_then_commit(wandb_server, artifact_dataset, destination, public_api):
    """v1 of a collection whose v0 nobody copies: committed after the bounded wait, counted."""
    entity, project = artifact_dataset.entity, artifact_dataset.project
    events = Events()
    async with clients(wandb_server) as (api, storage), destination("{project}-alone", events) as dest:
        dest.artifact_order.timeout = 0
        writer, record = await open_and_write(dest, api, storage, entity, project, "logger-b")
        await writer.finish(record)
        await writer.aclose()
    where = f"{DEST}/{project}-alone/data"
    assert events.named("artifact_order") == [{"artifact": where, "version": "v1", "waited_for": "v0", "timeout": 0}]
    shifts = events.named("artifact_version_shift")
    assert shifts == [{"artifact": where, "source_version": "v1", "version": "v0"},
                      {"artifact": where, "source_version": "v2", "version": "v1"}]
    # the used v0 was never copied and there is no source fetcher: reported, not linked
    assert events.named("artifact_input_missing") == [
        {"run": "logger-b", "artifact": f"{entity}/{project}/data", "version": "v0"}]


async def test_used_version_is_copied_once_from_the_source(wandb_server, artifact_dataset, destination,
                                                          public_api, tmp_path):
    entity = artifact_dataset.entity
    events = Events()
    async with clients(wandb_server) as (api, storage), destination("{project}-used", events) as dest:
        dest.artifact_fetcher = ArtifactFetcher(api, storage, str(tmp_path))
        dest.artifact_order.timeout = 0
        user = await source_record(api, entity, artifact_dataset.other, "user")
        for _ in range(2):  # a re-run links the same copy again
            writer = await dest.open_run(user, None)
            await writer.finish(user)
            await writer.aclose()
    source = public_api.artifact(f"{entity}/{artifact_dataset.project}/data:v1")
    [copy] = versions(public_api, f"{DEST}/{artifact_dataset.project}-used", "data", "dataset").values()
    assert copy.digest == source.digest
    assert copy.logged_by() is None  # created for its user, not logged by it
    [used] = public_api.run(f"{DEST}/{artifact_dataset.other}-used/user").used_artifacts()
    assert used.digest == source.digest
    assert len(events.named("artifact_committed")) == 1


async def test_import_artifact_sequences_fills_gaps(wandb_server, artifact_dataset, public_api, tmp_path):
    """Source data:v1 deleted and logger-a gone: v1 becomes a placeholder, v0 is logged by the
    placeholder run, v2 lines up with its source number."""
    state = wandb_server.state
    entity, project = artifact_dataset.entity, artifact_dataset.project
    v0, v1, v2 = state.artifacts_of_collection(entity, project, "data")
    logger_a = state.runs.pop((entity, project, "logger-a"))
    v1.state = "DELETED"
    events = Events()
    try:
        async with clients(wandb_server) as (api, storage):
            fetcher = ArtifactFetcher(api, storage, str(tmp_path))
            target = (DEST, f"{project}-seq")
            for _ in range(2):  # idempotent
                counts = await import_artifact_sequences(fetcher, f"{entity}/{project}", api=api, storage=storage,
                                                         dest_project_of=lambda _: target, events=events)
    finally:
        v1.state = "COMMITTED"
        state.runs[(entity, project, "logger-a")] = logger_a
    assert counts == {"versions": 3, "deduplicated": 3, "placeholders": 0}
    assert len(events.named("artifact_placeholder")) == 1
    copied = versions(public_api, f"{DEST}/{project}-seq", "data", "dataset")
    assert sorted(copied) == ["v0", "v1", "v2"]
    same_version(copied["v0"], public_api.artifact(f"{entity}/{project}/data:v0"))
    same_version(copied["v2"], public_api.artifact(f"{entity}/{project}/data:v2"))
    assert copied["v1"].description == PLACEHOLDER_DESCRIPTION
    assert list(copied["v1"].manifest.entries) == ["runferry-placeholder-v1"]
    assert copied["v0"].logged_by().id == PLACEHOLDER_RUN
    model = versions(public_api, f"{DEST}/{project}-seq", "model", "model")
    same_version(model["v0"], public_api.artifact(f"{entity}/{project}/model:v0"))
