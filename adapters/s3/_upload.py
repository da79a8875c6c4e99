"""Uploads: one ``PutObject`` up to the threshold, else a parallel multipart upload.

A source that can be read twice (an *opener*: a callable giving a fresh iterator of the same
bytes, such as a file) of known size up to ``single_put_threshold`` goes as one streamed
``PutObject`` whatever its size, as rclone's ``--s3-upload-cutoff``: a multipart upload costs
the server about twice the CPU of one PUT (moto: 13-15 vs 7.3 s/GiB). Pass 1 reads it for the
``Content-MD5`` the request must carry before its body (and a CRC-32); pass 2 (again on every
retry) streams it, checked by the CRC-32 to give the same bytes (``ReopenedBody``; a second MD5
cost 0.75 s per 512 MiB of a CPU-bound upload, the CRC 0.2 s, and S3 itself refuses a body that
does not match its ``Content-MD5``). One-shot streams, unknown sizes and larger sources go
multipart.

Parts are cut from the stream as it arrives (at most ``part_concurrency + 2`` in memory), each
sent with ``Content-MD5`` and checked against its ETag, the whole against the multipart ETag; the
upload is aborted, shielded from cancellation, if anything fails, so no upload is left open.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from adapters.s3._config import MAX_PARTS
from adapters.s3._direct import DirectPut, Redirected
from adapters.s3._encryption import ABORT_ARGS, PART_ARGS, etag_is_md5, picked
from adapters.s3._errors import unwrap
from adapters.s3._parts import (
    MD5_HEX,
    Crc32,
    MULTIPART_ETAG,
    ThreadedHash,
    md5_of,
    multipart_etag,
    plan_part_size,
)
from adapters.s3._requests import RequestCore
from adapters.s3._url import PutResult, S3Url
from core.errors import FatalError, NotFoundError, TransientError


Part = bytes | bytearray
"""A part's bytes: a fresh ``bytearray`` when ``_rechunk`` assembled it (no extra copy), else the
piece as the source gave it. md5, ``len()`` and request bodies take both alike."""

Opener = Callable[[], AsyncGenerator[bytes, None]]
"""A re-readable source: each call starts a fresh read of the same bytes (it is closed after)."""


class Uploads(RequestCore):
    """``put_stream`` and the multipart machinery (mixed into ``S3Store``)."""

    async def put_stream(
        self,
        url: str | S3Url,
        data: AsyncIterator[bytes] | Opener,
        *,
        size: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        extra_args: Mapping[str, Any] | None = None,
    ) -> PutResult:
        """Store a stream of byte pieces, or what an opener reads, as one object (module docstring).

        ``size`` (when known) picks the part size; a stream longer than 10,000 parts of the
        configured size with no ``size`` given fails with ``FatalError``. ``extra_args`` go to
        ``PutObject`` / ``CreateMultipartUpload`` as they are (``ContentEncoding``,
        ``ServerSideEncryption``, ``ExpectedBucketOwner``..., as boto3's ``ExtraArgs``), and the
        SSE-C, payer and owner ones also to every part and the completion (``_encryption``).
        """
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        extra: dict[str, Any] = {**self.sse_c, **(extra_args or {})}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        if callable(data):
            if size is not None and self.config.multipart_threshold < size <= self.config.single_put_threshold:
                return await self._put_reopened(target, data, size, extra)
            async with contextlib.aclosing(data()) as pieces:
                return await self._put_pieces(target, pieces, size, extra)
        return await self._put_pieces(target, data, size, extra)

    async def _put_pieces(
        self, target: S3Url, data: AsyncIterator[bytes], size: int | None, extra: dict[str, Any]
    ) -> PutResult:
        part_size = plan_part_size(size, self.config.part_size)
        parts = _rechunk(data, part_size)
        # Objects up to the threshold go in one PutObject (buffering at most the threshold).
        head: list[Part] = []
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
        args = {"Bucket": target.bucket, "Key": target.key, "Body": body,
                "ContentMD5": base64.b64encode(digest).decode(), **extra}

        accepted = DirectPut.accepts(args)  # the same for every attempt

        async def attempt() -> Any:
            direct = self.direct  # None once the endpoint redirected
            response = None
            if direct is not None and accepted:
                try:
                    response = await direct.put_object(args)
                except Redirected:
                    self.direct = None  # this endpoint redirects: botocore follows S3's redirects
            if response is None:
                response = await self.client.put_object(**{**args, "Body": body_of(body)})
            if etag_is_md5(extra, response):
                self._check_etag(response.get("ETag"), digest, f"PutObject {target}")
            return response

        response = await self._call(target, "PutObject", attempt)
        return PutResult(target, len(body), str(response["ETag"]).strip('"'), 0)

    async def _put_reopened(self, target: S3Url, reopen: Opener, size: int, extra: dict[str, Any]) -> PutResult:
        """One streamed ``PutObject`` of a re-readable source (module docstring)."""
        digest, check = hashlib.md5(), Crc32()
        async with contextlib.aclosing(_counted(reopen(), size, (digest, check), self.name, target)) as pieces:
            async for _ in pieces:
                pass
        md5 = digest.digest()
        if self.config.checksums:  # kept by the store: downloads check it instead of the MD5
            extra = {**extra, "ChecksumAlgorithm": "CRC32", "ChecksumCRC32": base64.b64encode(check.digest()).decode()}

        async def attempt() -> Any:
            body = ReopenedBody(reopen, size, check.digest(), self.name, target)
            try:
                response = await self.client.put_object(
                    Bucket=target.bucket, Key=target.key, Body=body, ContentLength=size,
                    ContentMD5=base64.b64encode(md5).decode(), **extra,
                )
            except Exception:
                body.raise_failure()  # the source failed or changed: not the network's fault
                raise
            finally:
                await body.aclose()
            if etag_is_md5(extra, response):
                self._check_etag(response.get("ETag"), md5, f"PutObject {target}")
            return response

        response = await self._call(target, "PutObject", attempt)
        return PutResult(target, size, str(response["ETag"]).strip('"'), 0)

    def _check_etag(self, etag: Any, digest: bytes, what: str) -> None:
        value = str(etag or "").strip('"')
        # Only plain-MD5 ETags can be checked (callers skip SSE-KMS / SSE-C ones: ``etag_is_md5``).
        if MD5_HEX.match(value) and value != digest.hex():
            raise TransientError(f"{self.name}: {what}: ETag {value} != MD5 {digest.hex()} of what we sent", adapter=self.name)

    async def _put_multipart(
        self, target: S3Url, parts: AsyncIterator[Part], part_size: int,
        size: int | None, extra: dict[str, Any],
    ) -> PutResult:
        created = await self._call(
            target, "CreateMultipartUpload",
            lambda: self.client.create_multipart_upload(Bucket=target.bucket, Key=target.key, **extra),
        )
        upload_id = created["UploadId"]
        part_args = picked(extra, PART_ARGS)
        check_etags = etag_is_md5(extra, created)
        try:
            digests: dict[int, bytes] = {}
            etags: dict[int, str] = {}
            total = 0

            async def upload_parts(receive: anyio.abc.ObjectReceiveStream[tuple[int, Part]]) -> None:
                async with receive:
                    async for number, body in receive:
                        etags[number], digests[number] = await self._upload_part(
                            target, upload_id, number, body, part_args, check_etags
                        )

            send, receive = anyio.create_memory_object_stream[tuple[int, Part]](0)
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
                raise unwrap(group) from None
            if size is not None and total != size:
                raise FatalError(f"{self.name}: {target}: stream gave {total} bytes, expected {size}", adapter=self.name)
            ordered = sorted(etags)
            expected = multipart_etag([digests[n] for n in ordered])

            async def complete() -> Any:
                return await self.client.complete_multipart_upload(
                    Bucket=target.bucket, Key=target.key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in ordered]},
                    **part_args,
                )

            response = await self._call(target, "CompleteMultipartUpload", complete)
            etag = str(response.get("ETag", "")).strip('"')
            if check_etags and etag_is_md5(response) and MULTIPART_ETAG.match(etag) and etag != expected:
                raise FatalError(f"{self.name}: {target}: multipart ETag {etag} != expected {expected}", adapter=self.name)
            return PutResult(target, total, etag, len(ordered))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(target, upload_id, picked(extra, ABORT_ARGS))
            raise

    async def _upload_part(
        self, target: S3Url, upload_id: str, number: int, body: Part, part_args: dict[str, Any], check_etag: bool
    ) -> tuple[str, bytes]:
        digest = await md5_of(body)

        async def attempt() -> Any:
            response = await self.client.upload_part(
                Bucket=target.bucket, Key=target.key, UploadId=upload_id, PartNumber=number,
                Body=body_of(body), ContentMD5=base64.b64encode(digest).decode(), **part_args,
            )
            if check_etag and etag_is_md5(response):
                self._check_etag(response.get("ETag"), digest, f"UploadPart {number} of {target}")
            return response

        response = await self._call(target, f"UploadPart {number}", attempt)
        return str(response["ETag"]), digest

    async def _abort(self, target: S3Url, upload_id: str, extra: dict[str, Any] | None = None) -> None:
        """Best effort: a failed abort is reported, never raised over the original error."""
        try:
            await self._call(
                target, "AbortMultipartUpload",
                lambda: self.client.abort_multipart_upload(
                    Bucket=target.bucket, Key=target.key, UploadId=upload_id, **(extra or {})
                ),
            )
        except NotFoundError:
            pass  # already gone
        except Exception as exc:  # noqa: BLE001 - we are already failing; keep the first error
            self.context.events("abort_failed", url=str(target), upload_id=upload_id, error=str(exc))


class SlicedBody:
    """A request body handed to aiohttp as 256 KiB views of the buffer, never copied whole.

    Given one big ``bytes``, aiohttp on Python < 3.12.9 joins it with the headers (a copy),
    then asyncio's transport slices and buffers what the socket did not take (two more); sent
    slice by slice, with aiohttp draining between them, only a slice's remainder is ever
    buffered. ``len()`` gives botocore the Content-Length (the signature does not cover the
    body: ``payload_signing_enabled`` is off, Content-MD5 guards it); ``read()`` makes it the
    file-like object botocore's parameter check wants. A fresh one is made for every attempt.
    """

    SLICE = 256 * 1024

    def __init__(self, data: Part) -> None:
        self._data = data
        self._position = 0

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> Part:
        end = len(self._data) if size < 0 else min(len(self._data), self._position + size)
        piece = self._data[self._position : end]
        self._position = end
        return piece

    async def __aiter__(self) -> AsyncGenerator[memoryview, None]:
        view = memoryview(self._data)
        for start in range(0, len(view), self.SLICE):
            yield view[start : start + self.SLICE]


class ReopenedBody:
    """One attempt's request body: the opener read once more, checked against pass 1.

    aiohttp pulls the pieces in its own task and reports a failing body as a connection error;
    the source's own error is kept here (``raise_failure``) so that it is raised as it is, not
    retried. The last piece is held back until the source has ended with exactly the size and
    CRC-32 of pass 1, so a source that changed never completes the request (no object).
    """

    def __init__(self, reopen: Opener, size: int, crc: bytes, name: str, target: S3Url) -> None:
        self._reopen, self._size, self._crc, self._name, self._target = reopen, size, crc, name, target
        self._pieces: AsyncGenerator[bytes, None] | None = None
        self._failure: Exception | None = None

    def __len__(self) -> int:
        return self._size

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        self._pieces = self._checked()
        return self._pieces

    async def _checked(self) -> AsyncGenerator[bytes, None]:
        check = Crc32()
        held: bytes | None = None
        try:
            async with contextlib.aclosing(_counted(self._reopen(), self._size, (check,), self._name, self._target)) as pieces:
                async for piece in pieces:
                    if held is not None:
                        yield held
                    held = piece
            if check.digest() != self._crc:
                raise FatalError(f"{self._name}: {self._target}: the source changed between its two reads (CRC-32)", adapter=self._name)
        except Exception as exc:
            self._failure = exc
            raise
        if held is not None:
            yield held

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def aclose(self) -> None:
        """Close the source of this attempt. One still being read belongs to aiohttp's writer
        task, which aiohttp has cancelled: its cancellation closes it."""
        if self._pieces is not None and not getattr(self._pieces, "ag_running", False):
            await self._pieces.aclose()


async def _counted(
    source: AsyncGenerator[bytes, None], size: int, digests: tuple[Any, ...], name: str, target: S3Url
) -> AsyncGenerator[bytes, None]:
    """``source``'s pieces hashed into each of ``digests`` in a worker thread (``ThreadedHash``:
    MD5 ~1.5 s/GiB beside the loop, complete once this generator ends); ``FatalError`` as soon as
    it passes ``size`` bytes or if it ends short of it. Closes ``source``."""
    total = 0
    hashing = ThreadedHash()
    try:
        async with contextlib.aclosing(source):
            async for piece in source:
                total += len(piece)
                if total > size:
                    break
                await hashing.add(piece, *digests)
                yield piece
        await hashing.finish()
    finally:
        await hashing.aclose()
    if total != size:
        gave = f"more than {size}" if total > size else str(total)
        raise FatalError(f"{name}: {target}: stream gave {gave} bytes, expected {size}", adapter=name)


def body_of(data: Part) -> Part | SlicedBody:
    """What to pass as ``Body``: small bodies as they are, large ones sliced."""
    return SlicedBody(data) if len(data) > SlicedBody.SLICE else data


async def _rechunk(data: AsyncIterator[bytes], size: int) -> AsyncGenerator[Part, None]:
    """Pieces of exactly ``size`` bytes (the last may be shorter; never an empty one).

    Pieces that already are a part pass through; other bytes are copied once, into a fresh
    ``bytearray`` per part (never reused after it is yielded), instead of being appended to,
    sliced from and deleted out of one growing buffer (three copies and a memmove per part).
    A part's buffer is only made once its bytes are known to fill it: the tail (and a small
    object) is joined from the pieces held, never cut out of a zero-filled ``size`` buffer
    (allocating 8 MiB for a 1 KiB object cost ~2 ms, most of a small PUT's CPU).
    """
    held: list[bytes] = []  # bytes of the next part, fewer than ``size`` in all
    held_bytes = 0
    async for piece in data:
        if not held and len(piece) == size:
            yield piece  # already a part: no copy
            continue
        view = memoryview(piece)
        while held_bytes + len(view) >= size:
            take = size - held_bytes
            part = bytearray(size)
            filled = 0
            for chunk in held:
                part[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
            part[filled:] = view[:take]
            yield part  # a bytearray: md5, len() and the request body take it as they take bytes
            held, held_bytes = [], 0
            view = view[take:]
        if view:
            # a view of an immutable piece is kept as it is; anything else is copied now, as
            # its owner may reuse it once we ask for the next piece
            held.append(piece if len(view) == len(piece) and isinstance(piece, bytes) else bytes(view))
            held_bytes += len(view)
    if held:
        yield held[0] if len(held) == 1 else b"".join(held)


async def _chain(
    first: list[Part], rest: AsyncIterator[Part]
) -> AsyncGenerator[Part, None]:
    for piece in first:
        yield piece
    async for piece in rest:
        yield piece
