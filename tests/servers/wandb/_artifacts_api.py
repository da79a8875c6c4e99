"""GraphQL resolvers for artifacts: create, upload (single and multipart), commit, use, read.

Why: ``run.log_artifact`` / ``artifact.download()`` in the official SDK and runferry's W&B
adapters move artifacts through these operations; files are content-addressed blobs so a
re-upload of identical bytes is deduplicated like on the real service (uploadUrl = null).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

from ._gql import GqlFieldError
from ._refs import project_ref
from ._state import Artifact, ArtifactFile, Blob, MultipartUpload, Run, ServerState, iso, node_id, utcnow


def content_key(entity: str, b64md5: str) -> str:
    return f"artifact-files/{entity}/{base64.b64decode(b64md5).hex()}"


def manifest_key(artifact_id: str) -> str:
    return f"artifact-manifests/{artifact_id}/wandb_manifest.json"


# ---------------------------------------------------------------- nodes


def artifact_node(ctx, art: Artifact) -> dict:
    from ._runs_api import connection, run_node

    state: ServerState = ctx.state

    def files(args: dict) -> dict:
        entries = sorted(art.files.values(), key=lambda f: f.path)
        names = args.get("names")
        if names:
            entries = [f for f in entries if f.path in names]
        return connection(entries, args, lambda f: artifact_file_node(ctx, art, f))

    def created_by(args: dict) -> dict | None:
        run = state.run(art.entity, art.project, art.run_name) if art.run_name else None
        return run_node(ctx, run) if run else None

    def used_by(args: dict) -> dict:
        runs = [r for r in (state.run(*k) for k in art.used_by) if r is not None]
        return connection(runs, args, lambda r: run_node(ctx, r))

    collection = collection_node(ctx, art.entity, art.project, art.collection, art.type)
    manifest_blob = state.blob(art.manifest_blob_key) if art.manifest_blob_key else None
    aliases = [
        {"__typename": "ArtifactAlias", "id": node_id("ArtifactAlias", art.id, a), "alias": a, "artifactCollection": collection}
        for a in art.aliases
    ]
    return {
        "__typename": "Artifact",
        "id": art.id,
        "digest": art.digest,
        "description": art.description,
        "metadata": art.metadata or "{}",
        "state": art.state,
        "size": art.size,
        "fileCount": len(art.files),
        "createdAt": iso(art.created_at),
        "updatedAt": iso(art.created_at),
        "versionIndex": art.version_index,
        "version": f"v{art.version_index}",
        "commitHash": art.digest[:20] if art.state == "COMMITTED" else None,
        "ttlDurationSeconds": art.ttl_duration_seconds if art.ttl_duration_seconds is not None else -1,
        "ttlIsInherited": True,
        "historyStep": art.history_step,
        "aliases": aliases,
        "tags": [{"__typename": "Tag", "id": node_id("Tag", t), "name": t, "tagCategoryName": ""} for t in art.tags],
        "artifactType": {"__typename": "ArtifactType", "id": node_id("ArtifactType", art.type), "name": art.type},
        "artifactSequence": collection,
        "artifactCollection": collection,
        "artifactCollections": {"edges": [{"node": collection}]},
        "artifactMemberships": {"edges": [{"node": membership_node(ctx, art, collection)}]},
        "currentManifest": {
            "id": art.manifest_id,
            "file": {
                "id": node_id("File", art.id, "wandb_manifest.json"),
                "name": "wandb_manifest.json",
                "directUrl": ctx.storage_url(art.manifest_blob_key) if art.manifest_blob_key else None,
                "url": ctx.storage_url(art.manifest_blob_key) if art.manifest_blob_key else None,
                "sizeBytes": manifest_blob.size if manifest_blob else 0,
                "md5": manifest_blob.b64md5 if manifest_blob else None,
            },
        }
        if art.manifest_blob_key
        else None,
        "files": files,
        "createdBy": created_by,
        "usedBy": used_by,
        "source": None,
        "sourceProject": None,
        "storageRegion": None,
    }


def membership_node(ctx, art: Artifact, collection: dict) -> dict:
    return {
        "__typename": "ArtifactCollectionMembership",
        "id": node_id("ArtifactMembership", art.id),
        "createdAt": iso(art.created_at),
        "versionIndex": art.version_index,
        "artifactCollection": collection,
        "aliases": [{"__typename": "ArtifactAlias", "id": node_id("ArtifactAlias", art.id, a), "alias": a} for a in art.aliases],
        "artifact": lambda a: artifact_node(ctx, art),
        "files": lambda a: artifact_node(ctx, art)["files"](a),
    }


def artifact_file_node(ctx, art: Artifact, entry: ArtifactFile) -> dict:
    url = ctx.storage_url(entry.blob_key) if entry.blob_key else None
    return {
        "__typename": "File",
        "id": node_id("File", art.id, entry.path),
        "name": entry.path,
        "displayName": entry.path,
        "url": url,
        "directUrl": url,
        "sizeBytes": entry.size,
        "md5": entry.digest,
        "digest": entry.digest,
        "storagePath": entry.blob_key,
        "mimetype": "application/octet-stream",
    }


def collection_node(ctx, entity: str, project: str, name: str, type_name: str | None = None) -> dict:
    state: ServerState = ctx.state

    def artifacts(args: dict) -> dict:
        from ._runs_api import connection

        items = [a for a in state.artifacts_of_collection(entity, project, name) if a.state == "COMMITTED"]
        items.sort(key=lambda a: -(a.version_index or 0))
        conn = connection(items, args, lambda a: artifact_node(ctx, a))
        for edge, art in zip(conn["edges"], items[decode_start(args):]):
            edge["version"] = f"v{art.version_index}"
        return conn

    def membership(args: dict) -> dict | None:
        art = resolve_alias(state, entity, project, name, args.get("aliasName"))
        if art is None:
            return None
        return membership_node(ctx, art, collection)

    def aliases(args: dict) -> dict:
        from ._runs_api import connection

        pairs = [(a, x) for a in state.artifacts_of_collection(entity, project, name) for x in a.aliases]
        return connection(pairs, args, lambda p: {"__typename": "ArtifactAlias", "alias": p[1], "id": node_id("ArtifactAlias", p[0].id, p[1])})

    type_name = type_name or state.collection_types.get((entity, project, name), "unknown")
    collection = {
        "__typename": "ArtifactSequence",
        "__interfaces": ("ArtifactCollection",),
        "id": node_id("ArtifactCollection", entity, project, name),
        "name": name,
        "description": None,
        "createdAt": "2026-01-01T00:00:00",
        "updatedAt": "2026-01-01T00:00:00",
        "state": "READY",
        "tags": {"edges": []},
        "project": project_ref(entity, project),
        "defaultArtifactType": {"id": node_id("ArtifactType", type_name), "name": type_name},
        "artifactType": {"id": node_id("ArtifactType", type_name), "name": type_name},
        "artifacts": artifacts,
        "artifactMembership": membership,
        "aliases": aliases,
        "latestArtifact": lambda a: latest_node(ctx, entity, project, name),
    }
    return collection


def decode_start(args: dict) -> int:
    from ._runs_api import decode_cursor

    return decode_cursor(args.get("after"))


def latest_node(ctx, entity: str, project: str, name: str) -> dict | None:
    committed = [a for a in ctx.state.artifacts_of_collection(entity, project, name) if a.state == "COMMITTED"]
    return artifact_node(ctx, committed[-1]) if committed else None


def resolve_alias(state: ServerState, entity: str, project: str, name: str, alias: str | None) -> Artifact | None:
    arts = [a for a in state.artifacts_of_collection(entity, project, name) if a.state == "COMMITTED"]
    if not alias or alias == "latest":
        return arts[-1] if arts else None
    if alias.startswith("v") and alias[1:].isdigit():
        return next((a for a in arts if a.version_index == int(alias[1:])), None)
    return next((a for a in reversed(arts) if alias in a.aliases), None)


def parse_artifact_name(full: str) -> tuple[str, str | None]:
    name, _, alias = full.partition(":")
    return name, alias or None


# ---------------------------------------------------------------- project / run fields


def project_fields(ctx, entity: str, project: str) -> dict:
    state: ServerState = ctx.state

    def artifact_type(args: dict) -> dict | None:
        type_name = args.get("name")
        with state.lock:
            names = [c[2] for c, t in state.collection_types.items() if c[:2] == (entity, project) and t == type_name]
        if not names:
            return None
        return type_node(ctx, entity, project, type_name)

    def artifact_types(args: dict) -> dict:
        from ._runs_api import connection

        with state.lock:
            types = sorted({t for c, t in state.collection_types.items() if c[:2] == (entity, project)})
        return connection(types, args, lambda t: type_node(ctx, entity, project, t))

    def artifact(args: dict) -> dict | None:
        name, alias = parse_artifact_name(args["name"])
        art = resolve_alias(state, entity, project, name, alias)
        return artifact_node(ctx, art) if art else None

    def membership_by_name(args: dict) -> dict | None:
        name, alias = parse_artifact_name(args["name"])
        art = resolve_alias(state, entity, project, name, alias)
        if art is None:
            return None
        return membership_node(ctx, art, collection_node(ctx, entity, project, name))

    def artifact_collection(args: dict) -> dict | None:
        name = args.get("name")
        if (entity, project, name) not in state.collections:
            return None
        return collection_node(ctx, entity, project, name)

    return {
        "artifactType": artifact_type,
        "artifactTypes": artifact_types,
        "artifact": artifact,
        "artifactCollection": artifact_collection,
        "artifactSequence": artifact_collection,
        "artifactCollectionMembership": membership_by_name,
        "allViews": lambda a: views_connection(ctx, entity, project, a),
    }


def type_node(ctx, entity: str, project: str, type_name: str) -> dict:
    state: ServerState = ctx.state

    def collections(args: dict) -> dict:
        from ._runs_api import connection

        with state.lock:
            names = sorted(c[2] for c, t in state.collection_types.items() if c[:2] == (entity, project) and t == type_name)
        return connection(names, args, lambda n: collection_node(ctx, entity, project, n, type_name))

    def collection(args: dict) -> dict | None:
        if state.collection_types.get((entity, project, args.get("name"))) != type_name:
            return None
        return collection_node(ctx, entity, project, args["name"], type_name)

    return {
        "__typename": "ArtifactType",
        "id": node_id("ArtifactType", type_name),
        "name": type_name,
        "description": None,
        "createdAt": "2026-01-01T00:00:00",
        "artifactCollections": collections,
        "artifactSequences": collections,
        "artifactCollection": collection,
        "artifactSequence": collection,
        "artifact": lambda a: project_fields(ctx, entity, project)["artifact"](a),
    }


def run_fields(ctx, run: Run) -> dict:
    from ._runs_api import connection

    def outputs(args: dict) -> dict:
        arts = [ctx.state.artifacts[a] for a in run.output_artifacts if ctx.state.artifacts[a].state == "COMMITTED"]
        return connection(arts, args, lambda a: artifact_node(ctx, a), default_first=100)

    def inputs(args: dict) -> dict:
        arts = [ctx.state.artifacts[a] for a in run.input_artifacts]
        return connection(arts, args, lambda a: artifact_node(ctx, a), default_first=100)

    return {"outputArtifacts": outputs, "inputArtifacts": inputs}


def views_connection(ctx, entity: str, project: str, args: dict) -> dict:
    from ._runs_api import connection

    view_type = args.get("viewType") or "runs"
    with ctx.state.lock:
        views = [
            v for v in ctx.state.views.values()
            if v.entity == entity and v.project == project and v.type == view_type
            and (not args.get("viewName") or v.name == args["viewName"])
        ]
    views.sort(key=lambda v: v.created_at)
    return connection(views, args, lambda v: view_node(ctx, v))


def view_node(ctx, view) -> dict:
    return {
        "__typename": "View",
        "id": view.id,
        "name": view.name,
        "displayName": view.display_name,
        "description": view.description,
        "type": view.type,
        "spec": view.spec,
        "createdAt": iso(view.created_at),
        "updatedAt": iso(view.updated_at),
        "user": {"username": ctx.username, "name": ctx.username, "photoUrl": None, "email": None},
        "project": project_ref(view.entity, view.project),
    }


# ---------------------------------------------------------------- mutations


def create_artifact(ctx, args: dict) -> dict:
    data = args.get("input") or args
    state: ServerState = ctx.state
    entity = ctx.entity(data.get("entityName"))
    project = data.get("projectName")
    names = data.get("artifactCollectionNames") or [data.get("artifactCollectionName")]
    collection = names[0]
    type_name = data.get("artifactTypeName") or "unknown"
    digest = data.get("digest")
    with state.lock:
        state.projects.add((entity, project))
        key = (entity, project, collection)
        existing_type = state.collection_types.setdefault(key, type_name)
        if existing_type != type_name:
            raise GqlFieldError(
                f"artifact collection {collection!r} has type {existing_type!r}, not {type_name!r}",
                code="INVALID_ARGUMENT",
            )
        versions = state.collections.setdefault(key, [])
        committed = [state.artifacts[a] for a in versions if state.artifacts[a].state == "COMMITTED"]
        same = next((a for a in committed if a.digest == digest), None)
        if same is not None:
            art = same
            apply_aliases(state, art, data.get("aliases"))
        else:
            art_id = node_id("Artifact", secrets.token_hex(8))
            art = Artifact(
                id=art_id,
                entity=entity,
                project=project,
                type=type_name,
                collection=collection,
                version_index=None,
                digest=digest,
                description=data.get("description"),
                metadata=data.get("metadata"),
                run_name=data.get("runName"),
                client_id=data.get("clientID"),
                sequence_client_id=data.get("sequenceClientID"),
                history_step=data.get("historyStep"),
                ttl_duration_seconds=data.get("ttlDurationSeconds"),
                tags=[t.get("tagName") for t in data.get("tags") or []],
                created_at=state.clock(),
            )
            art.pending_aliases = [a.get("alias") for a in data.get("aliases") or []]  # type: ignore[attr-defined]
            state.artifacts[art_id] = art
            versions.append(art_id)
        run = state.run(entity, project, data["runName"]) if data.get("runName") else None
        if run is not None and art.id not in run.output_artifacts:
            run.output_artifacts.append(art.id)
        latest = committed[-1] if committed else None
    collection_info = {
        "id": node_id("ArtifactCollection", entity, project, collection),
        "name": collection,
        "latestArtifact": {"id": latest.id, "versionIndex": latest.version_index} if latest else None,
    }
    node = artifact_node(ctx, art)
    node["artifactSequence"] = {**node["artifactSequence"], **collection_info}
    return {"artifact": node}


def apply_aliases(state: ServerState, art: Artifact, aliases: list | None) -> None:
    for item in aliases or []:
        alias = item.get("alias") if isinstance(item, dict) else item
        set_alias(state, art, alias)


def set_alias(state: ServerState, art: Artifact, alias: str) -> None:
    for other in state.artifacts_of_collection(art.entity, art.project, art.collection):
        if other is not art and alias in other.aliases:
            other.aliases.remove(alias)
    if alias not in art.aliases:
        art.aliases.append(alias)


def create_artifact_manifest(ctx, args: dict) -> dict:
    data = args.get("input") or args
    art = get_artifact(ctx, data.get("artifactID"))
    art.manifest_id = art.manifest_id or node_id("ArtifactManifest", art.id)
    art.manifest_blob_key = manifest_key(art.id)
    return {"artifactManifest": manifest_payload(ctx, art, bool(data.get("includeUpload")))}


def update_artifact_manifest(ctx, args: dict) -> dict:
    data = args.get("input") or args
    state: ServerState = ctx.state
    with state.lock:
        art = next((a for a in state.artifacts.values() if a.manifest_id == data.get("artifactManifestID")), None)
    if art is None:
        raise GqlFieldError("artifact manifest not found", code="NOT_FOUND")
    return {"artifactManifest": manifest_payload(ctx, art, bool(data.get("includeUpload")))}


def manifest_payload(ctx, art: Artifact, include_upload: bool) -> dict:
    return {
        "id": art.manifest_id,
        "file": {
            "id": node_id("File", art.id, "wandb_manifest.json"),
            "name": "wandb_manifest.json",
            "displayName": "wandb_manifest.json",
            "uploadUrl": ctx.storage_url(art.manifest_blob_key),  # the SDK gates it with @include
            "uploadHeaders": [],
            "directUrl": ctx.storage_url(art.manifest_blob_key),
        },
    }


def get_artifact(ctx, artifact_id: str | None) -> Artifact:
    art = ctx.state.artifacts.get(artifact_id)
    if art is None:
        raise GqlFieldError(f"artifact {artifact_id!r} not found", code="NOT_FOUND")
    ctx.entity(art.entity)
    return art


def create_artifact_files(ctx, args: dict) -> dict:
    state: ServerState = ctx.state
    data = args.get("input") or args
    edges = []
    for spec in data.get("artifactFiles") or []:
        art = get_artifact(ctx, spec["artifactID"])
        key = content_key(art.entity, spec["md5"])
        name = spec["name"]
        with state.lock:
            exists = key in state.blobs
            art.files[name] = ArtifactFile(name, spec["md5"], key, art.id)
        upload_url = None if exists else ctx.storage_url(key)
        multipart = None
        parts = spec.get("uploadPartsInput")
        if parts and not exists:
            upload_id = secrets.token_hex(12)
            with state.lock:
                state.multipart[upload_id] = MultipartUpload(upload_id, key)
            multipart = {
                "uploadID": upload_id,
                "uploadUrlParts": [
                    {"partNumber": p["partNumber"], "uploadUrl": f"{ctx.storage_url(key)}&uploadId={upload_id}&partNumber={p['partNumber']}"}
                    for p in parts
                ],
            }
            upload_url = None
        edges.append(
            {
                "node": {
                    "id": node_id("File", art.id, name),
                    "name": name,
                    "displayName": name,  # full path: the legacy Python SDK keys uploads by it
                    "uploadUrl": upload_url,
                    "uploadHeaders": [],
                    "uploadMultipartUrls": multipart,
                    "storagePath": key,
                    "artifact": {"id": art.id},
                }
            }
        )
    return {"files": {"edges": edges}}


def complete_multipart(ctx, args: dict) -> dict:
    """Concatenate uploaded parts (streamed, on disk) once every part's ETag matches."""
    args = args.get("input") or args
    state: ServerState = ctx.state
    with state.lock:
        upload = state.multipart.get(args.get("uploadID"))
    if upload is None:
        raise GqlFieldError("upload not found", code="NOT_FOUND")
    if args.get("completeMultipartAction") == "Abort":
        with state.lock:
            state.multipart.pop(upload.upload_id, None)
        for blob in upload.parts.values():
            blob.path.unlink(missing_ok=True)
        return {"digest": None}
    wanted = sorted(args.get("completedParts") or [], key=lambda p: p["partNumber"])
    if not wanted:
        raise GqlFieldError("no parts to complete", code="INVALID_ARGUMENT")
    for part in wanted:
        blob = upload.parts.get(part["partNumber"])
        if blob is None or blob.etag.strip('"') != str(part["hexMD5"]).strip('"'):
            raise GqlFieldError(f"part {part['partNumber']} missing or ETag mismatch", code="INVALID_ARGUMENT")
    path = state.blob_path(upload.blob_key + ".mp" + secrets.token_hex(4))
    md5 = hashlib.md5()
    size = 0
    with open(path, "wb") as out:
        for part in wanted:
            with open(upload.parts[part["partNumber"]].path, "rb") as src:
                while chunk := src.read(1 << 20):
                    md5.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    with state.lock:
        state.multipart.pop(upload.upload_id, None)
    for blob in upload.parts.values():
        blob.path.unlink(missing_ok=True)
    digest = md5.digest()
    final = Blob(upload.blob_key, path, size, base64.b64encode(digest).decode(), digest.hex(), f'"{digest.hex()}"')
    state.put_blob(final)
    return {"digest": final.b64md5}


def commit_artifact(ctx, args: dict) -> dict:
    data = args.get("input") or args
    state: ServerState = ctx.state
    art = get_artifact(ctx, data.get("artifactID"))
    manifest = state.blob(art.manifest_blob_key) if art.manifest_blob_key else None
    if manifest is None:
        raise GqlFieldError("artifact manifest was not uploaded", code="FAILED_PRECONDITION")
    contents = json.loads(manifest.read_bytes()).get("contents", {})
    with state.lock:
        files = {}
        for path, entry in contents.items():
            digest = entry.get("digest")
            key = content_key(art.entity, digest) if entry.get("ref") is None else None
            blob = state.blobs.get(key) if key else None
            if key and blob is None:
                raise GqlFieldError(f"file {path!r} of the manifest was never uploaded", code="FAILED_PRECONDITION")
            if blob is not None and blob.b64md5 != digest:
                raise GqlFieldError(f"file {path!r} digest mismatch", code="FAILED_PRECONDITION")
            files[path] = ArtifactFile(path, digest, key, entry.get("birthArtifactID") or art.id, entry.get("size"))
        art.files = files
        if art.state != "COMMITTED":
            committed = [a for a in state.artifacts_of_collection(art.entity, art.project, art.collection) if a.state == "COMMITTED"]
            art.version_index = len(committed)
            art.state = "COMMITTED"
        set_alias(state, art, "latest")
        for alias in getattr(art, "pending_aliases", []):
            set_alias(state, art, alias)
    return {"artifact": {"id": art.id, "digest": art.digest, "versionIndex": art.version_index}}


def use_artifact(ctx, args: dict) -> dict:
    data = args.get("input") or args
    art = get_artifact(ctx, data.get("artifactID"))
    entity = ctx.entity(data.get("entityName"))
    run = ctx.state.run(entity, data.get("projectName"), data.get("runName"))
    if run is None:
        raise GqlFieldError("run not found", code="NOT_FOUND")
    with ctx.state.lock:
        if art.id not in run.input_artifacts:
            run.input_artifacts.append(art.id)
        key = (run.entity, run.project, run.name)
        if key not in art.used_by:
            art.used_by.append(key)
    return {"artifact": artifact_node(ctx, art)}


def upsert_view(ctx, args: dict) -> dict:
    from ._state import View

    data = args.get("input") or args
    entity = ctx.entity(data.get("entityName"))
    state: ServerState = ctx.state
    with state.lock:
        view = state.views.get(data.get("id")) if data.get("id") else None
        inserted = view is None
        if view is None:
            view_id = node_id("View", secrets.token_hex(6))
            view = View(view_id, entity, data.get("projectName"), data.get("name") or view_id,
                        data.get("displayName"), data.get("description"), data.get("type") or "runs",
                        data.get("spec") or "{}")
            state.views[view_id] = view
            state.projects.add((entity, view.project))
        else:
            for key, attr in (("displayName", "display_name"), ("description", "description"), ("spec", "spec"), ("name", "name")):
                if data.get(key) is not None:
                    setattr(view, attr, data[key])
            view.updated_at = utcnow()
    return {"view": view_node(ctx, view), "inserted": inserted}


def root_resolvers(ctx) -> dict:
    def artifact_by_id(args: dict) -> dict | None:
        art = ctx.state.artifacts.get(args.get("id"))
        if art is None:
            return None
        ctx.entity(art.entity)
        return artifact_node(ctx, art)

    def client_id_mapping(args: dict) -> dict | None:
        with ctx.state.lock:
            art = next((a for a in ctx.state.artifacts.values() if a.client_id == args.get("clientID")), None)
        return {"serverID": art.id} if art else None

    def view(args: dict) -> dict | None:
        found = ctx.state.views.get(args.get("id"))
        return view_node(ctx, found) if found else None

    return {
        "createArtifact": lambda a: create_artifact(ctx, a),
        "createArtifactManifest": lambda a: create_artifact_manifest(ctx, a),
        "updateArtifactManifest": lambda a: update_artifact_manifest(ctx, a),
        "createArtifactFiles": lambda a: create_artifact_files(ctx, a),
        "completeMultipartUploadArtifact": lambda a: complete_multipart(ctx, a),
        "commitArtifact": lambda a: commit_artifact(ctx, a),
        "useArtifact": lambda a: use_artifact(ctx, a),
        "upsertView": lambda a: upsert_view(ctx, a),
        "artifact": artifact_by_id,
        "clientIDMapping": client_id_mapping,
        "view": view,
    }


def on_blob_stored(state: ServerState, blob: Blob) -> None:
    """Hook for storage PUTs (nothing to do: artifacts resolve content-addressed blobs)."""
    return None
