"""A local export directory as a source, so exports can be checked, re-exported or migrated on.

Reads exactly what ``LocalDestination`` wrote: run.json records, history from Parquet row
groups (a resume start skips whole row groups by their metadata, then slices one), files and
artifact members in pieces. Blocking reads run in worker threads.

An export in an object store (``path = "s3://bucket/prefix"``) is read the same way: run.json
and artifact.json objects are fetched, a run's history segments are downloaded into a private
staging directory while the run is read (then removed), files stream from the bucket.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
import pyarrow.parquet as pq

from core.protocols import AdapterContext
from adapters.local import _history, _layout, _tables
from adapters.local._io import blocking, blocking_read, read_pieces
from adapters.local._remote import RemoteRoot, S3Access, check_remote_path, is_remote
from core.errors import ConfigError, NotFoundError
from core.model import CONSOLE_LOG, HISTORY_SCHEMA, FileRef, HistoryChunk, RunRecord, RunRef

_MAX_PIECE = 8 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class LocalSourceConfig(S3Access):
    """``[source] type = "local"``: read an export directory written by the local destination.

    - ``path`` (required): the export directory, or ``s3://bucket/prefix`` for one in an
      object store (the ``s3_*`` keys as for the local destination).
    - ``projects``: only runs whose ``entity/project`` matches one of these globs (default: all).
    - ``chunk_points``: history points per chunk (0 = the engine's ``chunk_points``).
    """

    path: str
    projects: list[str] = field(default_factory=list)
    chunk_points: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must not be empty")
        if self.chunk_points < 0:
            raise ValueError("chunk_points must not be negative")
        check_remote_path(self.path)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc: dict[str, Any] = json.loads(f.read())
            return doc
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist", adapter="local") from exc


async def _drain_in_thread(iterator: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """Step a blocking iterator in worker threads, one item per hop."""
    done = object()
    try:
        while True:
            item = await blocking_read(next, iterator, done)
            if item is done:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await blocking_read(close)


class LocalSource:
    """Runs of a local export directory, in sorted directory order."""

    Config = LocalSourceConfig

    def __init__(self, config: LocalSourceConfig, context: AdapterContext | None = None) -> None:
        self.config = config
        self.context = context or AdapterContext()
        self.remote: RemoteRoot | None = None
        if is_remote(config.path):
            self.remote = RemoteRoot(config.path, config, self.context, name="local-s3")
            self.root = Path()  # the staging directory, made by __aenter__
        else:
            self.root = Path(config.path).expanduser().absolute()

    def describe(self) -> str:
        return f"local:{self.config.path}" if self.remote is not None else f"local:{self.root}"

    async def __aenter__(self) -> LocalSource:
        if self.remote is not None:
            await self.remote.__aenter__()
            if not await self.remote.list("runs/"):
                await self.remote.__aexit__(None, None, None)
                raise ConfigError(f"source path {self.config.path} is not a runferry export (no runs/ objects)")
            self.root = Path(await blocking(tempfile.mkdtemp, "", "runferry-export-staging-"))
            return self
        if not await blocking_read((self.root / "runs").is_dir):
            raise ConfigError(f"source path {self.root} is not a runferry export (no runs/ directory)")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.remote is not None:
            with anyio.CancelScope(shield=True):
                await blocking(shutil.rmtree, self.root, True)
            await self.remote.__aexit__(exc_type, exc, tb)

    @property
    def chunk_points(self) -> int:
        return self.config.chunk_points or self.context.chunk_points

    def _selected(self, doc: dict[str, Any]) -> bool:
        patterns = self.config.projects
        return not patterns or any(fnmatch.fnmatchcase(f"{doc['entity']}/{doc['project']}", p) for p in patterns)

    def _refs(self) -> Iterator[RunRef]:
        for path in _tables.run_json_paths(self.root):
            doc = _load_json(path)
            if self._selected(doc):
                yield _layout.record_from_json(doc, str(path.parent.relative_to(self.root))).ref

    async def list_runs(self) -> AsyncGenerator[RunRef, None]:
        if self.remote is not None:
            async for ref in self._remote_refs(self.remote):
                yield ref
            return
        async with contextlib.aclosing(_drain_in_thread(self._refs())) as refs:
            async for ref in refs:
                yield ref

    async def _remote_refs(self, remote: RemoteRoot) -> AsyncGenerator[RunRef, None]:
        """runs/<entity>/<project>/<run>/run.json objects, in the local directory order."""
        found = [p for p, _ in await remote.list("runs/") if p.endswith(f"/{_layout.RUN_JSON}")]
        for path in sorted((p for p in found if p.count("/") == 4), key=lambda p: p.split("/")):
            doc = json.loads(await remote.get(path))
            if self._selected(doc):
                yield _layout.record_from_json(doc, path.rpartition("/")[0]).ref

    def _run_dir(self, ref: RunRef) -> tuple[str, Path]:
        rel = ref.hint("local_dir") or _layout.run_rel_dir(ref.namespace, ref.id)
        return rel, self.root / rel

    async def get_run(self, ref: RunRef) -> RunRecord:
        rel, run_dir = self._run_dir(ref)
        if self.remote is not None:
            doc = json.loads(await self.remote.get(f"{rel}/{_layout.RUN_JSON}"))
        else:
            doc = await blocking_read(_load_json, run_dir / _layout.RUN_JSON)
        return _layout.record_from_json(doc, rel)

    def _history(self, run_dir: Path, start: int) -> Iterator[HistoryChunk]:
        for seg in _history.segments(run_dir):
            if seg.end <= start:
                continue
            with open(seg.path, "rb") as f:
                pf = pq.ParquetFile(f)
                # skip whole row groups that end before ``start`` using only the footer
                position, first_group = seg.offset, 0
                while first_group < pf.num_row_groups:
                    rows = pf.metadata.row_group(first_group).num_rows
                    if position + rows > start:
                        break
                    position += rows
                    first_group += 1
                groups = list(range(first_group, pf.num_row_groups))
                if not groups:
                    continue
                for batch in pf.iter_batches(batch_size=self.chunk_points, row_groups=groups):
                    if position + batch.num_rows <= start:
                        position += batch.num_rows
                        continue
                    if position < start:
                        batch = batch.slice(start - position)
                        position = start
                    if not batch.schema.equals(HISTORY_SCHEMA):
                        batch = batch.cast(HISTORY_SCHEMA)
                    yield HistoryChunk(batch=batch, offset=position)
                    position += batch.num_rows

    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncGenerator[HistoryChunk, None]:
        rel, run_dir = self._run_dir(run.ref)
        if self.remote is None:
            async with contextlib.aclosing(_drain_in_thread(self._history(run_dir, max(0, start)))) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        # the run's segments, downloaded for this read only (the same run may be read twice at once)
        staged = Path(await blocking(tempfile.mkdtemp, "", "run-", str(self.root)))
        try:
            for path, _ in await self.remote.list(f"{rel}/history."):
                await self.remote.download(path, staged / path[len(rel) + 1 :])
            async with contextlib.aclosing(_drain_in_thread(self._history(staged, max(0, start)))) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await blocking(shutil.rmtree, staged, True)

    def _files(self, run_dir: Path) -> list[FileRef]:
        found = [FileRef(path=rel, size=size) for rel, size in _walk(run_dir / _layout.FILES)]
        found += [FileRef(path=rel, size=size, role=CONSOLE_LOG) for rel, size in _walk(run_dir / _layout.CONSOLE)]
        artifacts = run_dir / _layout.ARTIFACTS
        for name_dir in _tables.sorted_dirs(artifacts):
            for version_dir in _tables.sorted_dirs(name_dir):
                meta = version_dir / _layout.ARTIFACT_JSON
                if not meta.is_file():
                    continue
                artifact = _layout.artifact_from_json(_load_json(meta))
                found += [
                    FileRef(path=rel, size=size, artifact=artifact)
                    for rel, size in _walk(version_dir)
                    if rel != _layout.ARTIFACT_JSON
                ]
        return found

    async def list_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        rel, run_dir = self._run_dir(run.ref)
        if self.remote is not None:
            for file in await self._remote_files(self.remote, rel):
                yield file
            return
        for file in await blocking_read(self._files, run_dir):
            yield file

    async def _remote_files(self, remote: RemoteRoot, rel: str) -> list[FileRef]:
        """The run's files as ``_files`` finds them locally, from one listing of the run."""
        found: list[FileRef] = []
        artifacts: dict[str, list[tuple[str, int]]] = {}
        for path, size in await remote.list(f"{rel}/"):
            inside = path[len(rel) + 1 :]
            top, _, rest = inside.partition("/")
            if top == _layout.FILES:
                found.append(FileRef(path=rest, size=size))
            elif top == _layout.CONSOLE:
                found.append(FileRef(path=rest, size=size, role=CONSOLE_LOG))
            elif top == _layout.ARTIFACTS and rest.count("/") >= 2:
                name, version, member = rest.split("/", 2)
                artifacts.setdefault(f"{name}/{version}", []).append((member, size))
        for folder, members in artifacts.items():
            names = {member for member, _ in members}
            if _layout.ARTIFACT_JSON not in names:
                continue
            meta = json.loads(await remote.get(f"{rel}/{_layout.ARTIFACTS}/{folder}/{_layout.ARTIFACT_JSON}"))
            artifact = _layout.artifact_from_json(meta)
            found += [FileRef(path=m, size=n, artifact=artifact) for m, n in members if m != _layout.ARTIFACT_JSON]
        return found

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncGenerator[bytes, None]:
        rel, run_dir = self._run_dir(run.ref)
        path = _layout.file_target(run_dir, file.path, file.artifact, file.role)
        if self.remote is not None:
            async with contextlib.aclosing(self.remote.read(f"{rel}/{path.relative_to(run_dir).as_posix()}")) as pieces:
                async for data in pieces:
                    yield data
            return
        async with contextlib.aclosing(read_pieces(path, min(self.context.part_bytes, _MAX_PIECE))) as pieces:
            async for data in pieces:  # NotFoundError when it is missing
                yield data


def _walk(folder: Path) -> Iterator[tuple[str, int]]:
    """(relative POSIX path, size) of every regular file under ``folder``, sorted."""
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if _layout.TMP_MARK in name:
                continue
            full = Path(dirpath) / name
            yield full.relative_to(folder).as_posix(), full.stat().st_size
