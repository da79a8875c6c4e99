"""One W&B run being written: history and system-metrics lines at explicit offsets, the
console log, files, artifacts, finish.

Durability: ``checkpoint()`` reports the source points whose lines the server acknowledged,
with the next history offset in ``state["lines"]`` and the next system-metrics offset in
``state["events_lines"]`` (``_streams`` explains how one source cursor covers both streams).
After a crash the engine reopens the run at that checkpoint, the writer continues at those
offsets, and since lines are a pure function of the points of their steps, whatever was written
past the checkpoint is overwritten with the same lines: every line exists exactly once. The
console log is one file to the engine: it is streamed from line 0 each time it is written
(same lines at the same offsets) and counted by the ledger once the run file is uploaded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any


from core.protocols import Checkpoint
from adapters.http import HttpClient
from core.errors import FatalError
from core.model import CONSOLE_LOG, ArtifactRef, FileRef, HistoryChunk, RunRecord

from . import _gql
from ._artifact_copy import (
    ArtifactFetcher,
    ArtifactOrder,
    DestProjectOf,
    commit_in_order,
    commit_sort_key,
    settle_all,
    use_inputs,
)
from ._artifacts import (
    ArtifactTarget,
    ArtifactUploader,
    PendingArtifact,
    artifact_name,
    parse_headers,
)
from ._config import WandbDestinationConfig
from ._console import CONSOLE_FILE, LineBatcher, LineSplitter, line_cap
from ._filestream import EVENTS, HISTORY, OUTPUT, SUMMARY, FileStream, on_loop_or_thread
from ._lines import AssemblyStats, HistoryAssembler, LineBlock, iter_request_slices
from ._mapping import dumps_extended, exit_for, summary_for
from ._spool import Spooled, spool
from ._staging import RunStaging
from ._streams import Position, StreamSplit


INLINE_POINTS = 2_000
"""Chunks and flushes of at most this many points are encoded on the event loop (about a
millisecond): a worker-thread round trip costs more than that work, and a migration of many
small runs would make thousands of them. Larger ones go to a worker thread."""


HOLD_BYTES = 128 * 1024
"""History lines of the newest write kept back while they are at most this size: they go out
with the next write's or with ``flush_history``'s, so a small step-major run sends its lines in
one request, not one per write plus one for its last step (W&B allows a run ~2 requests/s).
At most this much per run in memory; durability lags by that one write (``checkpoint()``
counts sent lines only)."""


def content_budget(max_request_bytes: int) -> int:
    """Bytes of history content per request: 5 % + 1 KiB slack for JSON framing and UTF-8."""
    return int(max_request_bytes * 0.95) - 1024


class WandbRunWriter:
    """Implements ``core.protocols.RunWriter`` for one W&B run."""

    def __init__(
        self,
        *,
        config: WandbDestinationConfig,
        api: HttpClient,
        storage: HttpClient,
        stream: FileStream,
        staging: RunStaging,
        events: Any,
        entity: str,
        project: str,
        run_id: str,
        record: RunRecord,
        start_points: int,
        start_lines: int,
        state: dict[str, Any],
        artifact_order: ArtifactOrder | None = None,
        dest_project_of: DestProjectOf | None = None,
        artifact_fetcher: ArtifactFetcher | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.storage = storage
        self.stream = stream
        self.staging = staging
        self.events = events
        self.entity, self.project, self.run_id = entity, project, run_id
        self.dest_id = f"{entity}/{project}/{run_id}"
        self._record = record
        self._lines = start_lines
        self._events_lines = int(state.get("events_lines") or 0)
        self._t0: float | None = state.get("t0", record.start_time)
        self._last: dict[str, Any] | None = state.get("last")
        prefix = self.config.system_metrics_prefix
        # checkpoints written before system metrics were routed hold history points only
        h_at, e_at = int(state.get("h_at", start_points)), int(state.get("e_at", 0))
        if h_at + e_at != start_points:
            raise FatalError(f"wandb: inconsistent ledger checkpoint for {record.ref.id}: {h_at} + {e_at} != "
                             f"{start_points}; re-run with incremental = false", adapter="wandb", run=record.ref.id)
        self._split = StreamSplit(prefix, resume=Position(start_points, h_at, e_at),
                                  h_points=int(state.get("h_points", h_at)), e_points=int(state.get("e_points", e_at)))
        metric_keys = record.metric_keys
        if metric_keys is None:
            metric_keys = [k for k, v in record.summary.items() if isinstance(v, (int, float))]
        system_keys = sum(1 for k in metric_keys if prefix and str(k).startswith(prefix))
        spill_dir = self.config.spool_dir or None
        self._assembler = HistoryAssembler(
            start_time=self._t0 or 0.0, single_key=len(metric_keys) - system_keys == 1, spill_dir=spill_dir
        )
        self._events = HistoryAssembler(
            start_time=self._t0 or 0.0, single_key=system_keys == 1, spill_dir=spill_dir, events=True
        )
        self._console_lines: int | None = None
        self._held: list[LineBlock] = []  # the newest write's history blocks, not sent yet (HOLD_BYTES)
        self._reported = AssemblyStats()
        self._durable = self._make_checkpoint()
        self._artifacts: dict[str, PendingArtifact] = {}
        for key, (meta, members) in staging.load().items():
            self._artifacts[key] = PendingArtifact.from_meta(meta, members)
        # copied W&B artifacts: version order across runs, lineage (see _artifact_copy)
        self._order = artifact_order or ArtifactOrder()
        self._dest_project_of: DestProjectOf = dest_project_of or (lambda source: (entity, project))
        self._fetcher = artifact_fetcher

    # -- history -------------------------------------------------------------------------------
    async def write_history(self, chunk: HistoryChunk) -> None:
        if self._t0 is None and len(chunk):
            import pyarrow.compute as pc

            self._t0 = float(pc.min(chunk.batch.column("timestamp")).as_py())
            self._assembler.start_time = self._events.start_time = self._t0
        blocks, event_blocks = await on_loop_or_thread(len(chunk) <= INLINE_POINTS, self._assemble, chunk)
        held, self._held = self._held, []
        if _size(blocks) <= min(HOLD_BYTES, content_budget(self.config.max_request_bytes)):
            await self._send_blocks(held)
            self._held = blocks
        else:
            await self._send_blocks([*held, *blocks])
        for block in event_blocks:
            await self._send_events_block(block)
        self._catch_up()

    def _assemble(self, chunk: HistoryChunk) -> tuple[list[LineBlock], list[LineBlock]]:
        history, events = self._split.split(chunk.batch)
        blocks = self._assembler.add(history)
        return blocks, (self._events.add(events) if events is not None else [])

    async def flush_history(self) -> None:
        # buffered (key-major) history is encoded window by window, never all lines at once
        inline = self._assembler.held_points + self._events.held_points <= INLINE_POINTS
        pending, self._held = self._held, []  # the held lines go with the first window's
        blocks = self._assembler.finish()
        while (block := await on_loop_or_thread(inline, next, blocks, None)) is not None:
            pending.append(block)
            if _size(pending) > HOLD_BYTES:
                await self._send_blocks(pending)
                pending = []
        await self._send_blocks(pending)
        blocks = self._events.finish()
        while (block := await on_loop_or_thread(inline, next, blocks, None)) is not None:
            await self._send_events_block(block)
        self._catch_up()

    def _catch_up(self) -> None:
        """After a resume the source yields again points a stream already holds (dropped by the
        split): they are durable without any new line, so the cursor moves over them."""
        if self._split.acknowledged().points != self._durable.history_points:
            self._durable = self._make_checkpoint()

    def checkpoint(self) -> Checkpoint:
        return self._durable

    async def _send_lines(self, name: str, offset: int, lines: list[str]) -> int:
        """Send ``lines`` of file_stream file ``name`` from ``offset``; the next offset."""
        limit = content_budget(self.config.max_request_bytes)
        for start, end in iter_request_slices(lines, limit):
            await self.stream.send({name: (offset, lines[start:end])})
            offset += end - start
        return offset

    async def _send_blocks(self, blocks: list[LineBlock]) -> None:
        """History blocks' lines in as few requests as fit; each block counts as durable
        (lines offset, points, checkpoint) once the request holding its last line is answered."""
        if not blocks:
            return
        lines = [line for block in blocks for line in block.lines]
        ends = list(itertools.accumulate(len(block.lines) for block in blocks))
        base, done = self._lines, 0
        for start, end in iter_request_slices(lines, content_budget(self.config.max_request_bytes)):
            await self.stream.send({HISTORY: (base + start, lines[start:end])})
            while done < len(blocks) and ends[done] <= end:
                self._acknowledge(blocks[done], base + ends[done])
                done += 1
        for block in blocks[done:]:  # blocks without lines (nothing left to send)
            self._acknowledge(block, base + len(lines))

    def _acknowledge(self, block: LineBlock, lines_end: int) -> None:
        self._lines = lines_end
        self._split.acknowledged(history=block.points)
        if block.lines:
            last = json.loads(block.lines[-1])
            self._last = {k: last[k] for k in ("_step", "_runtime", "_timestamp") if k in last}
        self._durable = self._make_checkpoint()
        self._report_stats()

    async def _send_events_block(self, block: LineBlock) -> None:
        self._events_lines = await self._send_lines(EVENTS, self._events_lines, block.lines)
        self._split.acknowledged(events=block.points)
        self._durable = self._make_checkpoint()
        self._report_stats()

    def _make_checkpoint(self) -> Checkpoint:
        state = {"run_id": self.run_id, "lines": self._lines, "t0": self._t0, "last": self._last,
                 "events_lines": self._events_lines, "system_metrics_prefix": self.config.system_metrics_prefix,
                 **self._split.state()}
        return Checkpoint(history_points=self._split.durable.points, state=state)

    def _report_stats(self) -> None:
        now, before = self._stats(), self._reported
        run = self._record.ref.id
        if now.collisions > before.collisions:
            self.events("collision", n=now.collisions - before.collisions, run=run,
                        rule="k-th value of a key at a step goes to the k-th line of that step")
        if now.timestamp_merged > before.timestamp_merged:
            self.events("timestamp_merged", n=now.timestamp_merged - before.timestamp_merged, run=run)
        if now.out_of_order_points > before.out_of_order_points:
            self.events("history_out_of_order", n=now.out_of_order_points - before.out_of_order_points, run=run)
        self._reported = AssemblyStats(now.collisions, now.timestamp_merged, now.out_of_order_points,
                                       now.buffered_points_peak)

    def _stats(self) -> AssemblyStats:
        """Both streams' assembly counts together."""
        h, e = self._assembler.stats, self._events.stats
        return AssemblyStats(h.collisions + e.collisions, h.timestamp_merged + e.timestamp_merged,
                             h.out_of_order_points + e.out_of_order_points,
                             max(h.buffered_points_peak, e.buffered_points_peak))

    # -- files ---------------------------------------------------------------------------------
    def _artifact_for(self, file: FileRef) -> tuple[ArtifactRef | None, str]:
        """Where a source file goes: (artifact, path inside it) or (None, run-file path)."""
        if file.artifact is not None:
            return file.artifact, file.path
        layout = self.config.artifact_layout
        if layout == "single":
            return ArtifactRef(name=artifact_name(f"{self.run_id}-artifacts"), type=self.config.artifact_type), file.path
        if layout == "folders" and "/" in file.path:
            folder, _, rest = file.path.partition("/")
            return ArtifactRef(name=artifact_name(folder), type=self.config.artifact_type), rest
        return None, file.path

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        if file.role == CONSOLE_LOG:
            await self._write_console(file, data)
            return
        artifact, path = self._artifact_for(file)
        if artifact is None:
            await self._upload_run_file(path, data)
            return
        key = f"{artifact.name}:{artifact.version or ''}"
        pending = self._artifacts.get(key)
        if pending is None:
            copied = artifact.source_project is not None and artifact.version is not None
            pending = PendingArtifact(
                name=artifact_name(artifact.name), type=artifact.type, description=artifact.description,
                aliases=tuple(artifact.aliases), metadata=dict(artifact.metadata),
                version=artifact.version if copied else None, source_project=artifact.source_project,
                source_digest=artifact.digest,
            )
            self._artifacts[key] = pending
        meta = pending.meta()
        part_size = self.config.part_size if (file.size is None or file.size >= self.config.multipart_threshold) else 0
        old = pending.members.get(path)
        pending.members[path] = await self.staging.stage(key, meta, path, data, part_size)
        if old is not None and old.path != pending.members[path].path:
            old.discard()

    async def _write_console(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        """The console log: ``output.log`` lines from offset 0 on file_stream (the Logs tab),
        then the same bytes as the run file ``output.log`` (see ``_console``)."""
        if self._console_lines is not None:
            raise FatalError(f"wandb: run {self._record.ref.id} has a second console log ({file.path}); W&B keeps "
                             "one output.log per run", adapter="wandb", run=self._record.ref.id)
        self._console_lines = 0
        spooled = await spool(data, self.config.spool_dir or None)
        try:
            budget = content_budget(self.config.max_request_bytes)
            splitter, batcher = LineSplitter(line_cap(budget)), LineBatcher(budget)
            offset = 0

            async def lines() -> AsyncGenerator[str, None]:
                async with contextlib.aclosing(spooled.read()) as pieces:
                    async for piece in pieces:
                        for line in splitter.feed(piece):
                            yield line
                for line in splitter.finish():
                    yield line

            async with contextlib.aclosing(lines()) as console:
                async for line in console:
                    if (full := batcher.add(line)) is not None:
                        offset = await self._send_lines(OUTPUT, offset, full)
            if (rest := batcher.rest()) is not None:
                offset = await self._send_lines(OUTPUT, offset, rest)
            self._console_lines = offset
            if splitter.cuts:
                self.events("console_line_cut", n=splitter.cuts, run=self._record.ref.id, max_chars=splitter.cap)
            await self._upload_spooled(CONSOLE_FILE, spooled)
        finally:
            spooled.discard()

    async def _upload_run_file(self, path: str, data: AsyncIterator[bytes]) -> None:
        spooled = await spool(data, self.config.spool_dir or None)
        try:
            await self._upload_spooled(path, spooled)
        finally:
            spooled.discard()

    async def _upload_spooled(self, path: str, spooled: Spooled) -> None:
        answer = await _gql.call(self.api, _gql.CREATE_RUN_FILES, {
            "entity": self.entity, "project": self.project, "run": self.run_id, "files": [path]},
            name="CreateRunFiles")
        created = answer["createRunFiles"]
        url = next(f["uploadUrl"] for f in created["files"] if f["name"] == path)
        headers = parse_headers(created.get("uploadHeaders"))
        await self.storage.upload("PUT", url, lambda: spooled.read(), headers=headers, size=spooled.size)
        await _gql.call(self.api, _gql.MARK_RUN_FILES_UPLOADED, {
            "entity": self.entity, "project": self.project, "run": self.run_id, "files": [path]},
            name="MarkRunFilesUploaded")

    # -- finish ----------------------------------------------------------------------------------
    async def finish(self, run: RunRecord) -> None:
        uploader = ArtifactUploader(self.api, self.storage, multipart_threshold=self.config.multipart_threshold,
                                    concurrency=self.config.upload_concurrency, events=self.events)
        target = ArtifactTarget(self.entity, self.project, self.run_id)
        for pending in sorted(self._artifacts.values(), key=commit_sort_key):
            if pending.members:
                await commit_in_order(uploader, target, pending, api=self.api, order=self._order,
                                      events=self.events)
        self.staging.clear()
        self._artifacts.clear()
        if run.inputs:
            await use_inputs(self.api, run.inputs, target=target, dest_project_of=self._dest_project_of,
                             uploader=uploader, order=self._order, events=self.events, fetcher=self._fetcher)
        summary = summary_for(run, self._last, system_prefix=self.config.system_metrics_prefix)
        complete, exitcode, final_state = exit_for(run.state)
        await self.stream.send(
            {SUMMARY: (0, [dumps_extended(summary)])},
            complete=True if complete else None,
            exitcode=exitcode,
        )
        if final_state is not None:
            await _gql.call(self.api, _gql.UPSERT_BUCKET, {
                "name": self.run_id, "entity": self.entity, "project": self.project, "state": final_state},
                name="UpsertBucket")
        stats = self._stats()
        self.events("wandb_run_finished", run=run.ref.id, dest=self.dest_id, lines=self._lines,
                    events_lines=self._events_lines, console_lines=self._console_lines,
                    collisions=stats.collisions, timestamp_merged=stats.timestamp_merged,
                    buffered_points_peak=stats.buffered_points_peak, filestream_requests=self.stream.requests,
                    throttles=self.stream.pacer.throttles)

    async def aclose(self) -> None:
        # versions this run did not commit must not hold back later versions of other runs
        settle_all(self._order, ArtifactTarget(self.entity, self.project, self.run_id), list(self._artifacts.values()))
        # staged artifact members stay on disk on purpose until finish() commits them, so a
        # resumed migration can still commit the complete artifact.
        release = getattr(self.stream.http, "release", None)
        if release is not None:
            release(self.stream.path)


def _size(blocks: list[LineBlock]) -> int:
    """Characters of the blocks' lines (about their bytes: the lines are ASCII JSON mostly)."""
    return sum(len(line) for block in blocks for line in block.lines)

