"""S3-compatible object stores as a place to read and write artifact bytes (aiobotocore).

``S3Store`` streams objects in and out without ever holding more than a few parts in memory:

* ``put_stream``: one ``PutObject`` up to ``multipart_threshold``, otherwise a multipart upload
  whose part size grows with the object (10,000 parts at most), parts sent in parallel, each
  retried on its own, each checked with ``Content-MD5`` and its ETag, the whole checked against
  the multipart ETag; the upload is aborted (shielded from cancellation) if anything fails.
* ``get_stream``: ranged ``GET``s in parallel, yielded in order, verified against the object's
  ETag (plain MD5, or the MD5-of-part-MD5s of a multipart object when the ranges can follow the
  object's own parts). A mismatch raises ``TransientError`` after the last byte.
* ``copy``: server-side (``CopyObject``, or parallel ``UploadPartCopy`` above the threshold)
  within one store; ``copy_between`` streams from one store into another.
* ``head``, ``list``, ``delete``, ``list_open_uploads``.

Every request goes through the shared limiter of its *prefix* (``s3://host:port/bucket/seg``,
S3 limits requests per key prefix), with botocore's own retries switched off: throttles (503
SlowDown, 429, throttling codes) slow the prefix's pace, transient failures shrink its
concurrency, and the retry budget bounds retries. Credentials come from the usual AWS chain
(environment variables, ``profile``), or from the variables named by the ``*_env`` keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.to_thread
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from adapters.base import AdapterContext
from engine.errors import (
    AuthError,
    ConfigError,
    FatalError,
    NotFoundError,
    RetryableError,
    ThrottledError,
    TransientError,
)
from ratelimit import EndpointLimiter, LimiterRegistry, endpoint_of

T = TypeVar("T")

MIB = 1 << 20
MIN_PART = 5 * MIB  # S3: every part but the last is at least 5 MiB
MAX_PART = 5 * 1024 * MIB  # S3: at most 5 GiB per part (and per CopyObject)
MAX_PARTS = 10_000

# Error codes S3 and compatible stores use to say "slow down" (botocore's throttling list,
# plus the 503 SlowDown of S3 and B2); they are retried through the limiter's pacing.
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
     "RequestThrottledException", "TooManyRequests", "TooManyRequestsException",
     "RequestLimitExceeded", "BandwidthLimitExceeded", "ProvisionedThroughputExceededException",
     "EC2ThrottledException", "PriorRequestNotComplete"}
)
# Worth another attempt: the server failed or the bytes were damaged on the way (BadDigest).
TRANSIENT_CODES = frozenset(
    {"InternalError", "RequestTimeout", "RequestTimeoutException", "ServiceUnavailable",
     "BadDigest", "IncompleteBody", "XAmzContentSHA256Mismatch", "OperationAborted"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound", "404"})
AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "403", "401"}
)
_NETWORK_ERRORS = (
    EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
    ResponseStreamingError, aiohttp.ClientError, TimeoutError, ConnectionError,
)
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")


@dataclass(frozen=True, kw_only=True)
class S3Config:
    """Where the store is and how it moves bytes.

    Memory bound per transfer: ``(part_concurrency + 2) * part size`` for uploads and downloads.
    The part size is ``part_size``, grown for objects over ``part_size * 10000`` bytes.
    """

    endpoint_url: str | None = None  # None: AWS S3 of ``region``
    region: str = "us-east-1"
    profile: str | None = None
    access_key_id_env: str = ""  # empty: the usual AWS chain (AWS_ACCESS_KEY_ID, profile...)
    secret_access_key_env: str = ""
    session_token_env: str = ""
    addressing_style: str = "path"  # path | virtual | auto
    part_size: int = 8 * MIB
    multipart_threshold: int = 8 * MIB
    part_concurrency: int = 8
    copy_threshold: int = 64 * MIB  # server-side copies above this use parallel UploadPartCopy
    max_attempts: int = 10
    limiter_prefix_depth: int = 1  # key segments that make the throttling prefix
    connect_timeout: float = 30.0
    read_timeout: float = 120.0

    @classmethod
    def from_mlflow_env(cls, **overrides: Any) -> S3Config:
        """The store MLflow's own S3 artifact client would use: ``MLFLOW_S3_ENDPOINT_URL`` (if
        set) and the usual AWS credential chain; for reading ``s3://`` artifact URIs directly."""
        values: dict[str, Any] = {"endpoint_url": os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART or self.part_size > MAX_PART:
            raise ConfigError(f"s3: part_size must be between {MIN_PART} and {MAX_PART} bytes")
        if self.multipart_threshold < 0 or self.part_concurrency < 1 or self.max_attempts < 1:
            raise ConfigError("s3: multipart_threshold >= 0, part_concurrency >= 1, max_attempts >= 1")
        if self.addressing_style not in ("path", "virtual", "auto"):
            raise ConfigError("s3: addressing_style must be path, virtual or auto")


@dataclass(frozen=True, slots=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        """``s3://bucket/key`` (the key may be empty or a prefix)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/key URL: {url!r}")
        return cls(parts.netloc, parts.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    url: S3Url
    size: int
    etag: str  # without quotes
    last_modified: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PutResult:
    url: S3Url
    size: int
    etag: str
    parts: int  # 0 for a single PutObject / CopyObject


def plan_part_size(size: int | None, preferred: int) -> int:
    """The part size for an object of ``size`` bytes: ``preferred`` unless 10,000 parts of it
    are too few, then the next MiB multiple that fits. Raises ``FatalError`` beyond S3's limits."""
    part = max(preferred, MIN_PART)
    if size is not None and size > part * MAX_PARTS:
        part = math.ceil(math.ceil(size / MAX_PARTS) / MIB) * MIB
    if part > MAX_PART:
        raise FatalError(f"s3: object of {size} bytes exceeds S3's multipart limits")
    return part


def plan_ranges(size: int, part: int) -> list[tuple[int, int]]:
    """``(start, end_inclusive)`` byte ranges covering ``size`` bytes in ``part``-sized pieces."""
    return [(start, min(size, start + part) - 1) for start in range(0, size, part)]


def multipart_etag(md5_digests: list[bytes]) -> str:
    """S3's ETag of a multipart object: MD5 of the concatenated part MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(md5_digests)).hexdigest()}-{len(md5_digests)}"


async def md5_of(data: bytes) -> bytes:
    """MD5 off the event loop for big buffers (hashlib releases the GIL)."""
    if len(data) < MIB:
        return hashlib.md5(data).digest()
    return await anyio.to_thread.run_sync(lambda: hashlib.md5(data).digest())


def _unwrap(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The first real error of a task group's failure (cancellations are its echo)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _unwrap(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


class S3Store:
    """Streams objects in and out of one S3-compatible endpoint (see module docstring)."""

    Config = S3Config

    def __init__(self, config: S3Config, context: AdapterContext | None = None, *, name: str = "s3") -> None:
        self.config = config
        self.context = context or AdapterContext()
        self.name = name
        self._limiters: Any = self.context.limiters if self.context.limiters is not None else LimiterRegistry()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        endpoint = config.endpoint_url or f"https://s3.{config.region}.amazonaws.com"
        self._endpoint = endpoint_of(endpoint).replace("http://", "").replace("https://", "")

    def describe(self) -> str:
        return f"s3 endpoint {self.config.endpoint_url or self.config.region}"

    def same_endpoint(self, other: S3Store) -> bool:
        """Whether a server-side copy between the two stores is possible."""
        return (self.config.endpoint_url, self.config.region, self.config.profile) == (
            other.config.endpoint_url, other.config.region, other.config.profile
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        session = get_session()
        if self.config.profile:
            session.set_config_variable("profile", self.config.profile)
        credentials = {}
        for arg, env_name in (
            ("aws_access_key_id", self.config.access_key_id_env),
            ("aws_secret_access_key", self.config.secret_access_key_env),
            ("aws_session_token", self.config.session_token_env),
        ):
            if env_name:
                if not os.environ.get(env_name):
                    raise ConfigError(f"s3: environment variable {env_name} is not set")
                credentials[arg] = os.environ[env_name]
        client_config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},  # the limiter retries
            max_pool_connections=max(64, self.config.part_concurrency * 4),
            s3={"addressing_style": self.config.addressing_style},
            connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout,
            # botocore >= 1.36 adds CRC32 trailers by default, which several S3-compatible
            # stores reject; we verify with Content-MD5 and ETags instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.create_client(
                    "s3", region_name=self.config.region, endpoint_url=self.config.endpoint_url,
                    config=client_config, **credentials,
                )
            )
        except BaseException:
            await stack.aclose()
            raise
        if (self.config.endpoint_url or "https").startswith("http://"):
            # Over plain HTTP botocore signs a SHA-256 of every body, on the event loop; an
            # 8 MiB part costs ~20 ms of loop time. Hash it in a thread instead (same signature).
            for operation in ("PutObject", "UploadPart"):
                self._client.meta.events.register(f"before-sign.s3.{operation}", _hash_payload_in_thread)
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Store used outside 'async with'")
        return self._client

    # -- the retry loop ------------------------------------------------------------------

    def limiter_for(self, url: S3Url) -> EndpointLimiter:
        segments = url.key.split("/")[:-1][: self.config.limiter_prefix_depth]
        return self._limiters.get("/".join([f"s3://{self._endpoint}", url.bucket, *segments]))

    async def _call(self, url: S3Url, what: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run one S3 request through the prefix's limiter, retrying what may succeed later."""
        limiter = self.limiter_for(url)
        attempt, delay = 0, 0.0
        while True:
            attempt += 1
            error: RetryableError
            async with limiter.slot() as ticket:
                try:
                    result = await attempt_once()
                    ticket.success()
                    return result
                except ClientError as exc:
                    error = self._client_error(exc, url, what, ticket)
                except _NETWORK_ERRORS as exc:
                    ticket.failed()
                    error = TransientError(f"{self.name}: {what} {url}: {exc!r}", adapter=self.name)
                    error.__cause__ = exc
                except RetryableError as exc:  # raised by our own checks inside attempt_once
                    ticket.failed()
                    error = exc
            throttled = isinstance(error, ThrottledError)
            if attempt >= self.config.max_attempts or not limiter.allow_retry(throttled=throttled):
                raise error
            self.context.events("retry", endpoint=limiter.endpoint, error=str(error), attempt=attempt)
            delay = limiter.backoff(attempt, delay)
            await limiter.clock.sleep(delay)

    def _client_error(self, exc: ClientError, url: S3Url, what: str, ticket: Any) -> RetryableError:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        message = f"{self.name}: {what} {url} -> {status} {code}: {error.get('Message', '')}".rstrip(": ")
        if code in THROTTLE_CODES or status in (429, 503):
            headers = meta.get("HTTPHeaders", {})
            retry_after = None
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(headers.get("retry-after"))
            ticket.throttled(retry_after)
            self.context.events("throttle", endpoint=self.limiter_for(url).endpoint, status=status, retry_after=retry_after)
            failure: RetryableError = ThrottledError(message, retry_after=retry_after, adapter=self.name)
        elif code in TRANSIENT_CODES or status >= 500 or status == 408:
            ticket.failed()
            failure = TransientError(message, adapter=self.name)
        else:
            ticket.success()
            if code in NOT_FOUND_CODES or status == 404:
                raise NotFoundError(message, adapter=self.name) from exc
            if code in AUTH_CODES or status in (401, 403):
                raise AuthError(message) from exc
            raise FatalError(message, adapter=self.name) from exc
        failure.__cause__ = exc
        return failure

    # -- metadata ------------------------------------------------------------------------

    async def head(self, url: str | S3Url, *, part_number: int | None = None) -> ObjectInfo:
        """Size, ETag and metadata; ``NotFoundError`` if there is no such object."""
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        extra = {} if part_number is None else {"PartNumber": part_number}
        response = await self._call(
            target, "HeadObject", lambda: self.client.head_object(Bucket=target.bucket, Key=target.key, **extra)
        )
        modified = response.get("LastModified")
        return ObjectInfo(
            url=target,
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            last_modified=modified.timestamp() if modified is not None else None,
            metadata=tuple(sorted(response.get("Metadata", {}).items())),
        )

    async def list(self, url: str | S3Url, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with the URL's key, in key order, page by page."""
        prefix = url if isinstance(url, S3Url) else S3Url.parse(url)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": prefix.bucket, "Prefix": prefix.key, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(prefix, "ListObjectsV2", lambda kw=kwargs: self.client.list_objects_v2(**kw))
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    url=S3Url(prefix.bucket, item["Key"]),
                    size=int(item["Size"]),
                    etag=str(item.get("ETag", "")).strip('"'),
                    last_modified=item["LastModified"].timestamp() if item.get("LastModified") else None,
                )
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def delete(self, url: str | S3Url) -> None:
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        await self._call(target, "DeleteObject", lambda: self.client.delete_object(Bucket=target.bucket, Key=target.key))

    async def list_open_uploads(self, url: str | S3Url) -> list[tuple[str, str]]:
        """``(key, upload id)`` of multipart uploads begun under the prefix and not finished."""
        prefix = url if isinstance(url, S3Url) else S3Url.parse(url)
        response = await self._call(
            prefix, "ListMultipartUploads",
            lambda: self.client.list_multipart_uploads(Bucket=prefix.bucket, Prefix=prefix.key),
        )
        return [(u["Key"], u["UploadId"]) for u in response.get("Uploads", [])]

    # -- upload --------------------------------------------------------------------------

    async def put_stream(
        self,
        url: str | S3Url,
        data: AsyncIterator[bytes],
        *,
        size: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PutResult:
        """Store a stream of byte pieces as one object (see module docstring).

        ``size`` (when known) picks the part size; a stream longer than 10,000 parts of the
        configured size with no ``size`` given fails with ``FatalError``.
        """
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        part_size = plan_part_size(size, self.config.part_size)
        parts = _rechunk(data, part_size)
        # Objects up to the threshold go in one PutObject (buffering at most the threshold).
        head: list[bytes] = []
        buffered = 0
        while buffered <= self.config.multipart_threshold:
            piece = await anext(parts, None)
            if piece is None:
                body = b"".join(head)
                if size is not None and len(body) != size:
                    raise FatalError(f"{self.name}: {target}: stream gave {len(body)} bytes, expected {size}", adapter=self.name)
                return await self._put_single(target, body, extra)
            head.append(piece)
            buffered += len(piece)
        return await self._put_multipart(target, _chain(head, parts), part_size, size, extra)

    async def _put_single(self, target: S3Url, body: bytes, extra: dict[str, Any]) -> PutResult:
        digest = await md5_of(body)

        async def attempt() -> Any:
            response = await self.client.put_object(
                Bucket=target.bucket, Key=target.key, Body=body,
                ContentMD5=base64.b64encode(digest).decode(), **extra,
            )
            self._check_etag(response.get("ETag"), digest, f"PutObject {target}")
            return response

        response = await self._call(target, "PutObject", attempt)
        return PutResult(target, len(body), str(response["ETag"]).strip('"'), 0)

    def _check_etag(self, etag: Any, digest: bytes, what: str) -> None:
        value = str(etag or "").strip('"')
        # Only plain-MD5 ETags can be checked (not SSE-KMS / SSE-C ones).
        if _MD5_HEX.match(value) and value != digest.hex():
            raise TransientError(f"{self.name}: {what}: ETag {value} != MD5 {digest.hex()} of what we sent", adapter=self.name)

    async def _put_multipart(
        self, target: S3Url, parts: AsyncIterator[bytes], part_size: int,
        size: int | None, extra: dict[str, Any],
    ) -> PutResult:
        created = await self._call(
            target, "CreateMultipartUpload",
            lambda: self.client.create_multipart_upload(Bucket=target.bucket, Key=target.key, **extra),
        )
        upload_id = created["UploadId"]
        try:
            digests: dict[int, bytes] = {}
            etags: dict[int, str] = {}
            total = 0

            async def upload_parts(receive: anyio.abc.ObjectReceiveStream[tuple[int, bytes]]) -> None:
                async with receive:
                    async for number, body in receive:
                        etags[number], digests[number] = await self._upload_part(target, upload_id, number, body)

            send, receive = anyio.create_memory_object_stream[tuple[int, bytes]](0)
            try:
                async with anyio.create_task_group() as tg:
                    async with receive:
                        for _ in range(self.config.part_concurrency):
                            tg.start_soon(upload_parts, receive.clone())
                    async with send:
                        number = 0
                        async for body in parts:
                            number += 1
                            if number > MAX_PARTS:
                                raise FatalError(f"{self.name}: {target}: more than {MAX_PARTS} parts; give the size", adapter=self.name)
                            total += len(body)
                            await send.send((number, body))
            except BaseExceptionGroup as group:
                raise _unwrap(group) from None
            if size is not None and total != size:
                raise FatalError(f"{self.name}: {target}: stream gave {total} bytes, expected {size}", adapter=self.name)
            ordered = sorted(etags)
            expected = multipart_etag([digests[n] for n in ordered])

            async def complete() -> Any:
                return await self.client.complete_multipart_upload(
                    Bucket=target.bucket, Key=target.key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in ordered]},
                )

            response = await self._call(target, "CompleteMultipartUpload", complete)
            etag = str(response.get("ETag", "")).strip('"')
            if _MULTIPART_ETAG.match(etag) and etag != expected:
                raise FatalError(f"{self.name}: {target}: multipart ETag {etag} != expected {expected}", adapter=self.name)
            return PutResult(target, total, etag, len(ordered))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(target, upload_id)
            raise

    async def _upload_part(self, target: S3Url, upload_id: str, number: int, body: bytes) -> tuple[str, bytes]:
        digest = await md5_of(body)

        async def attempt() -> Any:
            response = await self.client.upload_part(
                Bucket=target.bucket, Key=target.key, UploadId=upload_id, PartNumber=number,
                Body=body, ContentMD5=base64.b64encode(digest).decode(),
            )
            self._check_etag(response.get("ETag"), digest, f"UploadPart {number} of {target}")
            return response

        response = await self._call(target, f"UploadPart {number}", attempt)
        return str(response["ETag"]), digest

    async def _abort(self, target: S3Url, upload_id: str) -> None:
        """Best effort: a failed abort is reported, never raised over the original error."""
        try:
            await self._call(
                target, "AbortMultipartUpload",
                lambda: self.client.abort_multipart_upload(Bucket=target.bucket, Key=target.key, UploadId=upload_id),
            )
        except NotFoundError:
            pass  # already gone
        except Exception as exc:  # noqa: BLE001 - we are already failing; keep the first error
            self.context.events("abort_failed", url=str(target), upload_id=upload_id, error=str(exc))

    # -- download ------------------------------------------------------------------------

    async def get_stream(
        self, url: str | S3Url, *, part_size: int | None = None, parallelism: int | None = None
    ) -> AsyncIterator[bytes]:
        """The object's bytes in order, fetched as parallel ranged GETs (see module docstring).

        ``parallelism=1`` streams one plain GET instead (pieces of at most ``part_size``; retried
        only before the first byte, a later break raises ``TransientError``): for stores whose
        ranged reads are expensive. Consume to the end or close it (``contextlib.aclosing``).
        """
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        info = await self.head(target)
        ranges, verify = await self._read_plan(info, part_size or self.config.part_size)
        window = parallelism or self.config.part_concurrency
        if window == 1:
            async for piece in self._get_streaming(target, info, ranges, verify):
                yield piece
            return
        whole = hashlib.md5()
        part_digests: list[bytes] = []
        # The fetches run in tasks this generator owns, cancelled and awaited in ``finally``.
        # (A task group cannot stay open across ``yield``: the consumer's own scopes would
        # interleave with it.) At most ``window`` ranges are fetched ahead of the consumer.
        fetching: dict[int, asyncio.Task[bytes]] = {}
        started = 0
        try:
            for index in range(len(ranges)):
                while started < len(ranges) and started < index + window:
                    fetching[started] = asyncio.ensure_future(
                        self._get_range(target, info.etag, *ranges[started])
                    )
                    started += 1
                body = await fetching.pop(index)
                if verify == "whole":
                    if len(body) >= MIB:
                        await anyio.to_thread.run_sync(whole.update, body)
                    else:
                        whole.update(body)
                elif verify == "parts":
                    part_digests.append(await md5_of(body))
                yield body
        finally:
            for task in fetching.values():
                task.cancel()
            if fetching:
                await asyncio.gather(*fetching.values(), return_exceptions=True)
        if verify == "whole" and whole.hexdigest() != info.etag:
            raise TransientError(f"{self.name}: {target}: downloaded MD5 {whole.hexdigest()} != ETag {info.etag}", adapter=self.name)
        if verify == "parts" and multipart_etag(part_digests) != info.etag:
            raise TransientError(f"{self.name}: {target}: downloaded parts do not match ETag {info.etag}", adapter=self.name)

    async def _get_streaming(
        self, target: S3Url, info: ObjectInfo, ranges: list[tuple[int, int]], verify: str
    ) -> AsyncIterator[bytes]:
        """One GET, streamed; verified like the ranged reads, at the same range boundaries."""
        piece_size = (ranges[0][1] + 1) if ranges else MIB
        response = await self._call(
            target, "GetObject",
            lambda: self.client.get_object(Bucket=target.bucket, Key=target.key, IfMatch=f'"{info.etag}"'),
        )
        whole = hashlib.md5()
        part_digests: list[bytes] = []
        current = hashlib.md5()
        in_current = 0
        received = 0
        # The request went through the limiter; reading its body holds no slot.
        async with response["Body"] as stream:
            try:
                while True:
                    want = min(piece_size - in_current, 8 * MIB) if verify == "parts" else 8 * MIB
                    piece = await stream.read(want)
                    if not piece:
                        break
                    received += len(piece)
                    digest = whole if verify == "whole" else current
                    if len(piece) >= MIB:
                        await anyio.to_thread.run_sync(digest.update, piece)
                    else:
                        digest.update(piece)
                    in_current += len(piece)
                    if verify == "parts" and in_current == piece_size:
                        part_digests.append(current.digest())
                        current, in_current = hashlib.md5(), 0
                    yield bytes(piece)
            except _NETWORK_ERRORS as exc:
                raise TransientError(
                    f"{self.name}: GetObject {target}: broke off after {received} bytes: {exc!r}", adapter=self.name
                ) from exc
        if verify == "parts" and in_current:
            part_digests.append(current.digest())
        if received != info.size:
            raise TransientError(f"{self.name}: {target}: got {received} of {info.size} bytes", adapter=self.name)
        if verify == "whole" and whole.hexdigest() != info.etag:
            raise TransientError(f"{self.name}: {target}: downloaded MD5 {whole.hexdigest()} != ETag {info.etag}", adapter=self.name)
        if verify == "parts" and multipart_etag(part_digests) != info.etag:
            raise TransientError(f"{self.name}: {target}: downloaded parts do not match ETag {info.etag}", adapter=self.name)

    async def _read_plan(self, info: ObjectInfo, part_size: int) -> tuple[list[tuple[int, int]], str]:
        """Ranges to fetch, and how to verify them: ``whole`` MD5, per-``parts`` MD5s, or ``none``."""
        if _MD5_HEX.match(info.etag):
            return plan_ranges(info.size, part_size), "whole"
        multipart = _MULTIPART_ETAG.match(info.etag)
        if multipart:
            count = int(multipart.group(2))
            first = await self.head(info.url, part_number=1)
            source_part = first.size
            # Follow the object's own parts when they are uniform, so their MD5s can be checked.
            if source_part > 0 and (count - 1) * source_part < info.size <= count * source_part:
                return plan_ranges(info.size, source_part), "parts"
        return plan_ranges(info.size, part_size), "none"

    async def _get_range(self, target: S3Url, etag: str, start: int, end: int) -> bytes:
        expected = end - start + 1

        async def attempt() -> bytes:
            response = await self.client.get_object(
                Bucket=target.bucket, Key=target.key, Range=f"bytes={start}-{end}", IfMatch=f'"{etag}"'
            )
            async with response["Body"] as stream:
                body = await stream.read()
            if len(body) != expected:
                raise TransientError(f"{self.name}: {target} bytes {start}-{end}: got {len(body)} bytes", adapter=self.name)
            return bytes(body)

        return await self._call(target, f"GetObject {start}-{end}", attempt)

    # -- copy ----------------------------------------------------------------------------

    async def copy(self, source: str | S3Url, destination: str | S3Url) -> PutResult:
        """Server-side copy within this store: ``CopyObject`` up to ``copy_threshold``,
        parallel ``UploadPartCopy`` above it (the upload aborted on failure)."""
        src = source if isinstance(source, S3Url) else S3Url.parse(source)
        dst = destination if isinstance(destination, S3Url) else S3Url.parse(destination)
        info = await self.head(src)
        copy_source = {"Bucket": src.bucket, "Key": src.key}
        if info.size <= min(max(self.config.copy_threshold, MIN_PART), MAX_PART):

            async def attempt() -> Any:
                return await self.client.copy_object(
                    Bucket=dst.bucket, Key=dst.key, CopySource=copy_source, CopySourceIfMatch=f'"{info.etag}"'
                )

            response = await self._call(dst, "CopyObject", attempt)
            etag = str(response.get("CopyObjectResult", {}).get("ETag", "")).strip('"')
            if _MD5_HEX.match(info.etag) and _MD5_HEX.match(etag) and etag != info.etag:
                raise FatalError(f"{self.name}: copy {src} -> {dst}: ETag {etag} != source {info.etag}", adapter=self.name)
            return PutResult(dst, info.size, etag, 0)
        return await self._copy_multipart(src, dst, info, copy_source)

    async def _copy_multipart(self, src: S3Url, dst: S3Url, info: ObjectInfo, copy_source: dict[str, str]) -> PutResult:
        part_size = plan_part_size(info.size, self.config.part_size)
        ranges = plan_ranges(info.size, part_size)
        created = await self._call(
            dst, "CreateMultipartUpload",
            lambda: self.client.create_multipart_upload(Bucket=dst.bucket, Key=dst.key),
        )
        upload_id = created["UploadId"]
        try:
            etags: dict[int, str] = {}
            limit = anyio.Semaphore(self.config.part_concurrency)

            async def copy_part(number: int, start: int, end: int) -> None:
                async with limit:
                    response = await self._call(
                        dst, f"UploadPartCopy {number}",
                        lambda: self.client.upload_part_copy(
                            Bucket=dst.bucket, Key=dst.key, UploadId=upload_id, PartNumber=number,
                            CopySource=copy_source, CopySourceRange=f"bytes={start}-{end}",
                            CopySourceIfMatch=f'"{info.etag}"',
                        ),
                    )
                    etags[number] = str(response["CopyPartResult"]["ETag"])

            try:
                async with anyio.create_task_group() as tg:
                    for number, (start, end) in enumerate(ranges, start=1):
                        tg.start_soon(copy_part, number, start, end)
            except BaseExceptionGroup as group:
                raise _unwrap(group) from None
            ordered = sorted(etags)
            response = await self._call(
                dst, "CompleteMultipartUpload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=dst.bucket, Key=dst.key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in ordered]},
                ),
            )
            copied = await self.head(dst)
            if copied.size != info.size:
                raise FatalError(f"{self.name}: copy {src} -> {dst}: {copied.size} bytes != {info.size}", adapter=self.name)
            return PutResult(dst, info.size, str(response.get("ETag", "")).strip('"'), len(ordered))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(dst, upload_id)
            raise


async def copy_between(source: S3Store, source_url: str | S3Url, destination: S3Store, destination_url: str | S3Url) -> PutResult:
    """Copy one object: server-side when both stores share the endpoint, streamed otherwise."""
    if source is destination or source.same_endpoint(destination):
        return await destination.copy(source_url, destination_url)
    info = await source.head(source_url)
    stream = source.get_stream(source_url)
    try:
        return await destination.put_stream(destination_url, stream, size=info.size)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _hash_payload_in_thread(request: Any, **_: Any) -> None:
    """Set the SigV4 payload hash ourselves, computed off the event loop (botocore uses a
    precomputed ``X-Amz-Content-SHA256`` header as is)."""
    body = request.body
    if isinstance(body, (bytes, bytearray)) and "X-Amz-Content-SHA256" not in request.headers:
        if len(body) >= MIB:
            digest = await anyio.to_thread.run_sync(lambda: hashlib.sha256(body).hexdigest())
        else:
            digest = hashlib.sha256(body).hexdigest()
        request.headers["X-Amz-Content-SHA256"] = digest


async def _rechunk(data: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Pieces of exactly ``size`` bytes (the last may be shorter; never an empty one)."""
    buffer = bytearray()
    async for piece in data:
        if not buffer and len(piece) == size:
            yield piece  # already a part: no copy
            continue
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for piece in first:
        yield piece
    async for piece in rest:
        yield piece
