"""The local export directory as a destination: Parquet history, files, run.json, run tables.

Durability follows ``core.protocols``: every history chunk becomes its own part file before
``write_history`` returns, so ``checkpoint()`` counts exactly what a crash would leave;
``open_run(resume=...)`` trims whatever came after the ledger's last record. Blocking file work
runs in worker threads (``anyio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
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
from adapters.local._io import blocking, write_piece
from adapters.local._remote import RemoteRoot, S3Access, check_remote_path, is_remote
from core.errors import FatalError
from core.model import HISTORY_SCHEMA, FileRef, HistoryChunk, RunRecord
from core.probe import probe_directory


@dataclass(frozen=True, kw_only=True)
class LocalDestinationConfig(S3Access):
    """``[destination] type = "local"``: an export directory for pandas / polars.

    - ``path`` (required): the export directory (created if missing), or ``s3://bucket/prefix``:
      the same export in an object store, same layout and bytes, every object written whole
      (see ``adapters.local._remote``).
    - ``csv``: also write ``runs.csv`` next to ``runs.parquet`` (default true).
    - ``fsync``: fsync history parts, files and run.json before counting them durable
      (default false: survives a killed process, not a power cut; true is slower).
    - ``s3_endpoint_url`` / ``s3_region``: the object store of an ``s3://`` path (default:
      AWS S3 in ``us-east-1``); ``s3_access_key_id_env`` / ``s3_secret_access_key_env`` /
      ``s3_session_token_env``: environment variables holding its keys (default: the usual
      AWS chain); ``s3_sse_customer_key_env``: a variable holding a base64 256-bit SSE-C key,
      sent with every object request (default: none).
    """

    path: str
    csv: bool = True
    fsync: bool = False

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must not be empty")
        check_remote_path(self.path)


class LocalRunWriter:
    """Writes one run's directory; see the module docstring for durability."""

    def __init__(
        self, run_dir: Path, dest_id: str, durable: int, *, fsync: bool, remote: RemoteRoot | None = None
    ) -> None:
        self.run_dir = run_dir
        self.dest_id = dest_id
        self._durable = durable
        self._fsync = fsync
        self._remote = remote  # an s3:// export: finished files are published there

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
        if self._remote is not None:
            segment = _history.part_path(self.run_dir, chunk.offset) if chunk.offset else self.run_dir / _layout.HISTORY
            await self._remote.upload(segment, self._rel(segment))
        self._durable = chunk.end

    def _rel(self, path: Path) -> str:
        """``path`` (in the run's directory) relative to the export root."""
        return f"{self.dest_id}/{path.relative_to(self.run_dir).as_posix()}"

    async def flush_history(self) -> None:
        merged = self.run_dir / _layout.HISTORY
        before = await blocking(_stamp, merged)
        self._durable = await blocking(lambda: _history.merge(self.run_dir, fsync=self._fsync))
        if self._remote is not None:
            if await blocking(_stamp, merged) != before:
                await self._remote.upload(merged, self._rel(merged))
            await self._remote.delete_under(f"{self.dest_id}/{_layout.PARTS}")  # only after the merged file

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(history_points=self._durable)

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        target = _layout.file_target(self.run_dir, file.path, file.artifact, file.role)
        if file.artifact is not None:
            meta = _layout.dumps(_layout.artifact_to_json(file.artifact))
            meta_path = _layout.artifact_dir(self.run_dir, file.artifact) / _layout.ARTIFACT_JSON
            if self._remote is not None:
                await self._remote.put(self._rel(meta_path), meta)
            else:
                await blocking(lambda: _layout.write_if_changed(meta_path, meta, fsync=self._fsync))
        if self._remote is not None:  # streamed into the bucket: one object, whole or none
            await self._remote.put_stream(self._rel(target), data, file.size)
            return
        tmp = _layout.temp_sibling(target)

        def open_tmp() -> BinaryIO:
            target.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "wb")

        handle = await blocking(open_tmp)
        try:
            async for piece in data:
                await write_piece(handle, piece)
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
        await _write_run_json(self.run_dir, run, fsync=self._fsync, remote=self._remote, rel=self.dest_id)

    async def aclose(self) -> None:
        return None


async def _write_run_json(run_dir: Path, run: RunRecord, *, fsync: bool, remote: RemoteRoot | None, rel: str) -> None:
    data = _layout.dumps(_layout.record_to_json(run))
    if remote is not None:
        await remote.put(f"{rel}/{_layout.RUN_JSON}", data)
    else:
        await blocking(lambda: _layout.write_atomic(run_dir / _layout.RUN_JSON, data, fsync=fsync))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Changes when ``path`` is replaced or rewritten (None: it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class LocalDestination:
    """An export directory (see ``adapters.local._layout`` for the layout)."""

    Config = LocalDestinationConfig

    def __init__(self, config: LocalDestinationConfig, context: AdapterContext | None = None) -> None:
        self.config = config
        self.context = context or AdapterContext()
        self.remote: RemoteRoot | None = None
        if is_remote(config.path):
            # files are built in a private staging directory (self.root) and published whole
            self.remote = RemoteRoot(config.path, config, self.context, name="local-s3")
            self.root = Path()
        else:
            self.root = Path(config.path).expanduser().absolute()

    def describe(self) -> str:
        return f"local:{self.config.path}" if self.remote is not None else f"local:{self.root}"

    async def __aenter__(self) -> LocalDestination:
        if self.remote is not None:
            await self.remote.__aenter__()
            try:
                await self.remote.probe_write()
            except BaseException:
                await self.remote.__aexit__(None, None, None)
                raise
            self.root = Path(await blocking(tempfile.mkdtemp, "", "runferry-export-staging-"))
            return self
        # probe only: the directory is created with the first run (nothing written before)
        await blocking(lambda: probe_directory(self.root, key="path"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.remote is not None:
            with anyio.CancelScope(shield=True):
                await blocking(shutil.rmtree, self.root, True)
            await self.remote.__aexit__(exc_type, exc, tb)

    async def open_run(self, run: RunRecord, resume: Checkpoint | None) -> LocalRunWriter:
        rel = _layout.run_rel_dir(run.ref.namespace, run.ref.id)
        run_dir = self.root / rel
        wanted = resume.history_points if resume is not None else None
        if self.remote is not None:
            durable = await self._recover_remote(rel, run_dir, wanted)
        else:

            def prepare() -> int:
                run_dir.mkdir(parents=True, exist_ok=True)
                _remove_temporaries(run_dir)
                return _history.recover(run_dir, wanted, fsync=self.config.fsync)

            durable = await blocking(prepare)
        # run.json now, so an unfinished run is visible in the export; finish() rewrites it
        await _write_run_json(run_dir, run, fsync=self.config.fsync, remote=self.remote, rel=rel)
        return LocalRunWriter(run_dir, rel, durable, fsync=self.config.fsync, remote=self.remote)

    async def _recover_remote(self, rel: str, run_dir: Path, wanted: int | None) -> int:
        """The run's stored history, brought into staging, cut to ``wanted`` points exactly as
        a local export is (``_history.recover``), and the bucket made to match: objects the
        cut removed are deleted, the ones it rewrote published again."""
        assert self.remote is not None
        stored = [path for path, _ in await self.remote.list(f"{rel}/history.")]  # history.parquet, history.parts/
        await blocking(shutil.rmtree, run_dir, True)  # what an earlier attempt left here
        await blocking(lambda: run_dir.mkdir(parents=True, exist_ok=True))
        if wanted:
            for path in stored:
                await self.remote.download(path, self.root / path)
        before = {path: await blocking(_stamp, self.root / path) for path in stored}
        durable = await blocking(lambda: _history.recover(run_dir, wanted, fsync=False))
        for path in stored:
            now = await blocking(_stamp, self.root / path)
            if now is None:
                await self.remote.delete(path)
            elif now != before[path]:
                await self.remote.upload(self.root / path, path)
        return durable

    async def finalize(self) -> None:
        if self.remote is not None:
            await self._finalize_remote()
            return

        def write() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            _tables.write_runs_tables(self.root, csv=self.config.csv)

        await blocking(write)

    async def _finalize_remote(self) -> None:
        """runs.parquet / runs.csv from every run.json in the bucket, built as locally."""
        assert self.remote is not None
        remote = self.remote
        tables = self.root / ".tables"
        await blocking(shutil.rmtree, tables, True)
        documents = [p for p, _ in await remote.list("runs/") if p.endswith(f"/{_layout.RUN_JSON}")]
        limit = anyio.Semaphore(16)

        async def fetch(path: str) -> None:
            async with limit:
                await remote.download(path, tables / path)

        async with anyio.create_task_group() as tg:
            for path in documents:
                tg.start_soon(fetch, path)

        def write() -> None:
            tables.mkdir(parents=True, exist_ok=True)
            _tables.write_runs_tables(tables, csv=self.config.csv)

        await blocking(write)
        for name in ["runs.parquet"] + (["runs.csv"] if self.config.csv else []):
            await remote.upload(tables / name, name)


def _remove_temporaries(run_dir: Path) -> None:
    """Delete half-written files a killed process left behind (they were never renamed into
    place, so nothing durable refers to them)."""
    for folder, _dirs, names in os.walk(run_dir):
        for name in names:
            if _layout.TMP_MARK in name:
                os.unlink(os.path.join(folder, name))
