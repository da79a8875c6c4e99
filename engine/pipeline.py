"""The migration pipeline: producers -> bounded streams -> worker pools, in anyio task groups.

Shape::

    source.list_runs ──(run_queue)──> run workers × runs_concurrency
                                         │  get_run, open_run (find-or-create at the destination)
                                         ├─ history: reader ──(queue_chunks)──> writer, ledger cursor per chunk
                                         └─ files: list_files ──(file queue)──> file workers × file_workers
                                         finish (summary, state, end time) -> ledger "done"

Every task lives in a task group; streams are bounded, so memory is bounded by the formula in
``engine/config.py`` whatever the size of runs. A run that fails is recorded in the ledger and
reported; the others go on. Cancellation (Ctrl-C, SIGTERM) is never swallowed: it unwinds
through the task groups, writers are closed in shielded scopes, and the ledger holds every cursor
that was durable, so re-running the same command resumes.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from adapters import registry
from adapters.base import AdapterContext, Destination, RunWriter, Source
from engine.config import Config
from engine.errors import FatalError, TransientError
from engine.incremental import REVISION_KEY, Action, FinishedRun, RunChecker, decide
from engine.ledger import Ledger, RunStatus, pair_key
from engine.mapping import apply_remap, remap_namespace
from engine.model import FileRef, RunRecord, RunRef
from engine.progress import Progress
from ratelimit import LimiterRegistry


@dataclass
class Report:
    """What a migration did; ``exit_code`` is the CLI's (0 all good, 1 some runs failed,
    130 interrupted)."""

    progress: Progress
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.progress.totals.runs_failed else 0


def make_context(config: Config, progress: Progress) -> AdapterContext:
    return AdapterContext(
        chunk_points=config.transfer.chunk_points,
        part_bytes=config.transfer.part_bytes,
        events=progress.event,
        limiters=LimiterRegistry.from_mapping(config.ratelimit, origin=f"{config.path}: [ratelimit]"),
        namespace_map=functools.partial(remap_namespace, rules=config.remap),
    )


def open_adapters(config: Config, context: AdapterContext) -> tuple[Source, Destination]:
    """Construct (no I/O yet) the configured source and destination."""
    source = registry.load(registry.SOURCES[config.source_type])(config.source, context)
    context.extra.setdefault("source_uri", source.describe())  # destinations may derive ids from it
    destination = registry.load(registry.DESTINATIONS[config.destination_type])(config.destination, context)
    pair = getattr(destination, "pair_with", None)
    if pair is not None:  # a destination that can use its source directly (W&B -> W&B lineage)
        pair(source)
    return source, destination


async def migrate(
    config: Config,
    *,
    progress: Progress | None = None,
    handle_signals: bool = False,
    adapters: tuple[Source, Destination] | None = None,
) -> Report:
    """Run the migration described by ``config``. Raises ``ConfigError``/``AuthError`` before
    anything is written when the configuration or credentials are unusable. ``adapters``
    replaces the configured source and destination (tests, embedding)."""
    progress = progress or Progress(mode="plain")
    if adapters is None:
        context = make_context(config, progress)
        progress.limiters = context.limiters
        source, destination = open_adapters(config, context)
    else:
        source, destination = adapters
    ledger = Ledger.read(config.ledger_path, pair_key(source.describe(), destination.describe()))
    report = Report(progress)
    async with source, destination:  # credentials are checked here, before the ledger is touched
        ledger.open_for_append()
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope, report)
                await Pipeline(config, source, destination, ledger, progress).run()
                tg.cancel_scope.cancel()
            if not report.interrupted:
                await destination.finalize()
        finally:
            ledger.close()
    return report


async def _cancel_on_signal(scope: anyio.CancelScope, report: Report) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            report.interrupted = True
            scope.cancel()
            return


async def feed_runs(
    source: Source, send: ObjectSendStream[RunRef], *, limit: int = 0, on_ref: Callable[[RunRef], None] | None = None
) -> None:
    """Page through the source's runs onto ``send`` (closed at the end), at most ``limit`` (0 = all)."""
    async with send, contextlib.aclosing(source.list_runs()) as refs:
        count = 0
        async for ref in refs:
            if on_ref is not None:
                on_ref(ref)
            await send.send(ref)
            count += 1
            if limit and count >= limit:
                break


@dataclass
class _RunFiles:
    """Tracks one run's file jobs across the shared file-worker pool."""

    outstanding: int = 0
    active: int = 0
    listing_done: bool = False
    failed: bool = False
    errors: list[BaseException] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_until(self, predicate: Any) -> None:
        while not predicate():
            await self.changed.wait()


@dataclass
class _FileJob:
    record: RunRecord
    writer: RunWriter
    file: FileRef
    tracker: _RunFiles


class Pipeline:
    """One migration's worker pools. Use ``run()`` once."""

    def __init__(
        self, config: Config, source: Source, destination: Destination, ledger: Ledger, progress: Progress
    ) -> None:
        self.config = config
        self.transfer = config.transfer
        self.source = source
        self.destination = destination
        self.ledger = ledger
        self.progress = progress

    async def run(self) -> None:
        t = self.transfer
        run_send, run_recv = anyio.create_memory_object_stream[RunRef](t.run_queue)
        file_send, file_recv = anyio.create_memory_object_stream[_FileJob](t.file_workers * 2)
        async with anyio.create_task_group() as files_tg:
            async with file_recv:
                for _ in range(t.file_workers):
                    files_tg.start_soon(self._file_worker, file_recv.clone())
            async with file_send, anyio.create_task_group() as runs_tg:
                runs_tg.start_soon(self._produce, run_send)
                async with run_recv:
                    for _ in range(t.runs_concurrency):
                        runs_tg.start_soon(self._run_worker, run_recv.clone(), file_send.clone())

    # -- producer ----------------------------------------------------------------------------
    async def _produce(self, send: ObjectSendStream[RunRef]) -> None:
        await feed_runs(
            self.source,
            send,
            limit=self.transfer.max_runs,
            on_ref=lambda ref: self.progress.event("run_selected", run=ref.id),
        )

    # -- runs ----------------------------------------------------------------------------------
    async def _run_worker(self, runs: ObjectReceiveStream[RunRef], files: ObjectSendStream[_FileJob]) -> None:
        async with runs, files:
            async for ref in runs:
                await self._migrate_run(ref, files)

    async def _migrate_run(self, ref: RunRef, files: ObjectSendStream[_FileJob]) -> None:
        entry = self.ledger.get(ref.id)
        finished = self.transfer.incremental and entry is not None and entry.status is RunStatus.DONE
        if finished and not isinstance(self.destination, RunChecker) and ref.hint("revision") is None:
            self.progress.event("run_skipped", run=ref.id)  # nothing could tell that it changed
            return
        tracker = _RunFiles()
        try:
            record = apply_remap(await self.source.get_run(ref), self.config.remap)
            if finished and entry is not None:
                decision = await decide(record, FinishedRun(entry.dest_id or "", entry.checkpoint, dict(entry.files)),
                                        entry.totals, self.destination)
                if decision.action is Action.SKIP:
                    self.progress.event("run_skipped", run=ref.id)
                    return
                if decision.action is Action.REDO:
                    self.ledger.reset(ref.id)
                    entry = None
                self.ledger.checked(ref.id, decision.action.value, list(decision.problems))
                self.progress.event("run_" + ("repaired" if decision.action is Action.REDO else "updated"),
                                    run=ref.id, problems=list(decision.problems))
            if self.transfer.incremental and entry is not None:
                resume, files_done = entry.checkpoint, dict(entry.files)
            else:
                if entry is not None:
                    self.ledger.reset(ref.id)
                resume, files_done = None, {}
            self.ledger.start(ref.id, record.display_name or ref.name)
            self.progress.event("run_started", run=ref.id)
            writer = await self.destination.open_run(record, resume)
            try:
                self.ledger.opened(ref.id, writer.dest_id)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._move_history, record, writer)
                    if self.transfer.artifacts:
                        tg.start_soon(self._move_files, record, writer, files_done, files, tracker)
                await writer.finish(record)
            finally:
                tracker.failed = True  # queued jobs of this run are dropped from here on
                with anyio.CancelScope(shield=True):
                    # file jobs already running on this writer finish (or fail) before it closes
                    with anyio.move_on_after(60):
                        await tracker.wait_until(lambda: tracker.active == 0)
                    await writer.aclose()
            entry = self.ledger.get(ref.id)
            totals = {
                "points": entry.checkpoint.history_points if entry else 0,
                "files": len(entry.files) if entry else 0,
                "bytes": sum(entry.files.values()) if entry else 0,
                "dest_id": writer.dest_id,
            }
            if record.revision is not None:
                totals[REVISION_KEY] = record.revision
            self.ledger.done(ref.id, totals)
            self.progress.event("run_done", run=ref.id)
        except Exception as exc:  # one run's failure never stops the others
            reason = describe_error(exc)
            self.ledger.failed(ref.id, reason)
            self.progress.event("run_failed", run=ref.id, reason=reason)

    async def _move_history(self, record: RunRecord, writer: RunWriter) -> None:
        run_id = record.ref.id
        start = writer.checkpoint().history_points
        send, recv = anyio.create_memory_object_stream[Any](self.transfer.queue_chunks)
        last = writer.checkpoint()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_history, record, start, send)
            expected = start
            async with recv:
                async for chunk in recv:
                    if chunk.offset != expected:
                        raise FatalError(f"source history out of order: chunk at {chunk.offset}, expected {expected}")
                    expected = chunk.end
                    await writer.write_history(chunk)
                    self.progress.event("points", n=len(chunk))
                    last = self._record_checkpoint(run_id, writer, last)
        await writer.flush_history()
        self._record_checkpoint(run_id, writer, last)

    async def _read_history(self, record: RunRecord, start: int, send: ObjectSendStream[Any]) -> None:
        async with send, contextlib.aclosing(self.source.iter_history(record, start)) as chunks:
            async for chunk in chunks:
                if len(chunk):
                    await send.send(chunk)

    def _record_checkpoint(self, run_id: str, writer: RunWriter, last: Any) -> Any:
        now = writer.checkpoint()
        if now != last:
            self.ledger.history(run_id, now)
        return now

    # -- files ---------------------------------------------------------------------------------
    async def _move_files(
        self,
        record: RunRecord,
        writer: RunWriter,
        files_done: dict[str, int],
        files: ObjectSendStream[_FileJob],
        tracker: _RunFiles,
    ) -> None:
        try:
            async with contextlib.aclosing(self.source.list_files(record)) as listing:
                async for file in listing:
                    if file.key in files_done:
                        continue
                    tracker.outstanding += 1
                    await files.send(_FileJob(record, writer, file, tracker))
        finally:
            tracker.listing_done = True
        await tracker.wait_until(lambda: tracker.outstanding == 0)
        if tracker.errors:
            raise tracker.errors[0]

    async def _file_worker(self, jobs: ObjectReceiveStream[_FileJob]) -> None:
        async with jobs:
            async for job in jobs:
                tracker = job.tracker
                tracker.active += 1
                try:
                    if not tracker.failed:
                        await self._move_file(job)
                except Exception as exc:
                    tracker.errors.append(exc)
                    tracker.failed = True
                finally:
                    tracker.active -= 1
                    tracker.outstanding -= 1
                    tracker.notify()

    async def _move_file(self, job: _FileJob) -> None:
        moved = 0

        async def pieces() -> AsyncIterator[bytes]:
            nonlocal moved
            async with contextlib.aclosing(self.source.read_file(job.record, job.file)) as stream:
                async for piece in stream:
                    moved += len(piece)
                    self.progress.event("bytes", n=len(piece))
                    yield piece

        async with contextlib.aclosing(pieces()) as stream:
            await job.writer.write_file(job.file, stream)
        if job.file.size is not None and moved != job.file.size:
            raise TransientError(f"file {job.file.path}: read {moved} bytes, source said {job.file.size}")
        self.ledger.file_done(job.record.ref.id, job.file.key, moved)
        self.progress.event("file_done", run=job.record.ref.id)


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong: the innermost meaningful exception, no traceback."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:500] if text else name
