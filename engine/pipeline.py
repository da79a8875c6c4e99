"""The migration pipeline: producers -> bounded streams -> worker pools, in anyio task groups.

Shape::

    source.list_runs ──(run_queue)──> admission (memory budget, endpoint headroom, cap) ──> one task per run
                                         │  get_run, open_run (find-or-create at the destination)
                                         ├─ history: reader ──(queue_chunks)──> writer, ledger cursor per chunk
                                         └─ files: list_files ──(bounded stream)──> a task per file,
                                               each holding one of the file_workers slots shared by all runs
                                         finish (summary, state, end time) -> ledger "done"

Every task lives in a task group; streams are bounded, and history chunks and file pieces hold
their bytes of ``[transfer] memory_budget`` while in flight, so memory is bounded by the formula
in ``engine/config.py`` whatever the size or number of runs (see ``engine/admission.py``). A run that fails is recorded in the ledger and
reported; the others go on. Cancellation (Ctrl-C, SIGTERM) is never swallowed: it unwinds
through the task groups, writers are closed in shielded scopes, and the ledger holds every cursor
that was durable, so re-running the same command resumes.
"""

from __future__ import annotations

import dataclasses
import contextlib
import functools
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from adapters import registry
from core.protocols import AdapterContext, Checkpoint, Destination, FinishedRun, ReadAhead, RunChecker, RunWriter, Source
from engine import preflight
from engine.admission import AUTO_RUNS_CEILING, RUN_OVERHEAD_BYTES, Admission, MemoryBudget, RunAccount, run_seat_bytes
from engine.config import Config
from core.errors import AuthError, FatalError, TransientError
from engine.incremental import REVISION_KEY, Action, decide
from engine.ledger import Ledger, RunStatus, pair_key
from engine.mapping import apply_remap, remap_namespace
from core.model import FileRef, HistoryChunk, RunRecord, RunRef
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
    if not context.source_uri:  # destinations may derive ids from it
        context = dataclasses.replace(context, source_uri=source.describe())
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
    limiters: LimiterRegistry | None = None,
) -> Report:
    """Run the migration described by ``config``. Raises ``ConfigError``/``AuthError`` before
    anything is written when the configuration or credentials are unusable. ``adapters``
    replaces the configured source and destination (tests, embedding); ``limiters`` is then
    the registry they share, whose endpoints admission watches (none by default)."""
    progress = progress or Progress(mode="plain")
    if adapters is None:
        context = make_context(config, progress)
        limiters = context.limiters
        source, destination = open_adapters(config, context)
    else:
        source, destination = adapters
    progress.limiters = limiters
    preflight.probe_ledger(config.ledger_path, origin=config.path)
    ledger = Ledger.read(config.ledger_path, pair_key(source.describe(), destination.describe()))
    report = Report(progress)
    # servers, credentials and named things are checked here, before anything is written
    async with preflight.checked_entry(source, origin=config.path, table="source"), preflight.checked_entry(
        destination, origin=config.path, table="destination"
    ):
        ledger.open_for_append()  # the file itself appears with its first line
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope, report)
                await Pipeline(config, source, destination, ledger, progress, limiters=limiters).run()
                tg.cancel_scope.cancel()
            if not report.interrupted:
                await destination.finalize()
        finally:
            with anyio.CancelScope(shield=True):  # the last lines and the fsync, off the loop
                await anyio.to_thread.run_sync(ledger.close)
    return report


async def _cancel_on_signal(scope: anyio.CancelScope, report: Report) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            report.interrupted = True
            scope.cancel()
            return


async def feed_runs(
    source: Source,
    send: ObjectSendStream[RunRef],
    *,
    limit: int = 0,
    on_ref: Callable[[RunRef], None] | None = None,
    keep: Callable[[RunRef], bool] | None = None,
) -> None:
    """Page through the source's runs onto ``send`` (closed at the end), at most ``limit`` (0 = all)
    selected; runs ``keep`` turns down are not sent."""
    async with send, contextlib.aclosing(source.list_runs()) as refs:
        count = 0
        async for ref in refs:
            if on_ref is not None:
                on_ref(ref)
            if keep is None or keep(ref):
                await send.send(ref)
            count += 1
            if limit and count >= limit:
                break


def read_ahead_of(source: Source) -> Callable[[RunRef], None] | None:
    """The source's ``expect`` when it is a ``ReadAhead`` source, else None."""
    return source.expect if isinstance(source, ReadAhead) else None


def tell_read_ahead(source: Source) -> Callable[[RunRef], bool] | None:
    """A ``keep`` for ``feed_runs`` that tells a ``ReadAhead`` source of every run queued for
    reading (None for other sources)."""
    expect = read_ahead_of(source)
    if expect is None:
        return None

    def keep(ref: RunRef) -> bool:
        expect(ref)
        return True

    return keep


async def for_each_run(
    source: Source,
    handle: Callable[[RunRef], Awaitable[None]],
    *,
    workers: int,
    buffer: int,
    limit: int = 0,
    on_ref: Callable[[RunRef], None] | None = None,
    keep: Callable[[RunRef], bool] | None = None,
) -> None:
    """``handle(ref)`` for each selected run ``keep`` takes, by ``workers`` tasks fed through a
    bounded stream of ``buffer`` refs (``feed_runs``); the first error cancels the rest. ``plan``
    and ``verify`` use it; ``migrate`` feeds the same stream but admits each run by memory budget
    instead of a fixed worker count (``engine/admission.py``)."""
    send, recv = anyio.create_memory_object_stream[RunRef](buffer)

    async def work(refs: ObjectReceiveStream[RunRef]) -> None:
        async with refs:
            async for ref in refs:
                await handle(ref)

    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(feed_runs, source, send, limit=limit, on_ref=on_ref, keep=keep))
        async with recv:
            for _ in range(workers):
                tg.start_soon(work, recv.clone())


class Pipeline:
    """One migration's runs, admitted by budget (``engine/admission.py``). Use ``run()`` once."""

    def __init__(
        self,
        config: Config,
        source: Source,
        destination: Destination,
        ledger: Ledger,
        progress: Progress,
        *,
        limiters: LimiterRegistry | None = None,
    ) -> None:
        self.config = config
        self.transfer = t = config.transfer
        self.source = source
        self.destination = destination
        self.ledger = ledger
        self.progress = progress
        self.admission = Admission(
            MemoryBudget(t.memory_budget),
            cap=t.runs_concurrency or AUTO_RUNS_CEILING,
            seat_bytes=run_seat_bytes(t.chunk_points),
            endpoints=None if limiters is None else limiters.statistics,
            clock=None if limiters is None else limiters.clock,
            on_wait=lambda reason: progress.event("admission_wait", reason=reason),
        )
        progress.admission = self.admission
        self.file_slots = anyio.CapacityLimiter(t.file_workers)  # shared by every run's files
        self._read_ahead = read_ahead_of(source)

    async def run(self) -> None:
        run_send, run_recv = anyio.create_memory_object_stream[RunRef](self.transfer.run_queue)
        async with anyio.create_task_group() as runs_tg:
            runs_tg.start_soon(self._produce, run_send)
            async with run_recv:
                async for ref in run_recv:
                    account = await self.admission.admit()  # nothing of the run is touched before
                    runs_tg.start_soon(self._migrate_admitted, ref, account)

    # -- producer ----------------------------------------------------------------------------
    async def _produce(self, send: ObjectSendStream[RunRef]) -> None:
        await feed_runs(
            self.source,
            send,
            limit=self.transfer.max_runs,
            on_ref=lambda ref: self.progress.event("run_selected", run=ref.id),
            keep=self._queue_run,
        )

    def _queue_run(self, ref: RunRef) -> bool:
        """Runs already done stay out of the queue, unless something could tell that they
        changed (checked in ``_migrate_run``); a ``ReadAhead`` source hears of each run queued
        that is not finished (one that is gets only a check, no history read)."""
        entry = self.ledger.get(ref.id)
        finished = self.transfer.incremental and entry is not None and entry.status is RunStatus.DONE
        if finished and not isinstance(self.destination, RunChecker) and ref.hint("revision") is None:
            self.progress.event("run_skipped", run=ref.id)  # nothing could tell that it changed
            return False
        if self._read_ahead is not None and (entry is None or entry.status is not RunStatus.DONE):
            self._read_ahead(ref)
        return True

    # -- runs ----------------------------------------------------------------------------------
    async def _migrate_admitted(self, ref: RunRef, account: RunAccount) -> None:
        try:
            await self._migrate_run(ref, account)
        finally:
            self.admission.finished(account)

    async def _migrate_run(self, ref: RunRef, account: RunAccount) -> None:
        entry = self.ledger.get(ref.id)
        finished = self.transfer.incremental and entry is not None and entry.status is RunStatus.DONE
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
            if record.history_points is not None:  # a run that says its size reserves for it
                left = record.history_points - (resume.history_points if resume else 0)
                account.resize_seat(min(account.seat, run_seat_bytes(self.transfer.chunk_points, left)))
            self.progress.event("run_started", run=ref.id)
            # the ledger hears of the run once the destination opened it (find-or-create is
            # idempotent, so a crash before these lines loses nothing), so credentials refused
            # at the first write leave no ledger behind
            writer = await self.destination.open_run(record, resume)
            try:
                self.ledger.start(ref.id, record.display_name or ref.name)
                self.ledger.opened(ref.id, writer.dest_id)
                async with anyio.create_task_group() as tg:  # file jobs end (or fail) inside it
                    tg.start_soon(self._move_history, record, writer, account)
                    if self.transfer.artifacts:
                        tg.start_soon(self._move_files, record, writer, files_done, account)
                await writer.finish(record)
            finally:
                with anyio.CancelScope(shield=True):
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
        except Exception as exc:  # one run's failure never stops the others ...
            if preflight.is_disk_full(exc):  # ... but a full disk would fail them all: stop, resumable
                raise preflight.DiskFullError(self.destination.describe(), self.config.ledger_path) from exc
            refused = _auth_error(exc)
            if refused is not None:  # ... and so would credentials a server refuses (401, 403): stop
                raise AuthError(
                    f"{self.config.path}: run {ref.id}: {describe_error(refused)} — the credentials are not allowed to do"
                    " this (403: known user, missing permission); fix the permissions or the *_env keys, then run the"
                    " same command again to resume"
                ) from exc
            reason = describe_error(exc)
            self.ledger.failed(ref.id, reason)
            self.progress.event("run_failed", run=ref.id, reason=reason)

    async def _move_history(self, record: RunRecord, writer: RunWriter, account: RunAccount) -> None:
        run_id = record.ref.id
        start = writer.checkpoint().history_points
        send, recv = anyio.create_memory_object_stream[tuple[HistoryChunk, int]](self.transfer.queue_chunks)
        last = writer.checkpoint()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_history, record, start, send, account)
            expected = start
            async with recv:
                async for chunk, nbytes in recv:
                    if chunk.offset != expected:
                        raise FatalError(f"source history out of order: chunk at {chunk.offset}, expected {expected}")
                    expected = chunk.end
                    await writer.write_history(chunk)
                    account.release(nbytes)
                    self.progress.event("points", n=len(chunk))
                    last = self._record_checkpoint(run_id, writer, last)
        await writer.flush_history()
        self._record_checkpoint(run_id, writer, last)

    async def _read_history(
        self, record: RunRecord, start: int, send: ObjectSendStream[tuple[HistoryChunk, int]], account: RunAccount
    ) -> None:
        """Chunks onto ``send``, each holding its Arrow bytes of the budget until written; the
        run's seat follows the largest chunk seen (what its source builds next)."""
        largest = 0
        async with send, contextlib.aclosing(self.source.iter_history(record, start)) as chunks:
            async for chunk in chunks:
                if len(chunk):
                    nbytes = chunk.batch.nbytes
                    if not largest:
                        self.admission.observe_chunk(nbytes)  # sizes the next runs' seats
                    largest = max(largest, nbytes)
                    account.resize_seat(RUN_OVERHEAD_BYTES + largest)
                    await account.reserve(nbytes)
                    await send.send((chunk, nbytes))
        if not largest:
            self.admission.observe_chunk(0)
        account.resize_seat(RUN_OVERHEAD_BYTES)  # no more chunks being built

    def _record_checkpoint(self, run_id: str, writer: RunWriter, last: Checkpoint | None) -> Checkpoint:
        now = writer.checkpoint()
        if now != last:
            self.ledger.history(run_id, now)
        return now

    # -- files ---------------------------------------------------------------------------------
    async def _move_files(
        self, record: RunRecord, writer: RunWriter, files_done: dict[str, int], account: RunAccount
    ) -> None:
        """The run's files through a bounded stream, each moved in its own task once it holds one
        of the ``file_workers`` slots shared by all runs; a failure cancels the run's other file
        tasks and propagates (the writer is closed only after every task here has ended)."""
        send, recv = anyio.create_memory_object_stream[FileRef](self.transfer.file_workers)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._list_files, record, files_done, send)
            async with recv:
                async for file in recv:
                    slot = object()
                    await self.file_slots.acquire_on_behalf_of(slot)
                    tg.start_soon(self._file_task, record, writer, file, account, slot)

    async def _list_files(self, record: RunRecord, files_done: dict[str, int], send: ObjectSendStream[FileRef]) -> None:
        async with send, contextlib.aclosing(self.source.list_files(record)) as listing:
            async for file in listing:
                if file.key not in files_done:
                    await send.send(file)

    async def _file_task(
        self, record: RunRecord, writer: RunWriter, file: FileRef, account: RunAccount, slot: object
    ) -> None:
        try:
            await self._move_file(record, writer, file, account)
        finally:
            self.file_slots.release_on_behalf_of(slot)

    async def _move_file(self, record: RunRecord, writer: RunWriter, file: FileRef, account: RunAccount) -> None:
        moved = 0
        part_bytes = self.transfer.part_bytes

        async def pieces() -> AsyncGenerator[bytes, None]:
            """Each piece holds its bytes of the budget from before it is read until the writer
            asks for the next one."""
            nonlocal moved
            async with contextlib.aclosing(self.source.read_file(record, file)) as stream:
                while True:
                    estimate = part_bytes if file.size is None else max(1, min(part_bytes, file.size - moved))
                    await account.reserve(estimate)
                    try:
                        piece = await anext(stream)
                    except StopAsyncIteration:
                        account.release(estimate)
                        return
                    account.release(estimate - len(piece))  # true up to what was read
                    try:
                        moved += len(piece)
                        self.progress.event("bytes", n=len(piece))
                        yield piece
                    finally:
                        account.release(len(piece))

        async with contextlib.aclosing(pieces()) as stream:
            await writer.write_file(file, stream)
        if file.size is not None and moved != file.size:
            raise TransientError(f"file {file.path}: read {moved} bytes, source said {file.size}")
        self.ledger.file_done(record.ref.id, file.key, moved)
        self.progress.event("file_done", run=record.ref.id)


def _auth_error(exc: BaseException) -> AuthError | None:
    """The ``AuthError`` in ``exc`` (or in its exception groups), if any."""
    if isinstance(exc, AuthError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _auth_error(inner)
            if found is not None:
                return found
    return None


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong: the innermost meaningful exception, no traceback."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:500] if text else name
