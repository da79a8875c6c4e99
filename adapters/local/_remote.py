"""An export kept in an object store: ``path = "s3://bucket/prefix"`` for the local adapters.

The export has the same layout and the same bytes as a local one (``_layout``). The
destination builds every file exactly as the local export does, in a private staging
directory, and publishes it as one complete object once it is finished (a finished Parquet
part, the merged history, run.json, the run tables); run files stream straight into the
bucket. An object therefore only ever exists complete: S3 has no rename, but a PUT or a
completed multipart upload appears whole or not at all, and a failed multipart upload is
aborted. After a crash the staging directory is rebuilt from the bucket (``open_run``).

Every request goes through ``adapters.s3.S3Store`` and its adaptive per-prefix limiter; the
endpoint and keys come from the ``s3_*`` keys of the config (else the usual AWS chain).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

import anyio

from adapters.local._io import blocking, read_pieces, write_piece
from core.errors import AuthError, ConfigError, NotFoundError
from core.probe import PROBE_PREFIX
from core.protocols import AdapterContext

if TYPE_CHECKING:  # botocore is heavy to import; only s3:// exports need it
    from adapters.s3 import S3Store, S3Url

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PIECE = 8 << 20


def is_remote(path: str) -> bool:
    return path.startswith("s3://")


def check_remote_path(path: str) -> None:
    """``s3://bucket[/prefix]`` with a valid bucket name and no empty or dot segments.

    :raises ValueError: saying what is wrong (the config loader names the file and key).
    """
    if "://" in path and not is_remote(path):
        raise ValueError(f"path {path!r}: only s3:// object stores are supported (or a local directory)")
    if not is_remote(path):
        return
    bucket, _, prefix = path[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"path {path!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.' or '-') "
            "— write s3://bucket/prefix"
        )
    segments = prefix.rstrip("/").split("/") if prefix.rstrip("/") else []
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"path {path!r}: the prefix has an empty, '.' or '..' segment — write s3://bucket/prefix")


@dataclass(frozen=True, kw_only=True)
class S3Access:
    """How an ``s3://`` export path is reached (fields shared by the local configs)."""

    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id_env: str = ""
    s3_secret_access_key_env: str = ""
    s3_session_token_env: str = ""
    s3_sse_customer_key_env: str = ""  # SSE-C: a variable holding the base64 256-bit key


class RemoteRoot:
    """``s3://bucket/prefix`` as an export root: relative POSIX paths in, objects out."""

    def __init__(self, path: str, access: S3Access, context: AdapterContext, *, name: str) -> None:
        bucket, _, prefix = path[len("s3://") :].partition("/")
        self.path = path
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.access = access
        self.context = context
        self.name = name
        self._store: S3Store | None = None

    async def __aenter__(self) -> RemoteRoot:
        from adapters.s3 import S3Config, S3Store

        a = self.access
        config = S3Config(
            endpoint_url=a.s3_endpoint_url or None,
            region=a.s3_region,
            access_key_id_env=a.s3_access_key_id_env,
            secret_access_key_env=a.s3_secret_access_key_env,
            session_token_env=a.s3_session_token_env,
            sse_customer_key_env=a.s3_sse_customer_key_env,
            part_size=max(self.context.part_bytes, 5 << 20),
            multipart_threshold=max(self.context.part_bytes, 5 << 20),
        )
        self._store = await S3Store(config, self.context, name=self.name).__aenter__()
        try:
            async for _ in self.store.list(self.url("runs/"), page_size=1):
                break  # the bucket answers and takes our keys
        except NotFoundError:
            await self.__aexit__(None, None, None)
            raise ConfigError(f"path = {self.path!r}: bucket {self.bucket!r} does not exist — create it first") from None
        except AuthError as exc:
            await self.__aexit__(None, None, None)
            raise ConfigError(f"path = {self.path!r}: the object store refused our keys ({exc})") from None
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.__aexit__(exc_type, exc, tb)

    @property
    def store(self) -> S3Store:
        if self._store is None:
            raise RuntimeError("RemoteRoot used outside 'async with'")
        return self._store

    def url(self, rel: str) -> S3Url:
        return self._root().joined(rel)

    def relative(self, key: str) -> str:
        return self._root().relative(key)

    def _root(self) -> S3Url:
        from adapters.s3 import S3Url

        return S3Url(self.bucket, self.prefix)

    async def probe_write(self) -> None:
        """Create and remove a probe object, as a local export probes its directory.

        :raises ConfigError: when the store refuses the write.
        """
        probe = f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            await self.put(probe, b"")
            await self.delete(probe)
        except AuthError as exc:
            raise ConfigError(f"path = {self.path!r}: the object store refused a write ({exc})") from None

    # -- writing (complete objects only) ---------------------------------------------------------
    async def put(self, rel: str, data: bytes) -> None:
        await self.store.put_stream(self.url(rel), _one(data), size=len(data))

    async def put_stream(self, rel: str, data: AsyncIterator[bytes], size: int | None) -> None:
        await self.store.put_stream(self.url(rel), data, size=size)

    async def upload(self, local: Path, rel: str) -> None:
        """Publish a finished local file as the object ``rel``.

        Given as an opener (the file can be read twice), so that files up to the store's
        ``single_put_threshold`` go as one streamed PUT, and a retry re-reads the file.
        """
        size = (await blocking(local.stat)).st_size
        await self.store.put_stream(self.url(rel), lambda: read_pieces(local, _PIECE), size=size)

    async def delete(self, rel: str) -> None:
        await self.store.delete(self.url(rel))

    async def delete_under(self, rel: str) -> None:
        for found, _ in await self.list(rel.rstrip("/") + "/"):
            await self.delete(found)

    # -- reading ---------------------------------------------------------------------------------
    async def list(self, rel_prefix: str) -> list[tuple[str, int]]:
        """``(relative path, size)`` of every object whose path starts with ``rel_prefix``."""
        return [(self.relative(o.url.key), o.size) async for o in self.store.list(self.url(rel_prefix))]

    async def read(self, rel: str) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(self.store.get_stream(self.url(rel))) as pieces:
            async for piece in pieces:
                yield piece

    async def get(self, rel: str) -> bytes:
        return b"".join([piece async for piece in self.read(rel)])

    async def download(self, rel: str, local: Path) -> None:
        """The object ``rel`` into the file ``local`` (parents created), streamed."""

        def open_target() -> BinaryIO:
            local.parent.mkdir(parents=True, exist_ok=True)
            return open(local, "wb")

        handle = await blocking(open_target)
        try:
            async for piece in self.read(rel):
                await write_piece(handle, piece)
        finally:
            with anyio.CancelScope(shield=True):
                await blocking(handle.close)


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data
