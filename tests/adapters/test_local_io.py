"""``write_piece``: small pieces written from the event loop, large ones in a worker thread,
every byte in order, disk errors as ``FatalError``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from adapters.local._io import LOOP_WRITE_MAX, write_piece
from core.errors import FatalError


class ThreadNoting:
    """A real file that notes which thread each write ran on."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.threads: list[int] = []

    def write(self, data: bytes) -> int:
        self.threads.append(threading.get_ident())
        return self.handle.write(data)


async def test_small_pieces_are_written_from_the_loop_and_large_ones_in_a_thread(tmp_path: Path) -> None:
    pieces = [b"a" * 1000, bytes(range(256)) * (LOOP_WRITE_MAX // 256), b"b" * (LOOP_WRITE_MAX + 1), b"", b"c"]
    with (tmp_path / "out").open("wb") as raw:
        noting = ThreadNoting(raw)
        for piece in pieces:
            await write_piece(noting, piece)  # type: ignore[arg-type]
    assert (tmp_path / "out").read_bytes() == b"".join(pieces)
    loop = threading.get_ident()
    assert [thread == loop for thread in noting.threads] == [True, True, False, True, True]


@pytest.mark.parametrize("size", [10, LOOP_WRITE_MAX + 1])
async def test_disk_errors_are_fatal_from_the_loop_and_from_threads(tmp_path: Path, size: int) -> None:
    (tmp_path / "ro").write_bytes(b"x")
    with (tmp_path / "ro").open("rb") as read_only, pytest.raises(FatalError, match="local export: UnsupportedOperation"):
        await write_piece(read_only, b"y" * size)
    assert (tmp_path / "ro").read_bytes() == b"x"
