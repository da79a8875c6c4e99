"""Blocking file work off the event loop, with disk errors translated into the error tree.

Every local-adapter call that touches the disk goes through ``blocking`` (writing) or
``blocking_read``: it runs in a worker thread (the event loop never waits on the disk) and
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
        raise FatalError(f"local export: {type(exc).__name__}: {exc}", adapter="local") from exc


async def blocking_read(fn: Callable[..., T], *args: object) -> T:
    """Like ``blocking``. :raises NotFoundError: when a path does not exist."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFoundError(f"local export: {exc}", adapter="local") from exc
    except (OSError, pa.ArrowException) as exc:
        raise FatalError(f"local export: {type(exc).__name__}: {exc}", adapter="local") from exc


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
