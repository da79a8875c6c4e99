"""The ledger folds an append-only journal; torn lines and other pairs are ignored."""

from __future__ import annotations

from pathlib import Path

from core.protocols import Checkpoint
from engine.ledger import Ledger, RunStatus


def test_events_fold_into_entries(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, "a -> b", clock=lambda: 1.0)
    ledger.open_for_append()
    ledger.start("r1", "first")
    ledger.opened("r1", "d1")
    ledger.history("r1", Checkpoint(history_points=10, state={"offset": 3}))
    ledger.file_done("r1", "f.txt", 5)
    ledger.done("r1", {"points": 10})
    ledger.start("r2", "second")
    ledger.failed("r2", "FatalError: no")
    ledger.close()

    again = Ledger.read(path, "a -> b")
    r1, r2 = again.entries["r1"], again.entries["r2"]
    assert (r1.status, r1.dest_id, r1.checkpoint, r1.files) == (
        RunStatus.DONE,
        "d1",
        Checkpoint(history_points=10, state={"offset": 3}),
        {"f.txt": 5},
    )
    assert (r2.status, r2.reason) == (RunStatus.FAILED, "FatalError: no")
    assert Ledger.read(path, "other -> pair").entries == {}


def test_a_torn_last_line_is_skipped_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, "p")
    ledger.open_for_append()
    ledger.history("r", Checkpoint(history_points=5))
    ledger.close()
    with open(path, "a") as fh:
        fh.write('{"t":1,"pair":"p","run":"r","ev":"hist')  # power loss mid-write
    torn = Ledger.read(path, "p")
    assert torn.torn_lines == 1
    assert torn.entries["r"].checkpoint.history_points == 5

    torn.open_for_append()
    torn.history("r", Checkpoint(history_points=9))
    torn.close()
    healed = Ledger.read(path, "p")
    assert healed.torn_lines == 1
    assert healed.entries["r"].checkpoint.history_points == 9


def test_reset_forgets_a_run(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, "p")
    ledger.open_for_append()
    ledger.start("r", None)
    ledger.done("r", {})
    ledger.reset("r")
    ledger.close()
    assert Ledger.read(path, "p").entries["r"].status is RunStatus.PENDING
