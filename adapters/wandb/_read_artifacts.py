"""Reading W&B artifacts from a W&B server: what a run logged and used, manifests, file bytes.

Why a module of its own: the W&B source lists a run's logged artifact versions as ``FileRef``s
(one per manifest entry, with an ``ArtifactRef`` carrying everything a W&B destination needs
to rebuild the same version: collection, type, version, aliases, description, metadata, source
project and digest), streams their bytes, and reports the versions a run used as
``RunRecord.inputs``. The queries follow the official SDK's (wandb-protocol.md §3.5).

Choices (documented for the README):

- Versions come oldest first: sorted by (source project, collection, version index), so a
  destination that commits them in this order keeps version numbers in order.
- ``aliases`` keep the custom aliases of the version's own collection; ``latest`` is left out
  (the destination server moves it to its newest version itself) and so are ``vN`` names
  (versions, not aliases). Aliases of portfolio/registry links are not the collection's own.
- Artifacts of type ``wandb-history`` are skipped by default (``skip_types``), as W&B's
  importer did: they are server-side exports of the run's history, which is migrated as
  history.
- Reference entries (``ref``: bytes outside W&B, e.g. ``s3://``) are skipped and counted
  (event ``artifact_reference_skipped``): there are no W&B bytes to copy, so the copy's
  digest differs from the source's when a version holds references.
- The manifest (JSON, metadata only: path, digest, size per entry) is read whole; file bytes
  are always streamed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

from adapters.http import HttpClient
from core.errors import AuthError, FatalError, NotFoundError
from core.model import ArtifactRef, FileRef

from . import _gql

DEFAULT_SKIP_TYPES = ("wandb-history",)
PAGE = 100
_VERSION_ALIAS = re.compile(r"^v\d+$")

ARTIFACT_FIELDS = """
fragment RunferryArtifact on Artifact {
  id versionIndex state digest description metadata
  artifactType { name }
  artifactSequence { name project { name entity { name } } }
  aliases { alias artifactCollection { name } }
}"""

RUN_OUTPUT_ARTIFACTS = """
query RunOutputArtifacts($entity: String!, $project: String!, $run: String!, $cursor: String, $perPage: Int) {
  project(entityName: $entity, name: $project) {
    run(name: $run) {
      artifacts: outputArtifacts(after: $cursor, first: $perPage) {
        pageInfo { endCursor hasNextPage }
        edges { node { ...RunferryArtifact } }
      }
    }
  }
}""" + ARTIFACT_FIELDS

RUN_INPUT_ARTIFACTS = RUN_OUTPUT_ARTIFACTS.replace("RunOutputArtifacts", "RunInputArtifacts").replace(
    "outputArtifacts", "inputArtifacts")

FETCH_ARTIFACT_MANIFEST = """
query FetchArtifactManifest($id: ID!) {
  artifact(id: $id) { currentManifest { file { directUrl } } }
}"""

ARTIFACT_MEMBERSHIP_FILES = """
query ArtifactMembershipFiles($entity: String!, $project: String!, $collection: String!, $alias: String!,
  $fileNames: [String!], $cursor: String, $perPage: Int) {
  project(name: $project, entityName: $entity) {
    artifactCollection(name: $collection) {
      artifactMembership(aliasName: $alias) {
        files(names: $fileNames, after: $cursor, first: $perPage) {
          edges { node { name: displayName directUrl } }
        }
      }
    }
  }
}"""


def split_project(path: str) -> tuple[str, str]:
    """``"entity/project"`` -> (entity, project)."""
    entity, _, project = path.partition("/")
    if not entity or not project:
        raise ValueError(f"expected 'entity/project', got {path!r}")
    return entity, project


def b64_to_hex(b64: str) -> str:
    return base64.b64decode(b64).hex()


def artifact_ref(node: dict[str, Any]) -> ArtifactRef:
    """An artifact version as the model's ``ArtifactRef`` (see the module docstring)."""
    sequence = node.get("artifactSequence") or {}
    collection = str(sequence.get("name") or "")
    project = sequence.get("project") or {}
    entity = (project.get("entity") or {}).get("name") or project.get("entityName") or ""
    aliases = []
    for item in node.get("aliases") or []:
        alias = item.get("alias") if isinstance(item, dict) else item
        owner = ((item.get("artifactCollection") or {}).get("name") if isinstance(item, dict) else None) or collection
        if alias and alias != "latest" and not _VERSION_ALIAS.match(alias) and owner == collection:
            aliases.append(str(alias))
    metadata = node.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata.strip() else {}
    return ArtifactRef(
        name=collection,
        type=str((node.get("artifactType") or {}).get("name") or "unknown"),
        version=f"v{node.get('versionIndex')}",
        aliases=tuple(sorted(set(aliases))),
        description=node.get("description") or None,
        metadata=tuple(sorted(metadata.items())),
        source_project=f"{entity}/{project.get('name')}",
        digest=node.get("digest"),
    )


def version_index(ref: ArtifactRef) -> int:
    """``"v7"`` -> 7."""
    version = ref.version or ""
    if not _VERSION_ALIAS.match(version):
        raise ValueError(f"artifact {ref.name}: version {version!r} is not vN")
    return int(version[1:])


async def paged_artifacts(
    api: HttpClient, document: str, name: str, *, entity: str, project: str, run_name: str
) -> AsyncGenerator[dict[str, Any], None]:
    """Artifact nodes of a run's output or input connection, page by page."""
    found = False
    async for node in paged(api, document, name, {"entity": entity, "project": project, "run": run_name},
                            ("project", "run", "artifacts")):
        found = True
        yield node
    if not found:
        data = await _gql.call(api, RUN_EXISTS, {"entity": entity, "project": project, "run": run_name},
                               name="RunExists")
        if not (data.get("project") or {}).get("run"):
            raise NotFoundError(f"wandb: run {entity}/{project}/{run_name} not found", adapter="wandb")


RUN_EXISTS = """
query RunExists($entity: String!, $project: String!, $run: String!) {
  project(entityName: $entity, name: $project) { run(name: $run) { id } }
}"""


async def fetch_manifest(api: HttpClient, storage: HttpClient, artifact_id: str) -> dict[str, Any]:
    """The version's manifest JSON (``currentManifest.file.directUrl``, a presigned URL)."""
    data = await _gql.call(api, FETCH_ARTIFACT_MANIFEST, {"id": artifact_id}, name="FetchArtifactManifest")
    manifest = ((data.get("artifact") or {}).get("currentManifest") or {})
    url = (manifest.get("file") or {}).get("directUrl")
    if not url:
        raise FatalError(f"wandb: artifact {artifact_id} has no manifest", adapter="wandb")
    document = await storage.request_json("GET", url)
    if not isinstance(document, dict) or not isinstance(document.get("contents"), dict):
        raise FatalError(f"wandb: artifact {artifact_id}: manifest without contents", adapter="wandb")
    return document


def manifest_files(document: dict[str, Any], ref: ArtifactRef, events: Callable[..., None]) -> list[FileRef]:
    """One ``FileRef`` per stored manifest entry, sorted by path (reference entries skipped)."""
    files = []
    skipped = 0
    for path in sorted(document["contents"]):
        entry = document["contents"][path]
        if entry.get("ref") is not None:
            skipped += 1
            continue
        files.append(FileRef(path=path, size=int(entry.get("size") or 0), md5=b64_to_hex(entry["digest"]),
                             artifact=ref))
    if skipped:
        events("artifact_reference_skipped", artifact=f"{ref.source_project}/{ref.name}:{ref.version}", n=skipped)
    return files


def _ignore(name: str, **fields: Any) -> None:
    return None


async def logged_artifact_files(
    api: HttpClient,
    storage: HttpClient,
    *,
    entity: str,
    project: str,
    run_name: str,
    skip_types: tuple[str, ...] = DEFAULT_SKIP_TYPES,
    events: Callable[..., None] = _ignore,
) -> AsyncGenerator[FileRef, None]:
    """Every file of every artifact version the run logged (committed ones), versions oldest
    first, paths sorted within a version."""
    nodes = []
    async with contextlib.aclosing(paged_artifacts(api, RUN_OUTPUT_ARTIFACTS, "RunOutputArtifacts", entity=entity,
                                                   project=project, run_name=run_name)) as pages:
        async for node in pages:
            if node.get("state", "COMMITTED") != "COMMITTED":
                continue
            ref = artifact_ref(node)
            if ref.type in skip_types:
                continue
            nodes.append((ref.source_project or "", ref.name, version_index(ref), node["id"], ref))
    for *_, artifact_id, ref in sorted(nodes, key=lambda item: item[:3]):
        document = await fetch_manifest(api, storage, artifact_id)
        for file in manifest_files(document, ref, events):
            yield file


async def artifact_file_url(api: HttpClient, file: FileRef) -> str:
    """The presigned URL of one member (the SDK's ArtifactMembershipFiles, filtered by name)."""
    art = file.artifact
    if art is None or not art.source_project or not art.version:
        raise FatalError(f"wandb: {file.path} is not a member of a W&B artifact version", adapter="wandb")
    entity, project = split_project(art.source_project)
    data = await _gql.call(api, ARTIFACT_MEMBERSHIP_FILES, {
        "entity": entity, "project": project, "collection": art.name, "alias": art.version,
        "fileNames": [file.path], "perPage": 1}, name="ArtifactMembershipFiles")
    membership = (((data.get("project") or {}).get("artifactCollection") or {}).get("artifactMembership") or {})
    for edge in (membership.get("files") or {}).get("edges") or []:
        if edge["node"].get("name") == file.path and edge["node"].get("directUrl"):
            return str(edge["node"]["directUrl"])
    raise NotFoundError(f"wandb: {art.source_project}/{art.name}:{art.version} has no file {file.path}",
                        adapter="wandb")


async def read_artifact_file(
    storage: HttpClient, api: HttpClient, file: FileRef, *, chunk_size: int = 1 << 20
) -> AsyncGenerator[bytes, None]:
    """The member's bytes, streamed. A presigned URL that expired (403/404 before the first
    byte) is asked for again once; a break mid-body raises ``TransientError`` (the engine
    restarts the file), as ``HttpClient.download`` documents."""
    url = await artifact_file_url(api, file)
    for attempt in (1, 2):
        started = False
        try:
            async with contextlib.aclosing(storage.download(url, chunk_size=chunk_size)) as pieces:
                async for piece in pieces:
                    started = True
                    yield piece
            return
        except (AuthError, NotFoundError):
            if started or attempt == 2:
                raise
        url = await artifact_file_url(api, file)


async def used_artifacts(api: HttpClient, *, entity: str, project: str, run_name: str) -> list[dict[str, Any]]:
    """The run's input artifacts in ``RunRecord.inputs`` form (see engine/model.py)."""
    used = []
    async with contextlib.aclosing(paged_artifacts(api, RUN_INPUT_ARTIFACTS, "RunInputArtifacts", entity=entity,
                                                   project=project, run_name=run_name)) as pages:
        async for node in pages:
            ref = artifact_ref(node)
            used.append({"artifact": {"project": ref.source_project, "name": ref.name, "version": ref.version,
                                      "type": ref.type, "digest": ref.digest}})
    return used


ARTIFACT_BY_NAME = """
query ArtifactByName($entity: String!, $project: String!, $name: String!) {
  project(entityName: $entity, name: $project) { artifact(name: $name) { ...RunferryArtifact } }
}""" + ARTIFACT_FIELDS

PROJECT_ARTIFACT_TYPES = """
query ProjectArtifactTypes($entity: String!, $project: String!, $cursor: String, $perPage: Int) {
  project(name: $project, entityName: $entity) {
    artifacts: artifactTypes(after: $cursor, first: $perPage) {
      pageInfo { endCursor hasNextPage }
      edges { node { name } }
    }
  }
}"""

TYPE_COLLECTIONS = """
query ArtifactTypeCollections($entity: String!, $project: String!, $type: String!, $cursor: String, $perPage: Int) {
  project(name: $project, entityName: $entity) {
    artifactType(name: $type) {
      artifacts: artifactCollections(after: $cursor, first: $perPage) {
        pageInfo { endCursor hasNextPage }
        edges { node { name } }
      }
    }
  }
}"""

COLLECTION_VERSIONS = """
query CollectionVersions($entity: String!, $project: String!, $type: String!, $collection: String!,
  $cursor: String, $perPage: Int) {
  project(entityName: $entity, name: $project) {
    artifactType(name: $type) {
      artifactCollection(name: $collection) {
        artifacts(after: $cursor, first: $perPage) {
          pageInfo { endCursor hasNextPage }
          edges { node { ...RunferryArtifact createdBy { __typename ... on Run { name } } } }
        }
      }
    }
  }
}""" + ARTIFACT_FIELDS


async def paged(api: HttpClient, document: str, name: str, variables: dict[str, Any],
                path: tuple[str, ...]) -> AsyncGenerator[dict[str, Any], None]:
    """Nodes of the connection at ``path`` in the answer (missing parents: no nodes)."""
    cursor = None
    while True:
        data: Any = await _gql.call(api, document, {**variables, "cursor": cursor, "perPage": PAGE}, name=name)
        for key in path:
            data = (data or {}).get(key)
        for edge in (data or {}).get("edges") or []:
            yield edge["node"]
        info = (data or {}).get("pageInfo") or {}
        if not info.get("hasNextPage"):
            return
        cursor = info.get("endCursor")


async def artifact_version(api: HttpClient, project_path: str, name: str, version: str) -> dict[str, Any] | None:
    """The artifact node of ``name:version`` in ``entity/project`` (None when absent)."""
    entity, project = split_project(project_path)
    data = await _gql.call(api, ARTIFACT_BY_NAME, {"entity": entity, "project": project,
                                                   "name": f"{name}:{version}"}, name="ArtifactByName")
    return (data.get("project") or {}).get("artifact")


async def version_files(api: HttpClient, storage: HttpClient, node: dict[str, Any],
                        events: Callable[..., None] = _ignore) -> list[FileRef]:
    """The stored files of one artifact version node (manifest order: paths sorted)."""
    return manifest_files(await fetch_manifest(api, storage, node["id"]), artifact_ref(node), events)


async def project_collections(
    api: HttpClient, project_path: str, *, skip_types: tuple[str, ...] = DEFAULT_SKIP_TYPES
) -> AsyncGenerator[tuple[str, str], None]:
    """(type, collection) of every artifact collection of a project, types and names sorted."""
    entity, project = split_project(project_path)
    variables = {"entity": entity, "project": project}
    types = [n["name"] async for n in paged(api, PROJECT_ARTIFACT_TYPES, "ProjectArtifactTypes", variables,
                                            ("project", "artifacts"))]
    for type_name in sorted(set(types) - set(skip_types)):
        names = [n["name"] async for n in paged(api, TYPE_COLLECTIONS, "ArtifactTypeCollections",
                                                {**variables, "type": type_name},
                                                ("project", "artifactType", "artifacts"))]
        for name in sorted(names):
            yield type_name, name


async def collection_versions(api: HttpClient, project_path: str, type_name: str,
                              collection: str) -> list[dict[str, Any]]:
    """Committed version nodes of a collection, oldest first, each with ``createdBy``."""
    entity, project = split_project(project_path)
    nodes = [n async for n in paged(api, COLLECTION_VERSIONS, "CollectionVersions",
                                    {"entity": entity, "project": project, "type": type_name,
                                     "collection": collection},
                                    ("project", "artifactType", "artifactCollection", "artifacts"))]
    committed = [n for n in nodes if n.get("state", "COMMITTED") == "COMMITTED"]
    return sorted(committed, key=lambda n: int(n["versionIndex"]))
