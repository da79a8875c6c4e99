"""A one-shot byte stream made replayable, so an upload can be retried mid-file.

The engine hands a writer each file as a stream it can read once. HTTP retries need the body
again from its first byte; instead of holding the file in memory, everything pulled from the
stream is kept in a spool (memory up to ``memory_limit`` bytes, then a temporary file on disk)
and each new attempt replays the spool before pulling the rest. The spool is removed when
closed (an unnamed temporary file: nothing is left behind even when the process is killed).

``fill()`` pulls the whole stream into the spool first, in the caller's task. An upload does so
before its first attempt: aiohttp reads a request body in a writer task of its own and cancels
that task when the connection drops, and a cancellation thrown into the engine's stream while it
is being read would end that stream for good (every later attempt would then send a truncated
body).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from typing import IO

import anyio.to_thread

_READ_PIECE = 1 << 20


class ReplayableStream:
    """Wrap ``source``; call ``attempt()`` once per try; ``aclose()`` when done."""

    def __init__(self, source: AsyncIterator[bytes], *, memory_limit: int = 8 << 20) -> None:
        self._source = source
        self._memory_limit = memory_limit
        self._memory: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._size = 0
        self._exhausted = False

    @property
    def size(self) -> int:
        """Bytes pulled from the source so far."""
        return self._size

    async def fill(self) -> None:
        """Pull the rest of the source into the spool (attempts then only replay)."""
        while await self._pull() is not None:
            pass

    async def attempt(self) -> AsyncGenerator[bytes, None]:
        """The whole stream: replay what was spooled, then go on reading (and spooling)."""
        async for piece in self._replay():
            yield piece
        while (pulled := await self._pull()) is not None:
            yield pulled

    async def _pull(self) -> bytes | None:
        """The source's next non-empty piece, already spooled (None at its end)."""
        while not self._exhausted:
            try:
                piece = await self._source.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
                return None
            if piece:
                await self._keep(piece)  # kept before it is sent: an aborted attempt loses nothing
                return piece
        return None

    async def _keep(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._memory is not None and len(self._memory) + len(piece) <= self._memory_limit:
            self._memory += piece
            return
        if self._file is None:
            self._file = await anyio.to_thread.run_sync(tempfile.TemporaryFile)
            if self._memory:
                await anyio.to_thread.run_sync(_append, self._file, bytes(self._memory))
            self._memory = None
        await anyio.to_thread.run_sync(_append, self._file, piece)

    async def _replay(self) -> AsyncGenerator[bytes, None]:
        if self._memory is not None:
            snapshot = bytes(self._memory)
            for i in range(0, len(snapshot), _READ_PIECE):
                yield snapshot[i : i + _READ_PIECE]
            return
        assert self._file is not None
        handle = self._file
        end = self._size
        position = 0
        while position < end:
            def read_at(pos: int = position) -> bytes:
                handle.seek(pos)
                return handle.read(min(_READ_PIECE, end - pos))

            piece = await anyio.to_thread.run_sync(read_at)
            if not piece:
                return
            position += len(piece)
            yield piece

    async def aclose(self) -> None:
        handle, self._file = self._file, None
        self._memory = None
        if handle is not None:
            await anyio.to_thread.run_sync(handle.close)


def _append(handle: IO[bytes], data: bytes) -> None:
    handle.seek(0, 2)  # a replay may have moved the position
    handle.write(data)
