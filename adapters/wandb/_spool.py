"""Stage a file stream on local disk while hashing it, so uploads can be retried.

Why: a source stream can be read once, but an HTTP upload may need several attempts, and W&B
artifacts need every member's MD5 before any upload URL exists (the artifact digest covers the
whole manifest). Pieces go straight to disk (never the whole file in memory); the staged file
is deleted by ``Spooled.discard`` (callers register it where the file is born).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread


@dataclass(frozen=True, slots=True)
class Spooled:
    path: str
    size: int
    md5_hex: str
    part_size: int = 0
    part_md5_hex: tuple[str, ...] = ()

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.md5_hex)).decode()

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def read(self, start: int = 0, length: int | None = None, piece: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """Stream ``length`` bytes from ``start`` (whole file by default)."""
        remaining = self.size - start if length is None else length
        fh = await anyio.to_thread.run_sync(open, self.path, "rb")
        try:
            await anyio.to_thread.run_sync(fh.seek, start)
            while remaining > 0:
                data = await anyio.to_thread.run_sync(fh.read, min(piece, remaining))
                if not data:
                    raise OSError(f"staged file {self.path} is shorter than expected")
                remaining -= len(data)
                yield data
        finally:  # closed at once, even when the reader is cancelled (a read-only close never blocks)
            fh.close()


async def spool(data: AsyncIterator[bytes], directory: str | None = None, part_size: int = 0) -> Spooled:
    """Write the stream to a new temp file; return its path, size and MD5 (and, with
    ``part_size``, the MD5 of every ``part_size`` slice, for multipart uploads)."""
    if directory:  # a configured spool_dir is created with its first file (probed at start)
        os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="runferry-wandb-", dir=directory or None)
    os.close(fd)
    md5 = hashlib.md5()
    part = hashlib.md5()
    part_fill = 0
    parts: list[str] = []
    size = 0
    try:
        async with await anyio.open_file(path, "wb") as fh:
            async for piece in data:
                md5.update(piece)
                size += len(piece)
                await fh.write(piece)
                if part_size:
                    view = memoryview(piece)
                    while view:
                        take = min(len(view), part_size - part_fill)
                        part.update(view[:take])
                        part_fill += take
                        view = view[take:]
                        if part_fill == part_size:
                            parts.append(part.hexdigest())
                            part, part_fill = hashlib.md5(), 0
        if part_size and part_fill:
            parts.append(part.hexdigest())
    except BaseException:
        os.unlink(path)
        raise
    return Spooled(path, size, md5.hexdigest(), part_size, tuple(parts))
