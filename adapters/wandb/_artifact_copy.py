"""Copied W&B artifacts at a W&B destination: version order, lineage, whole collections.

Why: a W&B -> W&B migration must leave each collection's versions numbered as at the source
(``data:v3`` in code and reports must still mean the same bytes), runs' inputs linked to the
copied versions, and collections whose logging runs are gone copied too.

- **Version order.** The server numbers versions in commit order, so vN of a collection is
  committed only once v(N-1) exists (its files and manifest are uploaded meanwhile; only
  ``CommitArtifact``, which numbers the version, waits): ``ArtifactOrder`` (one per ``WandbDestination``) holds an
  ``anyio.Event`` per (destination collection, source version); a writer settles its version
  when the commit ends (committed, deduplicated or failed, and in ``aclose`` when the run
  failed before ``finish``), so nothing waits forever. Before waiting, the destination is asked
  whether v(N-1) is already there (an earlier migration, ``import_artifact_sequences``). A
  wait is bounded (``timeout``); then vN is committed anyway and an ``artifact_order`` event is
  counted. A version number that still differs from the source's is reported
  (``artifact_version_shift``); a digest that differs (reference entries are not copied) is
  reported as ``artifact_digest_mismatch``.
- **Lineage.** At ``finish`` each ``RunRecord.inputs`` version is found at the destination by
  collection + version and checked by digest (else looked up by digest among the
  collection's versions), then ``UseArtifact`` links it to the run. A version not copied yet
  is copied once from the source (``ArtifactFetcher``, when the source is W&B; created for
  the using run without runName, as the SDK does for ``use_artifact``; when its logging run
  is migrated later, CreateArtifact with the same digest returns the committed version and
  makes it that run's output too). Without a fetcher: event ``artifact_input_missing``.
- **Deleted source versions** (``import_artifact_sequences``): a gap in the source's version
  numbers becomes a placeholder version (description ``PLACEHOLDER_DESCRIPTION``, one empty
  file ``runferry-placeholder-vN``) so later numbers line up, as W&B's importer did; counted
  as ``artifact_placeholder``. Versions whose logging run does not exist at the destination
  are logged by a placeholder run ``PLACEHOLDER_RUN`` of the destination project. In the
  per-run path a deleted version is never logged by anyone: its successor waits the bounded
  time, then shifts (counted); run ``import_artifact_sequences`` first to keep the numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from adapters.http import HttpClient

from . import _gql
from . import _read_artifacts as source_side
from ._artifacts import ArtifactTarget, ArtifactUploader, PendingArtifact
from ._spool import spool

DEFAULT_ORDER_TIMEOUT = 300.0
PLACEHOLDER_DESCRIPTION = "__RUNFERRY_PLACEHOLDER__ (a version deleted at the source)"
PLACEHOLDER_RUN = "runferry-artifact-placeholder"

CollectionKey = tuple[str, str, str]  # destination entity, project, collection
DestProjectOf = Callable[[str], tuple[str, str]]  # "entity/project" at the source -> destination

MEMBERSHIP = """
query ArtifactMembership($entity: String!, $project: String!, $collection: String!, $alias: String!) {
  project(name: $project, entityName: $entity) {
    artifactCollection(name: $collection) { artifactMembership(aliasName: $alias) { artifact { id digest } } }
  }
}"""

COLLECTION_DIGESTS = """
query CollectionDigests($entity: String!, $project: String!, $collection: String!, $cursor: String, $perPage: Int) {
  project(name: $project, entityName: $entity) {
    artifactCollection(name: $collection) {
      artifacts(after: $cursor, first: $perPage) {
        pageInfo { endCursor hasNextPage }
        edges { node { id digest } }
      }
    }
  }
}"""


class ArtifactOrder:
    """Per-destination coordinator of version commits (see the module docstring)."""

    def __init__(self, timeout: float = DEFAULT_ORDER_TIMEOUT) -> None:
        self.timeout = timeout
        self._settled: dict[tuple[CollectionKey, int], anyio.Event] = {}
        self._locks: dict[tuple[CollectionKey, int], anyio.Lock] = {}
        self.on_wait: Callable[[CollectionKey, int], None] | None = None  # observation hook (tests)

    def _event(self, key: CollectionKey, index: int) -> anyio.Event:
        event = self._settled.get((key, index))
        if event is None:
            event = self._settled[(key, index)] = anyio.Event()
        return event

    def lock(self, key: CollectionKey, index: int) -> anyio.Lock:
        """One commit of a version at a time: a copy made because a run used the version and
        the copy its logging run makes meet here, so the second finds the first committed (and
        deduplicates onto it) instead of creating a second version with the same digest."""
        lock = self._locks.get((key, index))
        if lock is None:
            lock = self._locks[(key, index)] = anyio.Lock()
        return lock

    def settle(self, key: CollectionKey, index: int) -> None:
        """Version ``index`` of ``key`` is done (committed, skipped or failed)."""
        self._event(key, index).set()

    async def wait_previous(self, api: HttpClient, key: CollectionKey, index: int, events: Any) -> bool:
        """Wait until v(index-1) is settled or exists at the destination; False after the
        bounded wait (counted as ``artifact_order``)."""
        if index <= 0:
            return True
        previous = self._event(key, index - 1)
        if previous.is_set() or await destination_version(api, key, f"v{index - 1}") is not None:
            return True
        if self.on_wait is not None:
            self.on_wait(key, index)
        with anyio.move_on_after(self.timeout):
            await previous.wait()
            return True
        events("artifact_order", artifact=f"{key[0]}/{key[1]}/{key[2]}", version=f"v{index}",
               waited_for=f"v{index - 1}", timeout=self.timeout)
        return False


async def destination_version(api: HttpClient, key: CollectionKey, alias: str) -> dict[str, Any] | None:
    """``{"id", "digest"}`` of ``collection:alias`` at the destination, None when absent."""
    entity, project, name = key
    data = await _gql.call(api, MEMBERSHIP, {"entity": entity, "project": project, "collection": name,
                                             "alias": alias}, name="ArtifactMembership")
    membership = ((data.get("project") or {}).get("artifactCollection") or {}).get("artifactMembership")
    return (membership or {}).get("artifact")


async def find_by_digest(api: HttpClient, key: CollectionKey, version: str | None, digest: str | None) -> str | None:
    """The id of the destination version holding ``digest`` (tried at ``version`` first)."""
    if version:
        found = await destination_version(api, key, version)
        if found is not None and (digest is None or found.get("digest") == digest):
            return str(found["id"])
    if digest is None:
        return None
    entity, project, name = key
    async for node in source_side.paged(api, COLLECTION_DIGESTS, "CollectionDigests",
                                        {"entity": entity, "project": project, "collection": name},
                                        ("project", "artifactCollection", "artifacts")):
        if node.get("digest") == digest:
            return str(node["id"])
    return None


async def commit_in_order(
    uploader: ArtifactUploader, target: ArtifactTarget, pending: PendingArtifact, *, api: HttpClient,
    order: ArtifactOrder, events: Any,
) -> dict[str, Any]:
    """Commit one artifact; a copied version waits for its predecessor first (bounded) and is
    settled whatever happens, so no other commit waits on it in vain."""
    if not pending.copied:
        return await uploader.commit(target, pending)
    key = (target.entity, target.project, pending.name)
    index = int(str(pending.version)[1:])
    async with order.lock(key, index):
        try:  # uploads go at once; only the commit (which numbers the version) waits its turn
            result = await uploader.commit(target, pending,
                                           before_commit=lambda: order.wait_previous(api, key, index, events))
        finally:
            order.settle(key, index)
    where = f"{target.entity}/{target.project}/{pending.name}"
    if pending.source_digest and result["digest"] != pending.source_digest:
        events("artifact_digest_mismatch", artifact=where, version=pending.version,
               source_digest=pending.source_digest, digest=result["digest"])
    dest_index = result.get("version_index")
    if dest_index is not None and dest_index != index:
        events("artifact_version_shift", artifact=where, source_version=pending.version, version=f"v{dest_index}")
    return result


def commit_sort_key(pending: PendingArtifact) -> tuple[str, int, str]:
    """Copied versions by collection then version number (``v10`` after ``v9``)."""
    index = int(str(pending.version)[1:]) if pending.copied else -1
    return pending.name, index, pending.version or ""


def settle_all(order: ArtifactOrder, target: ArtifactTarget, pendings: list[PendingArtifact]) -> None:
    """A run that ends without committing its versions releases whoever waits for them."""
    for pending in pendings:
        if pending.copied:
            order.settle((target.entity, target.project, pending.name), int(str(pending.version)[1:]))


# -- copying versions straight from a W&B source -------------------------------------------------


@dataclass
class ArtifactFetcher:
    """Reads artifact versions from a W&B source (its GraphQL and storage clients)."""

    api: HttpClient
    storage: HttpClient
    spool_dir: str | None = None

    async def pending(self, node: dict[str, Any], events: Any) -> PendingArtifact:
        """The version's stored files spooled to disk, as a copy to commit."""
        ref = source_side.artifact_ref(node)
        art = PendingArtifact(name=ref.name, type=ref.type, description=ref.description, aliases=ref.aliases,
                              metadata=dict(ref.metadata), version=ref.version,
                              source_project=ref.source_project, source_digest=ref.digest)
        try:
            for file in await source_side.version_files(self.api, self.storage, node, events):
                pieces = source_side.read_artifact_file(self.storage, self.api, file)
                async with contextlib.aclosing(pieces):
                    art.members[file.path] = await spool(pieces, self.spool_dir)
        except BaseException:
            art.discard()
            raise
        return art


async def copy_version(
    fetcher: ArtifactFetcher, node: dict[str, Any], uploader: ArtifactUploader, target: ArtifactTarget, *,
    api: HttpClient, order: ArtifactOrder, events: Any,
) -> dict[str, Any]:
    """Copy one source version (node of ``_read_artifacts``) to ``target``, in order."""
    pending = await fetcher.pending(node, events)
    try:
        return await commit_in_order(uploader, target, pending, api=api, order=order, events=events)
    finally:
        pending.discard()


async def use_inputs(
    api: HttpClient, inputs: list[dict[str, Any]], *, target: ArtifactTarget, dest_project_of: DestProjectOf,
    uploader: ArtifactUploader, order: ArtifactOrder, events: Any, fetcher: ArtifactFetcher | None = None,
) -> int:
    """Link the run's used versions (``RunRecord.inputs``) at the destination; how many."""
    linked = 0
    for item in inputs:
        used = item.get("artifact") or {}
        if not used.get("project") or not used.get("name"):
            continue
        entity, project = dest_project_of(str(used["project"]))
        key = (entity, project, str(used["name"]))
        artifact_id = await find_by_digest(api, key, used.get("version"), used.get("digest"))
        if artifact_id is None and fetcher is not None:
            node = await source_side.artifact_version(fetcher.api, str(used["project"]), key[2],
                                                      str(used.get("version")))
            if node is not None:
                copy_target = ArtifactTarget(entity, project, target.run_id, logged=False)
                result = await copy_version(fetcher, node, uploader, copy_target, api=api, order=order,
                                            events=events)
                artifact_id = result["id"]
        if artifact_id is None:
            events("artifact_input_missing", run=target.run_id, artifact=f"{used['project']}/{key[2]}",
                   version=used.get("version"))
            continue
        await _gql.call(api, _gql.USE_ARTIFACT, {"input": {
            "artifactID": artifact_id, "entityName": target.entity, "projectName": target.project,
            "runName": target.run_id}}, name="UseArtifact")
        linked += 1
    return linked


# -- whole collections -----------------------------------------------------------------------------


async def _placeholder(index: int, spool_dir: str | None, name: str, type_name: str) -> PendingArtifact:
    async def nothing() -> AsyncGenerator[bytes, None]:
        return
        yield b""

    art = PendingArtifact(name=name, type=type_name, description=PLACEHOLDER_DESCRIPTION)
    art.members[f"runferry-placeholder-v{index}"] = await spool(nothing(), spool_dir)
    return art


async def _logging_run(api: HttpClient, entity: str, project: str, run_name: str | None,
                       dest_run_of: Callable[[str], str]) -> str:
    """The destination run that logs a copied version: the logging run's copy when it exists
    there, else the project's placeholder run (created once)."""
    if run_name:
        candidate = dest_run_of(run_name)
        data = await _gql.call(api, source_side.RUN_EXISTS, {"entity": entity, "project": project,
                                                              "run": candidate}, name="RunExists")
        if (data.get("project") or {}).get("run"):
            return candidate
    data = await _gql.call(api, source_side.RUN_EXISTS, {"entity": entity, "project": project,
                                                         "run": PLACEHOLDER_RUN}, name="RunExists")
    if not (data.get("project") or {}).get("run"):
        await _gql.call(api, _gql.UPSERT_BUCKET, {
            "name": PLACEHOLDER_RUN, "entity": entity, "project": project, "state": "finished",
            "displayName": "runferry artifact placeholder",
            "notes": "Logs copied artifact versions whose source run no longer exists."}, name="UpsertBucket",
            limit_key=_gql.run_creation_key(entity, project))
    return PLACEHOLDER_RUN


async def import_artifact_sequences(
    fetcher: ArtifactFetcher, source_project: str, *, api: HttpClient, storage: HttpClient,
    dest_project_of: DestProjectOf, dest_run_of: Callable[[str], str] = lambda name: name,
    events: Any = source_side._ignore, multipart_threshold: int = 2 * 1024**3, upload_concurrency: int = 8,
    order: ArtifactOrder | None = None, skip_types: tuple[str, ...] = source_side.DEFAULT_SKIP_TYPES,
) -> dict[str, int]:
    """Copy every artifact collection of ``source_project`` ("entity/project" at the source) to
    its destination project: all committed versions in version order, with their aliases,
    description and metadata; gaps become placeholders. Re-running is idempotent (versions with
    the same digest come back committed). Returns counts: versions, deduplicated, placeholders."""
    order = order or ArtifactOrder()
    uploader = ArtifactUploader(api, storage, multipart_threshold=multipart_threshold,
                                concurrency=upload_concurrency, events=events)
    entity, project = dest_project_of(source_project)
    counts = {"versions": 0, "deduplicated": 0, "placeholders": 0}
    async for type_name, name in source_side.project_collections(fetcher.api, source_project, skip_types=skip_types):
        expected = 0
        for node in await source_side.collection_versions(fetcher.api, source_project, type_name, name):
            index = int(node["versionIndex"])
            key = (entity, project, name)
            while expected < index:  # deleted at the source: keep the numbers in line
                if await destination_version(api, key, f"v{expected}") is None:
                    holder = await _placeholder(expected, fetcher.spool_dir, name, type_name)
                    run = await _logging_run(api, entity, project, None, dest_run_of)
                    try:
                        await uploader.commit(ArtifactTarget(entity, project, run), holder)
                    finally:
                        holder.discard()
                    events("artifact_placeholder", artifact=f"{entity}/{project}/{name}", version=f"v{expected}")
                    counts["placeholders"] += 1
                order.settle(key, expected)
                expected += 1
            run_name = (node.get("createdBy") or {}).get("name")
            run = await _logging_run(api, entity, project, run_name, dest_run_of)
            result = await copy_version(fetcher, node, uploader, ArtifactTarget(entity, project, run), api=api,
                                        order=order, events=events)
            counts["versions"] += 1
            counts["deduplicated"] += bool(result["deduplicated"])
            expected = index + 1
    events("artifact_sequences_copied", source=source_project, dest=f"{entity}/{project}", **counts)
    return counts

