"""Part planning and the MD5/ETag rules that check parts (pure functions, tested by tables),
and the two ways to hash off the event loop (``md5_of`` one buffer, ``ThreadedHash`` a stream).

S3 limits parts (5 MiB..5 GiB, 10,000 per upload) and names a multipart object by the MD5 of its
parts' MD5s; both the upload and the download side plan and verify with these.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import zlib
from typing import Any

import anyio
import anyio.to_thread

from adapters.s3._config import MAX_PART, MAX_PARTS, MIB, MIN_PART
from core.errors import FatalError

MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")


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


async def md5_of(data: bytes | bytearray) -> bytes:
    """MD5 off the event loop for big buffers (hashlib releases the GIL)."""
    if len(data) < MIB:
        return hashlib.md5(data).digest()
    return await anyio.to_thread.run_sync(lambda: hashlib.md5(data).digest())


_HASH_BATCH = MIB


def _update_all(batch: list[tuple[tuple[Any, ...], bytes]]) -> None:
    for digests, chunk in batch:
        for digest in digests:
            digest.update(chunk)  # hashlib and zlib let go of the GIL for buffers this size


class Crc32:
    """zlib's CRC-32 behind hashlib's ``update`` / ``digest`` (zlib lets go of the GIL as hashlib
    does): the check that a source read twice gave the same bytes, at a third of MD5's cost."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class ThreadedHash:
    """Feeds chunks to their digests (MD5, ``Crc32``) in a worker thread, in order, about
    ``_HASH_BATCH`` bytes of chunks per hand-off and one batch at a time (hashlib releases the
    GIL: the hashing runs beside the loop). ``finish`` before reading a digest; ``aclose``
    (shielded) never leaves a thread hashing behind."""

    def __init__(self) -> None:
        self._batch: list[tuple[tuple[Any, ...], bytes]] = []
        self._size = 0
        self._running: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes, *digests: Any) -> None:
        """Hash ``chunk`` into each of ``digests``."""
        self._batch.append((digests, chunk))
        self._size += len(chunk)
        if self._size >= _HASH_BATCH:
            await self._hand_off()

    async def _hand_off(self) -> None:
        if self._running is not None:
            await self._running
            self._running = None
        if self._batch:
            batch, self._batch, self._size = self._batch, [], 0
            self._running = asyncio.get_running_loop().run_in_executor(None, _update_all, batch)

    async def finish(self) -> None:
        await self._hand_off()
        if self._running is not None:
            await self._running
            self._running = None

    async def aclose(self) -> None:
        if self._running is not None and not self._running.done():
            with anyio.CancelScope(shield=True):
                await self._running
