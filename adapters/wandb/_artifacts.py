"""W&B artifacts, the full protocol: manifest + digest as the SDK computes them, then
CreateArtifact -> CreateArtifactManifest -> CreateArtifactFiles -> parallel PUTs (multipart with
per-part Content-MD5 above the threshold, CompleteMultipartUploadArtifact) -> manifest upload ->
CommitArtifact.

Dedup: when the server already holds a committed artifact with the same digest, CreateArtifact
returns it COMMITTED and nothing is uploaded; files whose content the server already has come
back without an upload URL and are not sent again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from adapters.http import HttpClient
from core.errors import FatalError

from . import _gql
from ._spool import Spooled

DIGEST_HEADER = b"wandb-artifact-manifest-v1\n"
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, ``_ . -``; anything else becomes ``_``."""
    return _NAME_BAD.sub("_", text)[:128] or "artifact"


def manifest_digest(entries: Mapping[str, str]) -> str:
    """Hex MD5 over the header and sorted ``path:b64md5`` lines (``ArtifactManifestV1.digest``)."""
    md5 = hashlib.md5(DIGEST_HEADER)
    for path in sorted(entries):
        md5.update(f"{path}:{entries[path]}\n".encode())
    return md5.hexdigest()


def manifest_bytes(members: Mapping[str, Spooled], birth_ids: Mapping[str, str]) -> bytes:
    """The manifest file as the SDK writes it (``to_manifest_json``, ``indent=4``)."""
    contents = {
        path: {"digest": members[path].md5_b64, "birthArtifactID": birth_ids[path], "size": members[path].size}
        for path in sorted(members)
    }
    document = {
        "version": 1,
        "storagePolicy": "wandb-storage-policy-v1",
        "storagePolicyConfig": {"storageLayout": "V2"},
        "contents": contents,
    }
    return json.dumps(document, indent=4).encode()


def parse_headers(raw: list[str] | None) -> dict[str, str]:
    """``["Name:value", ...]`` (W&B's uploadHeaders) -> dict."""
    headers: dict[str, str] = {}
    for item in raw or []:
        name, _, value = item.partition(":")
        if name:
            headers[name.strip()] = value.strip()
    return headers


@dataclass
class PendingArtifact:
    """Members staged for one artifact of one run."""

    name: str
    type: str
    description: str | None = None
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Spooled] = field(default_factory=dict)
    # a copied W&B artifact version (``ArtifactRef.source_project`` set): where it came from
    version: str | None = None
    source_project: str | None = None
    source_digest: str | None = None

    @property
    def copied(self) -> bool:
        version = self.version or ""
        return self.source_project is not None and version[:1] == "v" and version[1:].isdigit()

    def meta(self) -> dict[str, Any]:
        """What ``RunStaging`` keeps beside the members (restored by ``from_meta``)."""
        return {"name": self.name, "type": self.type, "description": self.description,
                "aliases": list(self.aliases), "metadata": self.metadata, "version": self.version,
                "source_project": self.source_project, "source_digest": self.source_digest}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], members: dict[str, Spooled] | None = None) -> PendingArtifact:
        return cls(name=meta["name"], type=meta["type"], description=meta.get("description"),
                   aliases=tuple(meta.get("aliases") or ()), metadata=meta.get("metadata") or {},
                   members=members or {}, version=meta.get("version"),
                   source_project=meta.get("source_project"), source_digest=meta.get("source_digest"))

    def discard(self) -> None:
        for spooled in self.members.values():
            spooled.discard()
        self.members.clear()


@dataclass(frozen=True)
class ArtifactTarget:
    entity: str
    project: str
    run_id: str
    logged: bool = True
    """False: the version is created for a run that uses it (CreateArtifact without runName,
    as the SDK does for ``use_artifact`` of a new artifact), not one that logged it."""


class ArtifactUploader:
    """Commits staged artifacts (see module docstring)."""

    def __init__(
        self,
        api: HttpClient,
        storage: HttpClient,
        *,
        multipart_threshold: int,
        concurrency: int,
        events: Any,
    ) -> None:
        self.api = api
        self.storage = storage
        self.multipart_threshold = multipart_threshold
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.events = events

    async def commit(self, target: ArtifactTarget, art: PendingArtifact,
                     before_commit: Callable[[], Awaitable[object]] | None = None) -> dict[str, Any]:
        """Upload and commit; return ``{"id", "digest", "deduplicated", "uploaded_files"}``.

        ``before_commit`` is awaited after every byte is uploaded, just before ``CommitArtifact``
        (the call that gives the version its number): a copied version waits there for its
        predecessor, so its uploads overlap the predecessor's instead of following them."""
        digests = {path: spooled.md5_b64 for path, spooled in art.members.items()}
        digest = manifest_digest(digests)
        created = await _gql.call(self.api, _gql.CREATE_ARTIFACT, {"input": {
            "entityName": target.entity,
            "projectName": target.project,
            "artifactTypeName": art.type,
            "artifactCollectionName": art.name,
            "runName": target.run_id if target.logged else None,
            "digest": digest,
            "digestAlgorithm": "MANIFEST_MD5",
            "description": art.description,
            "aliases": [{"artifactCollectionName": art.name, "alias": a} for a in art.aliases],
            "metadata": json.dumps(art.metadata) if art.metadata else None,
            "clientID": secrets.token_hex(16),
            "sequenceClientID": secrets.token_hex(16),
            "enableDigestDeduplication": True,
        }}, name="CreateArtifact")
        artifact = created["createArtifact"]["artifact"]
        artifact_id = artifact["id"]
        if artifact.get("state") == "COMMITTED":
            self.events("artifact_deduplicated", artifact=art.name, digest=digest)
            return {"id": artifact_id, "digest": digest, "deduplicated": True, "uploaded_files": 0,
                    "version_index": artifact.get("versionIndex")}
        base = ((artifact.get("artifactSequence") or {}).get("latestArtifact") or {}).get("id")
        common = {"artifactID": artifact_id, "baseArtifactID": base, "name": "wandb_manifest.json",
                  "entityName": target.entity, "projectName": target.project, "runName": target.run_id,
                  "manifestType": "FULL"}
        made = await _gql.call(self.api, _gql.CREATE_ARTIFACT_MANIFEST,
                               {**common, "digest": "", "includeUpload": False}, name="CreateArtifactManifest")
        manifest_id = made["createArtifactManifest"]["artifactManifest"]["id"]
        specs = []
        for path in sorted(art.members):
            spooled = art.members[path]
            spec: dict[str, Any] = {"artifactID": artifact_id, "artifactManifestID": manifest_id,
                                    "name": path, "md5": spooled.md5_b64}
            if spooled.size >= self.multipart_threshold and len(spooled.part_md5_hex) > 1:
                spec["uploadPartsInput"] = [
                    {"partNumber": i + 1, "hexMD5": h} for i, h in enumerate(spooled.part_md5_hex)
                ]
            specs.append(spec)
        nodes: dict[str, dict[str, Any]] = {}
        for start in range(0, len(specs), 1000):
            answer = await _gql.call(self.api, _gql.CREATE_ARTIFACT_FILES, {"input": {
                "artifactFiles": specs[start:start + 1000], "storageLayout": "V2"}}, name="CreateArtifactFiles")
            for edge in answer["createArtifactFiles"]["files"]["edges"]:
                nodes[edge["node"]["name"]] = edge["node"]
        birth_ids = {path: (nodes[path].get("artifact") or {}).get("id") or artifact_id for path in art.members}
        uploaded = 0
        async with anyio.create_task_group() as tg:
            for path, node in nodes.items():
                if node.get("uploadUrl") or node.get("uploadMultipartUrls"):
                    uploaded += 1
                    tg.start_soon(self._upload_member, artifact_id, art.members[path], node)
        manifest = manifest_bytes(art.members, birth_ids)
        manifest_b64 = base64.b64encode(hashlib.md5(manifest).digest()).decode()
        made = await _gql.call(self.api, _gql.CREATE_ARTIFACT_MANIFEST,
                               {**common, "digest": manifest_b64, "includeUpload": True}, name="CreateArtifactManifest")
        file = made["createArtifactManifest"]["artifactManifest"]["file"]
        if not file.get("uploadUrl"):
            raise FatalError(f"wandb: no upload URL for the manifest of artifact {art.name}", adapter="wandb")
        headers = parse_headers(file.get("uploadHeaders"))
        await self.storage.upload("PUT", file["uploadUrl"], lambda: manifest, headers=headers, size=len(manifest))
        if before_commit is not None:
            await before_commit()
        committed = await _gql.call(self.api, _gql.COMMIT_ARTIFACT, {"artifactID": artifact_id}, name="CommitArtifact")
        self.events("artifact_committed", artifact=art.name, files=len(art.members), uploaded=uploaded)
        return {"id": artifact_id, "digest": digest, "deduplicated": False, "uploaded_files": uploaded,
                "version_index": ((committed.get("commitArtifact") or {}).get("artifact") or {}).get("versionIndex")}

    async def _upload_member(self, artifact_id: str, spooled: Spooled, node: dict[str, Any]) -> None:
        headers = parse_headers(node.get("uploadHeaders"))
        multipart = node.get("uploadMultipartUrls")
        if not multipart:
            async with self.limiter:
                headers.setdefault("Content-MD5", spooled.md5_b64)
                await self.storage.upload("PUT", node["uploadUrl"], lambda: spooled.read(),
                                          headers=headers, size=spooled.size)
            return
        parts = sorted(multipart["uploadUrlParts"], key=lambda p: p["partNumber"])
        etags: dict[int, str] = {}

        async def put_part(number: int, url: str) -> None:
            start = (number - 1) * spooled.part_size
            length = min(spooled.part_size, spooled.size - start)
            md5_hex = spooled.part_md5_hex[number - 1]
            part_headers = {**headers, "Content-MD5": base64.b64encode(bytes.fromhex(md5_hex)).decode()}
            async with self.limiter:
                answer = await self.storage.upload("PUT", url, lambda: spooled.read(start, length),
                                                   headers=part_headers, size=length)
            etag = answer.get("ETag")
            if not etag:
                raise FatalError(f"wandb: multipart part {number} answered without an ETag", adapter="wandb")
            etags[number] = etag.strip('"')

        try:
            async with anyio.create_task_group() as tg:
                for part in parts:
                    tg.start_soon(put_part, int(part["partNumber"]), part["uploadUrl"])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(artifact_id, node, multipart["uploadID"])
            raise
        await _gql.call(self.api, _gql.COMPLETE_MULTIPART, {
            "completeMultipartAction": "Complete",
            "completedParts": [{"partNumber": n, "hexMD5": etags[n]} for n in sorted(etags)],
            "artifactID": artifact_id, "storagePath": node["storagePath"], "uploadID": multipart["uploadID"],
        }, name="CompleteMultipartUploadArtifact")

    async def _abort(self, artifact_id: str, node: dict[str, Any], upload_id: str) -> None:
        try:
            await _gql.call(self.api, _gql.COMPLETE_MULTIPART, {
                "completeMultipartAction": "Abort", "completedParts": [], "artifactID": artifact_id,
                "storagePath": node["storagePath"], "uploadID": upload_id,
            }, name="CompleteMultipartUploadArtifact")
        except Exception as exc:  # noqa: BLE001 - the original failure matters more; uploads expire
            self.events("multipart_abort_failed", error=str(exc)[:200])
