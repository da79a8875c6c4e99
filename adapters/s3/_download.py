"""Downloads: one streamed ``GET`` (resumed after a break) or parallel ranged ``GET``s, in order.

One request per object up to ``ranged_get_threshold`` (cheapest for client and server alike),
ranges above it. Either way the bytes are checked: against the store's full-object CRC-32 when
it keeps one (a quarter of MD5's CPU, the largest cost of a download), else against the ETag
(plain MD5, or MD5-of-part-MD5s when the pieces can follow the object's own parts); and at most
a window of pieces is in memory.
"""

from __future__ import annotations

import functools

import asyncio
import base64
import hashlib
from collections.abc import AsyncGenerator
from typing import Any

import anyio

from adapters.s3._config import MIB
from adapters.s3._errors import NETWORK_ERRORS
from adapters.s3._listing import Listing, info_of
from adapters.s3._parts import (
    MD5_HEX,
    MULTIPART_ETAG,
    Crc32,
    ThreadedHash,
    multipart_etag,
    plan_ranges,
)
from adapters.s3._url import ObjectInfo, S3Url
from core.errors import TransientError

# asyncio reads sockets 256 KiB at a time: chunks up to that pass from aiohttp without a copy.
# A streamed GET hands each chunk on as it came; the MD5 sees the same chunks in a worker thread
# (``ThreadedHash``), a batch of about 1 MiB per hand-off, while the loop reads the next. Joining
# chunks into 8 MiB pieces first cost ~3.5-5 CPU s/GiB against ~2.7-3.0 without the join (the
# join faults in fresh pages, then the hash and the write read the piece back cold); hashing on
# the loop made four streams one-core bound (512 MiB from moto: 313 MiB/s, rclone 389).
_READ = 256 * 1024


class Downloads(Listing):
    """``get_stream`` and its two read strategies (mixed into ``S3Store``)."""

    async def get_stream(
        self, url: str | S3Url, *, part_size: int | None = None, parallelism: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The object's bytes in order, in pieces of at most ``part_size`` (see package docstring):
        a streamed GET hands on each chunk as the socket gave it (at most 256 KiB, without a
        copy), ranged GETs one range per piece.

        Objects up to ``ranged_get_threshold`` come through one streamed GET (resumed from the
        first missing byte after a break), larger ones as ``parallelism`` (default
        ``part_concurrency``) ranged GETs in flight. ``parallelism=1`` always streams (for stores
        whose ranged reads are expensive); an explicit ``parallelism > 1`` always uses ranges.
        Unless ranges are asked for, no ``HEAD`` comes first: the GET's own headers give the
        size and ETag, so a small object costs one request (a GET that finds a larger object is
        closed unread, and ranges follow). Consume to the end or close it (``contextlib.aclosing``).
        """
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        first: Any = None
        if parallelism is not None and parallelism > 1:
            info = await self.head(target)
        else:
            first = await self._call(
                target, "GetObject", lambda: self.client.get_object(Bucket=target.bucket, Key=target.key, **self.sse_c)
            )
            info = info_of(target, first, self.sse_c)
            if parallelism is None and info.size > self.config.ranged_get_threshold:
                await first["Body"].aclose()
                first = None
        try:
            ranges, verify = await self._read_plan(info, part_size or self.config.part_size)
        except BaseException:
            if first is not None:
                with anyio.CancelScope(shield=True):
                    await first["Body"].aclose()
            raise
        if first is not None:
            async for piece in self._get_streaming(target, info, ranges, verify, first):
                yield piece
            return
        window = parallelism or self.config.part_concurrency
        whole = _whole_digest(verify)
        parts: list[Any] = []  # one MD5 per range ("parts")
        hashing = ThreadedHash()
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
                if verify == "parts":
                    parts.append(hashlib.md5())
                if verify != "none":
                    await hashing.add(body, parts[-1] if verify == "parts" else whole)
                yield body
            await hashing.finish()
        finally:
            for task in fetching.values():
                task.cancel()
            if fetching:
                await asyncio.gather(*fetching.values(), return_exceptions=True)
            await hashing.aclose()
        self._verify_read(target, info, verify, whole, [md5.digest() for md5 in parts])

    async def _get_streaming(
        self, target: S3Url, info: ObjectInfo, ranges: list[tuple[int, int]], verify: str, first: Any
    ) -> AsyncGenerator[bytes, None]:
        """One GET (``first``, already answered), streamed chunk by chunk; verified like the
        ranged reads, at the same range boundaries.

        A connection that breaks mid-body is resumed with a GET of the rest (``Range: bytes=N-``,
        pinned to the first answer's ETag), under the prefix's backoff and retry budget, at most
        ``max_attempts`` times.
        """
        piece_size = (ranges[0][1] + 1) if ranges else MIB
        limiter = self.limiter_for(target)
        whole = _whole_digest(verify)
        parts: list[Any] = []  # one MD5 per range of the object's own parts ("parts")
        current = hashlib.md5()
        in_current = 0
        received = 0
        retrying = self.retrying(limiter)  # for breaks mid-body; _call retries each GET
        hashing = ThreadedHash()
        try:
            while True:
                if first is not None:
                    response, first = first, None
                else:
                    response = await self._call(
                        target, "GetObject", functools.partial(self._get_from, target, info, received)
                    )
                broke: BaseException | None = None
                # The request went through the limiter; reading its body holds no slot.
                async with response["Body"] as stream:
                    while True:
                        # Each chunk as aiohttp received it (no copy), never across a part boundary.
                        want = min(piece_size - in_current, _READ) if verify == "parts" else _READ
                        try:
                            chunk = await stream.read(want)
                        except NETWORK_ERRORS as exc:
                            broke = exc
                            break
                        if not chunk:
                            break
                        if verify != "none":
                            await hashing.add(chunk, current if verify == "parts" else whole)
                        received += len(chunk)
                        in_current += len(chunk)
                        if verify == "parts" and in_current == piece_size:
                            parts.append(current)  # its digest is read once the hashing is finished
                            current, in_current = hashlib.md5(), 0
                        yield chunk
                if broke is None:
                    break
                error = TransientError(
                    f"{self.name}: GetObject {target}: broke off after {received} bytes: {broke!r}", adapter=self.name
                )
                error.__cause__ = broke
                await retrying.wait_or_raise(error, throttled=False)
            await hashing.finish()
        finally:
            await hashing.aclose()
        if verify == "parts" and in_current:
            parts.append(current)
        if received != info.size:
            raise TransientError(f"{self.name}: {target}: got {received} of {info.size} bytes", adapter=self.name)
        self._verify_read(target, info, verify, whole, [md5.digest() for md5 in parts])

    def _verify_read(
        self, target: S3Url, info: ObjectInfo, verify: str, whole: Any, part_digests: list[bytes]
    ) -> None:
        """The bytes read match the object's CRC-32 or ETag (as ``_read_plan`` said to check them)."""
        if verify == "crc32" and base64.b64encode(whole.digest()).decode() != info.crc32:
            raise TransientError(f"{self.name}: {target}: downloaded CRC-32 does not match the stored {info.crc32}", adapter=self.name)
        if verify == "whole" and whole.hexdigest() != info.etag:
            raise TransientError(f"{self.name}: {target}: downloaded MD5 {whole.hexdigest()} != ETag {info.etag}", adapter=self.name)
        if verify == "parts" and multipart_etag(part_digests) != info.etag:
            raise TransientError(f"{self.name}: {target}: downloaded parts do not match ETag {info.etag}", adapter=self.name)

    async def _get_from(self, target: S3Url, info: ObjectInfo, start: int) -> Any:
        """``GetObject`` of the bytes from ``start`` on (the whole object for 0), pinned to the ETag."""
        if start == 0:
            return await self.client.get_object(
                Bucket=target.bucket, Key=target.key, IfMatch=f'"{info.etag}"', **self.sse_c
            )
        response = await self.client.get_object(
            Bucket=target.bucket, Key=target.key, Range=f"bytes={start}-", IfMatch=f'"{info.etag}"', **self.sse_c
        )
        if int(response.get("ContentLength", -1)) != info.size - start:
            await response["Body"].aclose()
            raise TransientError(
                f"{self.name}: {target}: resumed GET from {start} sent {response.get('ContentLength')} bytes, "
                f"expected {info.size - start}", adapter=self.name,
            )
        return response

    async def _read_plan(self, info: ObjectInfo, part_size: int) -> tuple[list[tuple[int, int]], str]:
        """Ranges to fetch, and how to verify them: the stored ``crc32``, ``whole`` MD5,
        per-``parts`` MD5s, or ``none`` (an encrypted object's ETag is no digest of its bytes)."""
        if info.crc32:
            return plan_ranges(info.size, part_size), "crc32"
        if not info.etag_is_md5:
            return plan_ranges(info.size, part_size), "none"
        if MD5_HEX.match(info.etag):
            return plan_ranges(info.size, part_size), "whole"
        multipart = MULTIPART_ETAG.match(info.etag)
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
                Bucket=target.bucket, Key=target.key, Range=f"bytes={start}-{end}", IfMatch=f'"{etag}"',
                **self.sse_c,
            )
            async with response["Body"] as stream:
                body = await stream.read()
            if len(body) != expected:
                raise TransientError(f"{self.name}: {target} bytes {start}-{end}: got {len(body)} bytes", adapter=self.name)
            return bytes(body)

        return await self._call(target, f"GetObject {start}-{end}", attempt)



def _whole_digest(verify: str) -> Any:
    """What the whole object's bytes are fed to: its CRC-32 or its MD5 (per-part MD5s aside)."""
    return Crc32() if verify == "crc32" else hashlib.md5()
