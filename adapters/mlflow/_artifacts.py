"""A destination run's artifact area, chosen by its artifact root, as MLflow's own client does:

- ``mlflow-artifacts:/...`` roots go through the tracking server's proxy (``ProxiedArea``):
  single PUTs, or multipart through the ``mpu`` endpoints when the server offers them;
- ``s3://...`` roots (a server run with ``--default-artifact-root s3://...``, or an experiment
  whose ``artifact_location`` is in S3) are written straight to the bucket (``_s3_artifacts``);
- any other root (``gs://``, ``wasbs://``, ``hdfs://``, a server-local path) is an
  ``UnsupportedArea``: every use raises one error naming the run, so runs without files (or a
  migration with artifacts off) still go through.

Every area offers the same five operations, which run files and the side files of W&B runs
(``_side_files``) are written with.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

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

_OCTETS = {"Content-Type": "application/octet-stream"}


class ArtifactArea(Protocol):
    """One destination run's artifact tree; paths are relative to the run's artifact root."""

    async def write(self, path: str, data: AsyncIterator[bytes], size: int | None) -> None:
        """Store the stream as the file ``path`` (complete or not at all)."""

    def read(self, path: str) -> AsyncIterator[bytes]:
        """The bytes of the file ``path``."""

    async def list(self, folder: str) -> list[tuple[str, bool]]:
        """``(path, is_dir)`` of the entries directly under ``folder``."""

    async def delete(self, path: str) -> None:
        """Remove the file ``path``, or everything under the folder ``path``."""


async def one_piece(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


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

    def artifact_area(self) -> ArtifactArea:
        """Where this run's files go, from its artifact root (see the module docstring)."""
        root = self.dest.artifact_uri
        if root.startswith("mlflow-artifacts:"):
            return ProxiedArea(self.destination, self.dest_id, root, self._event)
        if root.startswith("s3://"):
            return self.destination.direct_s3.area(root)
        return UnsupportedArea(self._unsupported(root))

    def _unsupported(self, root: str) -> FatalError:
        scheme = root.split(":", 1)[0] + "://" if "://" in root else "a path on the tracking server"
        name = f" ({self.record.display_name!r})" if self.record.display_name else ""
        return FatalError(
            f"mlflow: run {self.record.ref.id}{name}: its destination run {self.dest_id} keeps artifacts at "
            f"{root!r} ({scheme}), which runferry cannot write: it writes through the tracking server's "
            "proxy (mlflow-artifacts:/) or straight to s3:// roots. Give the experiment one of those as its "
            "artifact location, or copy without files ([transfer] artifacts = false)",
            adapter="mlflow",
            run=self.record.ref.id,
        )

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        """Run files keep their path; members of a source artifact (W&B) go under a folder
        named after the artifact and its version (``name/v3/path``), so they cannot collide
        with run files nor with another version of the artifact."""
        path = file.path
        if file.artifact is not None:
            version = f"{file.artifact.version}/" if file.artifact.version else ""
            path = f"{file.artifact.name}/{version}{file.path}"
        await self.artifact_area().write(path, data, file.size)


class UnsupportedArea:
    """A root runferry cannot write: every operation raises the error made for the run."""

    def __init__(self, error: FatalError) -> None:
        self.error = error

    async def write(self, path: str, data: AsyncIterator[bytes], size: int | None) -> None:
        raise self.error

    async def read(self, path: str) -> AsyncGenerator[bytes, None]:
        raise self.error
        yield b""  # pragma: no cover - makes this an async generator

    async def list(self, folder: str) -> list[tuple[str, bool]]:
        raise self.error

    async def delete(self, path: str) -> None:
        raise self.error


class ProxiedArea:
    """``mlflow-artifacts:/`` roots through the tracking server: single PUTs, or multipart via
    ``mpu`` when the server offers it (S3's part rules) and the file is large enough."""

    def __init__(self, destination: MlflowDestination, run_id: str, root: str, event: Any) -> None:
        self.destination = destination
        self.rest = destination.rest
        self.run_id = run_id
        self.root = root
        self._event = event

    def url(self, path: str) -> str:
        url = proxied_artifact_path(self.root, path)
        assert url is not None  # chosen for mlflow-artifacts: roots only
        return url

    async def write(self, path: str, data: AsyncIterator[bytes], size: int | None) -> None:
        config = self.destination.config
        if (
            size is not None
            and size >= config.multipart_threshold
            and self.destination.multipart_supported is not False
            and await self._multipart(path, size, data)
        ):
            return
        stream = ReplayableStream(data)
        try:
            await stream.fill()  # read here, not in aiohttp's writer task (see adapters/mlflow/_spool.py)
            await self.rest.http.upload("PUT", self.url(path), stream.attempt, headers=_OCTETS, size=size)
        finally:
            await stream.aclose()

    async def read(self, path: str) -> AsyncGenerator[bytes, None]:
        async for piece in self.rest.http.download(self.url(path)):
            yield piece

    async def list(self, folder: str) -> list[tuple[str, bool]]:
        return [(e["path"], bool(e.get("is_dir"))) for e in await self.rest.list_artifacts(self.run_id, folder)]

    async def delete(self, path: str) -> None:
        await self.rest.http.request_json("DELETE", self.url(path))

    async def _multipart(self, path: str, size: int, data: AsyncIterator[bytes]) -> bool:
        """Multipart upload through the proxy; False (nothing consumed) when unsupported."""
        from adapters.s3 import plan_part_size  # the proxy stores parts in S3: S3's part rules

        config = self.destination.config
        part_size = plan_part_size(size, config.part_size or max(self.destination.context.part_bytes, 5 << 20))
        num_parts = max(1, -(-size // part_size))
        root = self.url("")
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
