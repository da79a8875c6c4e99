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
``core/protocols.py``). Lines are written by one writer thread, in order, off the event loop
(``_LineWriter``): each is flushed to the OS as soon as that thread gets to it (a SIGKILL can
lose the last few, which only makes the ledger lag), and ``done`` / ``failed`` lines are also
fsynced (power loss). The in-memory entries are updated at once, in the caller.

Crash testing: with ``RUNFERRY_FAULT_KILL_BEFORE_LEDGER_LINE=N`` in the environment the process
kills itself with SIGKILL instead of appending its N-th line — the worst moment, when the
destination already holds what the ledger never heard of. Tests use it to prove resume exact.
"""

from __future__ import annotations

import enum
import json
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from core.protocols import Checkpoint


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


class _LineWriter:
    """Writes, flushes and (when asked) fsyncs the ledger's lines in order, on its own thread.

    The first error stops the writing and is raised to the next ``put`` or to ``close``.
    """

    def __init__(self, fh: TextIO, kill_at: int) -> None:
        self._fh = fh
        self._kill_at = kill_at
        self._written = 0
        self._queue: queue.SimpleQueue[tuple[str, bool] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="runferry-ledger", daemon=True)
        self._thread.start()

    def put(self, line: str, *, sync: bool) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((line, sync))

    def close(self) -> None:
        """Write what is queued, fsync, close the file; raise the writer's error, if any."""
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        """Take every line queued so far, write them in order, flush once, fsync once if any
        asked for it (one wake-up and one system call per burst, not per line)."""
        done = False
        while not done:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            done = batch[-1] is None
            lines = [item for item in batch if item is not None]
            if self._error is not None or not lines:
                continue
            try:
                for line, _ in lines:
                    self._written += 1
                    if self._written == self._kill_at:  # crash testing: see the module docstring
                        self._fh.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
                    self._fh.write(line)
                self._fh.flush()
                if any(sync for _, sync in lines):
                    os.fsync(self._fh.fileno())
            except BaseException as exc:  # handed to the event loop's side (put / close)
                self._error = exc


class Ledger:
    """Reads the journal once, then appends to it. Appending is called from one event loop;
    the file I/O happens on the ledger's writer thread."""

    def __init__(self, path: Path, pair: str, *, clock: Any = time.time) -> None:
        self.path = path
        self.pair = pair
        self._clock = clock
        self._writer: _LineWriter | None = None
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
            for raw in fh:
                try:
                    event = json.loads(raw)
                except ValueError:
                    ledger.torn_lines += 1  # a torn line from a crash mid-write
                    continue
                if not isinstance(event, dict) or (pair is not None and event.get("pair") != pair):
                    continue
                ledger._fold(event)
        return ledger

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        else:
            needs_newline = False
        log = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the writer's close()
        if needs_newline:  # terminate a torn last line so our first record stands on its own
            log.write("\n")
            log.flush()
        self._writer = _LineWriter(log, self._kill_at)

    def close(self) -> None:
        """Wait for every queued line to be written, fsync and close (blocking: call it from a
        worker thread in async code)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _append(self, run: str, kind: str, *, sync: bool = False, **fields: Any) -> None:
        event = {"t": round(self._clock(), 3), "pair": self.pair, "run": run, "ev": kind, **fields}
        self._fold(event)
        if self._writer is None:
            raise RuntimeError("ledger is not open for writing")
        self._writer.put(json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n", sync=sync)

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
