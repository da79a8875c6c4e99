"""One thread that makes journal lines durable, so writes and fsyncs never block the event loop.

The ledger folds every event into memory at once (on the loop) and hands the serialised line to
this writer. The writer takes whatever lines have queued up, writes them in order with one call
(group commit: one ``write`` + ``flush`` for the batch, one ``fsync`` when any line asked for it)
and goes back to waiting. Order is kept because there is one queue and one thread.

A line handed over may reach the journal a moment later than the destination write it records:
that only widens the window in which the ledger lags the destination, which resume already
reconciles (``adapters/base.py``); it can never make the ledger lead. A write that fails (a full
disk, a lease that moved on) is kept and raised to the ledger's next caller; lines after it are
dropped, never written out of order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Line = tuple[str, str, bool]
"""(run, serialised JSON line, whether it must be fsynced)."""


class JournalWriter:
    """A FIFO of journal lines drained by one thread through ``write_batch``."""

    def __init__(self, write_batch: Callable[[list[Line]], None], name: str = "runferry-ledger") -> None:
        self._write_batch = write_batch
        self._queue: queue.SimpleQueue[Line | threading.Event | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
        self._thread.start()

    def put(self, line: Line) -> None:
        """Queue one line (never blocks); raise what an earlier write failed with."""
        self.raise_error()
        self._queue.put(line)

    def flush(self) -> None:
        """Block until every line queued so far is written (or failed); raise a write's failure."""
        written = threading.Event()
        self._queue.put(written)
        written.wait()
        self.raise_error()

    def close(self) -> None:
        """Write what is queued, stop the thread; raise a write's failure."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        stopping = False
        while not stopping:
            batch: list[Line] = []
            waiters: list[threading.Event] = []
            item = self._queue.get()
            while True:  # take everything queued so far: one write for the lot
                if item is None:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch and self._error is None:
                try:
                    self._write_batch(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the ledger's caller
                    self._error = exc
            for waiter in waiters:
                waiter.set()
