"""A destination run's files: proxied uploads, multipart through the tracking server's ``mpu``
endpoints when the server offers them (S3's part rules), single PUTs otherwise."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import Any, TYPE_CHECKING

import anyio
import orjson

from adapters.mlflow._client import (
    ARTIFACTS_API,
    MlflowRest,
    proxied_artifact_path,
)
from adapters.mlflow._spool import ReplayableStream
from core.errors import FatalError
from core.model import FileRef, RunRecord

if TYPE_CHECKING:
    from adapters.mlflow._destination import MlflowDestination, _DestRun


class ArtifactWrites:
    """``write_file`` of ``MlflowRunWriter`` (a mixin: it shares the writer's run and client)."""

    destination: MlflowDestination
    record: RunRecord
    dest: _DestRun
    dest_id: str

    @property
    def rest(self) -> MlflowRest:
        return self.destination.rest

    def _event(self, name: str, **fields: Any) -> None:
        self.destination.context.events(name, run=self.record.ref.id, **fields)

    # -- files ----------------------------------------------------------------------------------
    def _artifact_url(self, path: str) -> str:
        url = proxied_artifact_path(self.dest.artifact_uri, path)
        if url is None:
            raise FatalError(
                f"mlflow: destination run {self.dest_id} stores artifacts at {self.dest.artifact_uri!r}, "
                "which the tracking server does not proxy (run the server with --serve-artifacts and a "
                "default artifact root of mlflow-artifacts:/)",
                adapter="mlflow",
                run=self.record.ref.id,
            )
        return url

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        """Run files keep their path; members of a source artifact (W&B) go under a folder
        named after the artifact and its version (``name/v3/path``), so they cannot collide
        with run files nor with another version of the artifact."""
        path = file.path
        if file.artifact is not None:
            version = f"{file.artifact.version}/" if file.artifact.version else ""
            path = f"{file.artifact.name}/{version}{file.path}"
        url = self._artifact_url(path)
        config = self.destination.config
        if (
            file.size is not None
            and file.size >= config.multipart_threshold
            and self.destination.multipart_supported is not False
            and await self._multipart(path, file.size, data)
        ):
            return
        stream = ReplayableStream(data)
        try:
            await self.rest.http.upload(
                "PUT",
                url,
                stream.attempt,
                headers={"Content-Type": "application/octet-stream"},
                size=file.size,
            )
        finally:
            await stream.aclose()

    async def _multipart(self, path: str, size: int, data: AsyncIterator[bytes]) -> bool:
        """Multipart upload through the proxy; False (nothing consumed) when unsupported."""
        from adapters.s3 import plan_part_size  # the proxy stores parts in S3: S3's part rules

        config = self.destination.config
        part_size = plan_part_size(size, config.part_size or max(self.destination.context.part_bytes, 5 << 20))
        num_parts = max(1, -(-size // part_size))
        root = proxied_artifact_path(self.dest.artifact_uri, "")
        assert root is not None
        directory, name = posixpath.split(path)
        suffix = root[len(ARTIFACTS_API + "artifacts/") :] + (f"/{directory}" if directory else "")
        create_url = f"{ARTIFACTS_API}mpu/create/{suffix}"
        try:
            created = await self.rest.http.request_json(
                "POST", create_url, data=orjson.dumps({"path": name, "num_parts": num_parts}),
                headers={"Content-Type": "application/json"},
            )
        except FatalError as exc:
            # MLflow's _UnsupportedMultipartUploadException: 501 NOT_IMPLEMENTED
            if exc.code == "NOT_IMPLEMENTED" or exc.status == 501:
                self.destination.multipart_supported = False
                return False
            raise
        self.destination.multipart_supported = True
        upload_id = created["upload_id"]
        credentials = sorted(created["credentials"], key=lambda c: int(c["part_number"]))
        try:
            parts = []
            buffer = bytearray()
            index = 0

            async def send_part(payload: bytes) -> None:
                credential = credentials[index]
                headers = await self.destination.presigned.upload(
                    "PUT", credential["url"], lambda: payload, headers=credential.get("headers") or {}, size=len(payload)
                )
                parts.append(
                    {"part_number": int(credential["part_number"]), "etag": headers.get("ETag", ""), "url": credential["url"]}
                )

            async for piece in data:
                buffer += piece
                while len(buffer) >= part_size and index < num_parts - 1:
                    await send_part(bytes(buffer[:part_size]))
                    del buffer[:part_size]
                    index += 1
            await send_part(bytes(buffer))
            await self.rest.http.request_json(
                "POST", f"{ARTIFACTS_API}mpu/complete/{suffix}",
                data=orjson.dumps({"path": name, "upload_id": upload_id, "parts": parts}),
                headers={"Content-Type": "application/json"},
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self.rest.http.request_json(
                        "POST", f"{ARTIFACTS_API}mpu/abort/{suffix}",
                        data=orjson.dumps({"path": name, "upload_id": upload_id}),
                        headers={"Content-Type": "application/json"},
                    )
                except Exception as abort_error:  # the original failure matters more
                    self._event("multipart_abort_failed", path=path, error=str(abort_error))
            raise
        return True
