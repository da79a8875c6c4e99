"""In-memory Source and Destination for pipeline tests: deterministic data, scripted failures,
and a record of every call, so the engine can be tested without any server."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import pyarrow as pa

from core.protocols import AdapterContext, Checkpoint
from core.errors import FatalError
from core.model import FileRef, HistoryChunk, Namespace, RunRecord, RunRef, history_batch


def make_points(run_index: int, n: int) -> pa.RecordBatch:
    steps = np.arange(n, dtype=np.int64) // 2
    keys = np.where(np.arange(n) % 2 == 0, "loss", "acc")
    values = np.sin(np.arange(n, dtype=np.float64) + run_index)
    values[::7] = np.nan
    values[3::11] = np.inf
    timestamps = 1.7e9 + steps * 0.5 + run_index
    return history_batch(keys.tolist(), steps, timestamps, values)


@dataclass
class FakeSource:
    """``runs`` runs of ``points`` points; ``fail_runs`` make get_run raise."""

    runs: int = 5
    points: int = 1000
    files: dict[str, bytes] = field(default_factory=lambda: {"a.txt": b"hello", "dir/b.bin": bytes(range(256)) * 10})
    fail_runs: set[str] = field(default_factory=set)
    fail_history_at: dict[str, int] = field(default_factory=dict)
    context: AdapterContext = field(default_factory=AdapterContext)
    history_calls: list[tuple[str, int]] = field(default_factory=list)
    file_reads: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        return "fake://source"

    async def __aenter__(self) -> FakeSource:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def list_runs(self) -> AsyncIterator[RunRef]:
        for i in range(self.runs):
            yield RunRef(id=f"run{i}", namespace=Namespace("team", "proj"), name=f"name-{i}")

    async def get_run(self, ref: RunRef) -> RunRecord:
        if ref.id in self.fail_runs:
            raise FatalError(f"cannot read {ref.id}")
        return RunRecord(ref=ref, display_name=ref.name, config={"lr": "0.1"}, history_points=self.points)

    def full_history(self, ref_id: str) -> pa.RecordBatch:
        return make_points(int(ref_id.removeprefix("run")), self.points)

    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncIterator[HistoryChunk]:
        self.history_calls.append((run.ref.id, start))
        batch = self.full_history(run.ref.id)
        step = self.context.chunk_points
        for offset in range(start, batch.num_rows, step):
            fail_at = self.fail_history_at.get(run.ref.id)
            if fail_at is not None and offset >= fail_at:
                raise FatalError(f"history of {run.ref.id} broke at {offset}")
            await anyio.sleep(0)
            yield HistoryChunk(batch.slice(offset, step), offset)

    async def list_files(self, run: RunRecord) -> AsyncIterator[FileRef]:
        for path, data in sorted(self.files.items()):
            yield FileRef(path=path, size=len(data), md5=hashlib.md5(data).hexdigest())

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncIterator[bytes]:
        self.file_reads.append((run.ref.id, file.path))
        data = self.files[file.path]
        for i in range(0, len(data), 100):
            yield data[i : i + 100]


@dataclass
class FakeStore:
    """What the fake destination holds; survives destination instances like a server would."""

    history: dict[str, list[pa.RecordBatch]] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    finished: dict[str, RunRecord] = field(default_factory=dict)
    opened: list[tuple[str, Checkpoint | None]] = field(default_factory=list)

    def table(self, run_id: str) -> pa.Table:
        return pa.Table.from_batches(self.history.get(run_id, []), schema=make_points(0, 0).schema)


class FakeWriter:
    def __init__(self, store: FakeStore, run: RunRecord, resume: Checkpoint | None, fail_files: set[str]) -> None:
        self.store = store
        self.run_id = run.ref.id
        self.dest_id = f"dest-{run.ref.id}"
        points = resume.history_points if resume else 0
        kept, total = [], 0
        for batch in store.history.get(self.run_id, []):  # drop what the ledger never acknowledged
            if total >= points:
                break
            kept.append(batch.slice(0, points - total))
            total += min(batch.num_rows, points - total)
        store.history[self.run_id] = kept
        self.points = total
        self.fail_files = fail_files
        self.closed = False

    async def write_history(self, chunk: HistoryChunk) -> None:
        assert chunk.offset == self.points, (chunk.offset, self.points)
        self.store.history[self.run_id].append(chunk.batch)
        self.points += len(chunk)

    async def flush_history(self) -> None:
        return None

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(history_points=self.points, state={"lines": self.points})

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        if file.path in self.fail_files:
            raise FatalError(f"refusing {file.path}")
        buf = b"".join([piece async for piece in data])
        self.store.files.setdefault(self.run_id, {})[file.path] = buf

    async def finish(self, run: RunRecord) -> None:
        self.store.finished[self.run_id] = dataclasses.replace(run)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeDestination:
    store: FakeStore = field(default_factory=FakeStore)
    fail_files: set[str] = field(default_factory=set)
    finalized: int = 0
    writers: list[FakeWriter] = field(default_factory=list)

    def describe(self) -> str:
        return "fake://destination"

    async def __aenter__(self) -> FakeDestination:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def open_run(self, run: RunRecord, resume: Checkpoint | None) -> FakeWriter:
        self.store.opened.append((run.ref.id, resume))
        writer = FakeWriter(self.store, run, resume, self.fail_files)
        self.writers.append(writer)
        return writer

    async def finalize(self) -> None:
        self.finalized += 1
