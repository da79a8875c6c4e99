"""The local export directory as a destination: Parquet history, files, run.json, run tables.

Durability follows ``core.protocols``: every history chunk becomes its own part file before
``write_history`` returns, so ``checkpoint()`` counts exactly what a crash would leave;
``open_run(resume=...)`` trims whatever came after the ledger's last record. Blocking file work
runs in worker threads (``anyio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import anyio
import anyio.to_thread
import pyarrow as pa

from core.protocols import AdapterContext, Checkpoint
from adapters.local import _history, _layout, _tables
from adapters.local._io import blocking
from core.errors import FatalError
from core.model import HISTORY_SCHEMA, FileRef, HistoryChunk, RunRecord
from core.probe import probe_directory


@dataclass(frozen=True, kw_only=True)
class LocalDestinationConfig:
    """``[destination] type = "local"``: an export directory for pandas / polars.

    - ``path`` (required): the export directory (created if missing).
    - ``csv``: also write ``runs.csv`` next to ``runs.parquet`` (default true).
    - ``fsync``: fsync history parts, files and run.json before counting them durable
      (default false: survives a killed process, not a power cut; true is slower).
    """

    path: str
    csv: bool = True
    fsync: bool = False

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must not be empty")


class LocalRunWriter:
    """Writes one run's directory; see the module docstring for durability."""

    def __init__(self, run_dir: Path, dest_id: str, durable: int, *, fsync: bool) -> None:
        self.run_dir = run_dir
        self.dest_id = dest_id
        self._durable = durable
        self._fsync = fsync

    async def write_history(self, chunk: HistoryChunk) -> None:
        if chunk.offset != self._durable:
            raise FatalError(f"{self.dest_id}: history chunk at {chunk.offset}, expected {self._durable}")
        if not len(chunk):
            return
        batch = chunk.batch
        if not batch.schema.equals(HISTORY_SCHEMA):
            try:
                batch = batch.cast(HISTORY_SCHEMA)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError) as exc:
                raise FatalError(f"{self.dest_id}: history batch does not fit HISTORY_SCHEMA: {exc}") from exc
        await blocking(lambda: _history.write_part(self.run_dir, batch, chunk.offset, fsync=self._fsync))
        self._durable = chunk.end

    async def flush_history(self) -> None:
        self._durable = await blocking(lambda: _history.merge(self.run_dir, fsync=self._fsync))

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(history_points=self._durable)

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        target = _layout.file_target(self.run_dir, file.path, file.artifact, file.role)
        if file.artifact is not None:
            meta = _layout.dumps(_layout.artifact_to_json(file.artifact))
            meta_path = _layout.artifact_dir(self.run_dir, file.artifact) / _layout.ARTIFACT_JSON
            await blocking(lambda: _layout.write_if_changed(meta_path, meta, fsync=self._fsync))
        tmp = _layout.temp_sibling(target)

        def open_tmp() -> BinaryIO:
            target.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "wb")

        handle = await blocking(open_tmp)
        try:
            async for piece in data:
                await blocking(handle.write, piece)
            await blocking(self._close_and_publish, handle, tmp, target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await blocking(self._discard, handle, tmp)
            raise

    def _close_and_publish(self, handle: BinaryIO, tmp: Path, target: Path) -> None:
        if self._fsync:
            handle.flush()
            os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, target)

    @staticmethod
    def _discard(handle: BinaryIO, tmp: Path) -> None:
        """Best effort: the error being raised already says what went wrong."""
        with contextlib.suppress(OSError):
            handle.close()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)

    async def finish(self, run: RunRecord) -> None:
        await _write_run_json(self.run_dir, run, fsync=self._fsync)

    async def aclose(self) -> None:
        return None


async def _write_run_json(run_dir: Path, run: RunRecord, *, fsync: bool) -> None:
    data = _layout.dumps(_layout.record_to_json(run))
    await blocking(lambda: _layout.write_atomic(run_dir / _layout.RUN_JSON, data, fsync=fsync))


class LocalDestination:
    """An export directory (see ``adapters.local._layout`` for the layout)."""

    Config = LocalDestinationConfig

    def __init__(self, config: LocalDestinationConfig, context: AdapterContext | None = None) -> None:
        self.config = config
        self.context = context or AdapterContext()
        self.root = Path(config.path).expanduser().absolute()

    def describe(self) -> str:
        return f"local:{self.root}"

    async def __aenter__(self) -> LocalDestination:
        # probe only: the directory is created with the first run (nothing written before)
        await blocking(lambda: probe_directory(self.root, key="path"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def open_run(self, run: RunRecord, resume: Checkpoint | None) -> LocalRunWriter:
        rel = _layout.run_rel_dir(run.ref.namespace, run.ref.id)
        run_dir = self.root / rel
        wanted = resume.history_points if resume is not None else None

        def prepare() -> int:
            run_dir.mkdir(parents=True, exist_ok=True)
            _remove_temporaries(run_dir)
            return _history.recover(run_dir, wanted, fsync=self.config.fsync)

        durable = await blocking(prepare)
        # run.json now, so an unfinished run is visible in the export; finish() rewrites it
        await _write_run_json(run_dir, run, fsync=self.config.fsync)
        return LocalRunWriter(run_dir, rel, durable, fsync=self.config.fsync)

    async def finalize(self) -> None:
        def write() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            _tables.write_runs_tables(self.root, csv=self.config.csv)

        await blocking(write)


def _remove_temporaries(run_dir: Path) -> None:
    """Delete half-written files a killed process left behind (they were never renamed into
    place, so nothing durable refers to them)."""
    for folder, _dirs, names in os.walk(run_dir):
        for name in names:
            if _layout.TMP_MARK in name:
                os.unlink(os.path.join(folder, name))
