"""The ledger's writes leave the caller's thread: a stalled disk never stalls the event loop, lines
keep their order, and a failed write reaches the ledger's next caller."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.protocols import Checkpoint
from engine.ledger import Ledger, RunStatus
from engine.ledger_writer import JournalWriter, Line


class StalledDisk:
    """A batch writer that blocks until the test lets it go, recording what it wrote."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[Line]] = []

    def __call__(self, batch: list[Line]) -> None:
        self.entered.set()
        assert self.release.wait(timeout=30)
        self.batches.append(batch)


def test_appends_return_while_the_disk_is_stalled_and_keep_their_order() -> None:
    disk = StalledDisk()
    writer = JournalWriter(disk)
    writer.put(("r", "1", False))
    assert disk.entered.wait(timeout=30)  # the writer thread is stuck inside the first write
    for n in range(2, 101):
        writer.put(("r", str(n), n % 10 == 0))  # returns at once: nothing waits on the disk
    assert disk.batches == []
    disk.release.set()
    writer.close()
    written = [line for batch in disk.batches for _, line, _ in batch]
    assert written == [str(n) for n in range(1, 101)]
    assert len(disk.batches) < 100  # what queued up while the disk stalled went in as one batch


def test_a_failed_write_reaches_the_next_caller_and_later_lines_are_dropped() -> None:
    written: list[str] = []

    def failing(batch: list[Line]) -> None:
        for _, line, _ in batch:
            if line == "bad":
                raise OSError(28, "No space left on device")
            written.append(line)

    writer = JournalWriter(failing)
    writer.put(("r", "ok", False))
    writer.flush()
    writer.put(("r", "bad", False))
    with pytest.raises(OSError, match="No space"):
        writer.flush()
    with pytest.raises(OSError, match="No space"):
        writer.put(("r", "after", False))
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert written == ["ok"]


def test_the_ledger_folds_at_once_and_the_journal_holds_every_line_after_close(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, "a -> b", clock=lambda: 1.0)
    ledger.open_for_append()
    for n in range(500):
        ledger.start(f"r{n}", None)
        ledger.history(f"r{n}", Checkpoint(history_points=n))
        assert ledger.get(f"r{n}").checkpoint.history_points == n  # in memory before it is on disk
        ledger.done(f"r{n}", {"points": n})
    ledger.close()
    again = Ledger.read(path, "a -> b")
    assert again.torn_lines == 0
    assert len(path.read_text().splitlines()) == 1500
    assert all(again.get(f"r{n}").status is RunStatus.DONE for n in range(500))
    assert [again.get(f"r{n}").checkpoint.history_points for n in range(500)] == list(range(500))
