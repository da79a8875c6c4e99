"""Blocking file work off the event loop, with disk errors translated into the error tree.

Every local-adapter call that touches the disk goes through ``blocking`` (writing) or
``blocking_read``: it runs in a worker thread (the event loop never waits on the disk; the one
exception is ``write_piece``'s small writes into the page cache, see there) and
turns ``OSError`` / Arrow errors into ``FatalError`` (disk full, a file where a folder should
be, corrupt Parquet) — or, when reading, a missing path into ``NotFoundError`` — keeping the
original on ``__cause__``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import anyio

import anyio.to_thread
import pyarrow as pa

from core.errors import FatalError, NotFoundError

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread. :raises FatalError: on any disk or Arrow error."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except (OSError, pa.ArrowException) as exc:
        raise _disk_error(exc) from exc


def _disk_error(exc: Exception) -> FatalError:
    return FatalError(f"local export: {type(exc).__name__}: {exc}", adapter="local")


async def blocking_read(fn: Callable[..., T], *args: object) -> T:
    """Like ``blocking``. :raises NotFoundError: when a path does not exist."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFoundError(f"local export: {exc}", adapter="local") from exc
    except (OSError, pa.ArrowException) as exc:
        raise FatalError(f"local export: {type(exc).__name__}: {exc}", adapter="local") from exc


# Pieces up to this size are written from the event loop (see ``write_piece``).
LOOP_WRITE_MAX = 1 << 20


async def write_piece(handle: BinaryIO, piece: bytes) -> None:
    """Append ``piece`` to ``handle``: from the loop when small, else in a worker thread.

    Why: a streamed download hands on chunks of at most 256 KiB as the socket gave them. Copied
    into the page cache at once (~0.1 ms for 256 KiB, while the chunk is still in this core's
    cache), 4 x 128 MiB from moto took ~2.7-3.0 CPU s/GiB; one worker-thread hop per chunk
    ~3.5-4, and joining chunks into 8 MiB pieces for fewer hops ~3.5-5 (fresh pages faulted in,
    the bytes read back cold). The cost: a disk throttling writers (dirty pages over the
    kernel's limit) stalls the loop for as long. Larger pieces still go to a thread.

    :raises FatalError: on any disk error.
    """
    if len(piece) > LOOP_WRITE_MAX:
        await blocking(handle.write, piece)
        return
    try:
        handle.write(piece)
    except OSError as exc:
        raise _disk_error(exc) from exc


async def read_pieces(path: Path, piece: int) -> AsyncGenerator[bytes, None]:
    """The file's bytes in pieces of at most ``piece`` bytes, read in worker threads.

    :raises NotFoundError: when the file does not exist.
    """

    def open_binary() -> BinaryIO:
        return open(path, "rb")

    handle = await blocking_read(open_binary)
    try:
        while data := await blocking_read(handle.read, piece):
            yield data
    finally:
        with anyio.CancelScope(shield=True):
            await blocking_read(handle.close)
