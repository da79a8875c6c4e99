"""Destination runs whose artifact root is ``s3://...``: files written straight to the bucket.

A server run with ``--default-artifact-root s3://...`` (and usually ``--no-serve-artifacts``)
hands its clients ``s3://`` roots and leaves the writing to them. runferry writes them as
MLflow's own client does (``S3ArtifactRepository``): the endpoint from
``MLFLOW_S3_ENDPOINT_URL``, credentials from the AWS chain (or the variables the ``s3_*_env``
keys name), key = root + relative path, ``ContentType`` / ``ContentEncoding`` guessed from the
name, plus ``MLFLOW_S3_EXPECTED_BUCKET_OWNER`` and ``MLFLOW_S3_UPLOAD_EXTRA_ARGS``. The bytes go
through ``adapters.s3.S3Store``: streamed, one PUT up to the threshold, parallel multipart
above it (never a half-written object), each request under the adaptive per-prefix limiter.

The store (and botocore, heavy to import) is opened at the first ``s3://`` root only.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from mimetypes import guess_type
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from core.errors import ConfigError
from core.protocols import AdapterContext

if TYPE_CHECKING:  # botocore is heavy to import; only s3:// roots need it
    from adapters.s3 import S3Config, S3Store, S3Url


class DirectS3:
    """The bucket side of a destination's ``s3://`` roots; ``async with`` it."""

    def __init__(
        self,
        context: AdapterContext,
        *,
        part_size: int,
        multipart_threshold: int,
        credential_envs: tuple[str, str, str] = ("", "", ""),
        sse_customer_key_env: str = "",
        name: str = "mlflow-s3",
    ) -> None:
        self.context = context
        self.name = name
        self._part_size = part_size
        self._threshold = multipart_threshold
        self._credential_envs = credential_envs
        self._sse_customer_key_env = sse_customer_key_env
        self._upload_args: dict[str, Any] = {}
        self._store: S3Store | None = None
        self._lock = anyio.Lock()

    async def __aenter__(self) -> DirectS3:
        self._upload_args = mlflow_upload_args()
        if self._sse_customer_key_env:  # a malformed key stops the start, not a run
            from adapters.s3._encryption import sse_c_from_env

            sse_c_from_env(self._sse_customer_key_env, "AES256")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.__aexit__(exc_type, exc, tb)

    def config(self) -> S3Config:
        from adapters.s3 import S3Config

        access, secret, token = self._credential_envs
        return S3Config.from_mlflow_env(
            part_size=self._part_size,
            multipart_threshold=self._threshold,
            access_key_id_env=access,
            secret_access_key_env=secret,
            session_token_env=token,
            sse_customer_key_env=self._sse_customer_key_env,
        )

    async def store(self) -> S3Store:
        async with self._lock:
            if self._store is None:
                from adapters.s3 import S3Store

                self._store = await S3Store(self.config(), self.context, name=self.name).__aenter__()
            return self._store

    def area(self, root: str) -> S3Area:
        return S3Area(self, root)

    def upload_args(self, path: str) -> dict[str, Any]:
        """What MLflow's ``_upload_file`` passes as ``ExtraArgs`` for a file named ``path``."""
        args: dict[str, Any] = {}
        kind, encoding = guess_type(path)
        if kind is not None:
            args["ContentType"] = kind
        if encoding is not None:
            args["ContentEncoding"] = encoding
        args.update(self._upload_args)
        return args


def mlflow_upload_args() -> dict[str, Any]:
    """``MLFLOW_S3_EXPECTED_BUCKET_OWNER`` and ``MLFLOW_S3_UPLOAD_EXTRA_ARGS``, as MLflow reads them.

    :raises ConfigError: when the extra arguments are not a JSON object.
    """
    args: dict[str, Any] = {}
    owner = os.environ.get("MLFLOW_S3_EXPECTED_BUCKET_OWNER")
    if owner:
        args["ExpectedBucketOwner"] = owner
    extra = os.environ.get("MLFLOW_S3_UPLOAD_EXTRA_ARGS")
    if extra:
        try:
            parsed = json.loads(extra)
        except ValueError as exc:
            raise ConfigError(f"MLFLOW_S3_UPLOAD_EXTRA_ARGS is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError("MLFLOW_S3_UPLOAD_EXTRA_ARGS must be a JSON object")
        args.update(parsed)
    return args


class S3Area:
    """One run's ``s3://bucket/prefix`` root (the ``ArtifactArea`` of ``_artifacts``)."""

    def __init__(self, direct: DirectS3, root: str) -> None:
        from adapters.s3 import S3Url

        self.direct = direct
        parsed = S3Url.parse(root)
        self.bucket = parsed.bucket
        self.prefix = parsed.key.strip("/")

    def url(self, path: str) -> S3Url:
        from adapters.s3 import S3Url

        root, key = S3Url(self.bucket, self.prefix), path.strip("/")
        return root.joined(key) if key else root

    def relative(self, key: str) -> str:
        from adapters.s3 import S3Url

        return S3Url(self.bucket, self.prefix).relative(key)

    async def write(self, path: str, data: AsyncIterator[bytes], size: int | None) -> None:
        store = await self.direct.store()
        await store.put_stream(self.url(path), data, size=size, extra_args=self.direct.upload_args(path))

    async def read(self, path: str) -> AsyncGenerator[bytes, None]:
        store = await self.direct.store()
        async for piece in store.get_stream(self.url(path)):
            yield piece

    async def list(self, folder: str) -> list[tuple[str, bool]]:
        """Direct children of ``folder`` (paths relative to the root, as MLflow lists them)."""
        store = await self.direct.store()
        base = self.url(folder)
        prefix = f"{base.key}/" if base.key else ""
        entries: dict[str, bool] = {}
        async for found in store.list(type(base)(base.bucket, prefix)):
            rest = found.url.key[len(prefix) :]
            if not rest:
                continue
            head, slash, _ = rest.partition("/")
            entries[self.relative(prefix + head)] = bool(slash)
        return sorted(entries.items())

    async def delete(self, path: str) -> None:
        store = await self.direct.store()
        target = self.url(path)
        async for found in store.list(type(target)(target.bucket, target.key + "/")):
            await store.delete(found.url)
        await store.delete(target)  # a missing key is no error in S3
