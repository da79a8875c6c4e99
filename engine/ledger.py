"""The append-only journal that makes migrations resumable and incremental.

One JSON object per line; never rewritten, only appended, so a crash can at worst tear the last
line, which loading skips. Each line names the run (``run``: the source run id) and the pair it
belongs to (``pair``: source identity -> destination identity), so one file can serve several
migrations. Events, folded in order into one ``RunEntry`` per run:

- ``start``    the run is being migrated (``dest`` may follow in ``open``)
- ``open``     the destination run exists: ``dest_id``
- ``history``  durable history cursor: ``points`` + writer ``state`` (the writer's checkpoint)
- ``file``     one file is durable at the destination: ``file`` (its key), ``bytes``
- ``done``     everything is in: totals
- ``failed``   the run failed: ``reason`` (one line, no secrets)
- ``reset``    incremental = false: forget what was known about this run
- ``checked``  an incremental re-run compared a finished run with the destination (and the
               source's revision): ``action`` (skip / resume / redo) and ``problems`` found

A destination write always happens before the ledger line that records it, so after a SIGKILL
the ledger may lag the destination but never lead it; writers reconcile on reopen (see
``adapters/base.py``). Lines are written, flushed and (``done``/``failed``) fsynced by one writer
thread (``engine.ledger_writer``), in order, so the event loop never waits on the disk or a store.

Crash testing: with ``RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE=N`` in the environment the process
kills itself with SIGKILL instead of appending its N-th line (after the writer wrote every line
before it) — the worst moment, when the destination already holds what the ledger never heard of. Tests use it to prove resume exact.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Container, Iterable
from typing import Any, TextIO

from core.protocols import Checkpoint
from engine.ledger_writer import JournalWriter, Line


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    FAILED = "failed"


@dataclass
class RunEntry:
    """What the ledger knows about one run of one source -> destination pair."""

    run: str
    status: RunStatus = RunStatus.PENDING
    name: str | None = None
    dest_id: str | None = None
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    files: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    findings: list[str] = field(default_factory=list)
    """What the last incremental check found (empty when the run was intact)."""


def pair_key(source: str, destination: str) -> str:
    return f"{source} -> {destination}"


class Ledger:
    """Reads the journal once, then appends to it. Called from one event loop; its lines are
    written by its own writer thread."""

    def __init__(self, path: Path, pair: str, *, clock: Any = time.time) -> None:
        self.path = path
        self.pair = pair
        self._clock = clock
        self._fh: TextIO | None = None
        self._writer: JournalWriter | None = None
        self._append_ready = False
        self._appended = 0
        self._kill_at = int(os.environ.get("RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE", "0") or 0)
        self.entries: dict[str, RunEntry] = {}
        self.torn_lines = 0

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def read(cls, path: Path, pair: str | None = None) -> Ledger:
        """Load the journal (missing file = empty). ``pair=None`` keeps every pair's runs."""
        ledger = cls(path, pair or "")
        if not path.exists():
            return ledger
        with open(path, "rb") as fh:
            ledger.fold_lines(fh, pair)
        return ledger

    def fold_lines(self, lines: Iterable[bytes | str], pair: str | None, runs: Container[str] | None = None) -> None:
        """Fold journal lines in order (``pair=None``: every pair; ``runs``: only those runs).
        Ledger stores (``engine.ledger_store``) feed their files and rows through here."""
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                self.torn_lines += 1  # a torn line from a crash mid-write
                continue
            if not isinstance(event, dict) or (pair is not None and event.get("pair") != pair):
                continue
            if runs is not None and event.get("run") not in runs:
                continue
            self._fold(event)

    def _fold(self, event: dict[str, Any]) -> None:
        run = event.get("run")
        if not isinstance(run, str):
            return
        key = run if self.pair else f"{event.get('pair')}::{run}"
        entry = self.entries.get(key)
        kind = event.get("ev")
        if entry is None or kind == "reset":
            entry = self.entries[key] = RunEntry(run=run)
        entry.updated = event.get("t", entry.updated)
        if kind == "start":
            entry.status = RunStatus.IN_PROGRESS
            entry.name = event.get("name", entry.name)
            entry.reason = None
        elif kind == "open":
            entry.dest_id = event.get("dest_id")
        elif kind == "history":
            entry.checkpoint = Checkpoint(history_points=int(event["points"]), state=event.get("state") or {})
        elif kind == "file":
            entry.files[event["file"]] = int(event.get("bytes", 0))
        elif kind == "done":
            entry.status = RunStatus.DONE
            entry.totals = event.get("totals", {})
        elif kind == "failed":
            entry.status = RunStatus.FAILED
            entry.reason = event.get("reason")
        elif kind == "checked":
            entry.findings = list(event.get("problems") or [])

    # -- writing -----------------------------------------------------------------------------
    def open_for_append(self) -> None:
        """Ready to append; the file (and its directory) is created with the first line, so a
        migration that stops before moving anything leaves no ledger behind."""
        self._append_ready = True

    def _open_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        else:
            needs_newline = False
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if needs_newline:  # terminate a torn last line so our first record stands on its own
            self._fh.write("\n")
            self._fh.flush()

    def writable(self) -> bool:
        return self._fh is not None or self._append_ready

    def close(self) -> None:
        """Write what is queued, fsync, close; raise a write that failed."""
        self._append_ready = False
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._writer = None
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None

    def flush(self) -> None:
        """Block until every line appended so far is written; raise a write that failed."""
        if self._writer is not None:
            self._writer.flush()

    def _append(self, run: str, kind: str, *, sync: bool = False, **fields: Any) -> None:
        event = {"t": round(self._clock(), 3), "pair": self.pair, "run": run, "ev": kind, **fields}
        self._fold(event)
        if not self.writable():
            raise RuntimeError("ledger is not open for writing")
        if self._writer is None:
            self._writer = JournalWriter(self._write_batch)
        self._appended += 1
        if self._appended == self._kill_at:
            self._writer.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self._writer.put((run, json.dumps(event, separators=(",", ":"), allow_nan=False), sync))

    def _write_batch(self, batch: list[Line]) -> None:
        """Make journal lines durable, in order (on the writer thread; stores that are not one
        local file override this)."""
        if self._fh is None:
            self._open_file()
        assert self._fh is not None
        self._fh.write("".join(line + "\n" for _, line, _ in batch))
        self._fh.flush()
        if any(sync for _, _, sync in batch):
            os.fsync(self._fh.fileno())

    def get(self, run: str) -> RunEntry | None:
        return self.entries.get(run)

    def reset(self, run: str) -> None:
        self._append(run, "reset")

    def start(self, run: str, name: str | None) -> None:
        self._append(run, "start", name=name)

    def opened(self, run: str, dest_id: str) -> None:
        self._append(run, "open", dest_id=dest_id)

    def history(self, run: str, checkpoint: Checkpoint) -> None:
        self._append(run, "history", points=checkpoint.history_points, state=checkpoint.state)

    def file_done(self, run: str, file_key: str, size: int) -> None:
        self._append(run, "file", file=file_key, bytes=size)

    def done(self, run: str, totals: dict[str, Any]) -> None:
        self._append(run, "done", sync=True, totals=totals)

    def checked(self, run: str, action: str, problems: list[str]) -> None:
        self._append(run, "checked", action=action, problems=problems)

    def failed(self, run: str, reason: str) -> None:
        self._append(run, "failed", sync=True, reason=reason)
