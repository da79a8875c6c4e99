"""One MLflow destination run: params and tags, history batches (replay-safe), and the end
(status, end time, deletion); files come from ``_artifacts``. The durability rules are in
``_destination``'s docstring."""

from __future__ import annotations

from collections import Counter
from typing import Any, TYPE_CHECKING

import anyio
import orjson

from core.protocols import Checkpoint
from adapters.mlflow import _wandb
from adapters.mlflow._batching import (
    pack_metrics,
)
from adapters.mlflow._config import (
    MAX_BATCH_BYTES,
    MAX_ENTITIES_PER_BATCH,
)
from adapters.mlflow._side_files import SideFiles
from core.errors import FatalError
from core.model import HistoryChunk, RunRecord, seconds_to_millis
from adapters.mlflow._artifacts import ArtifactWrites
from adapters.mlflow._mapping import STATUSES, metric_entry, point_identity

if TYPE_CHECKING:
    from adapters.mlflow._destination import MlflowDestination, _DestRun


class MlflowRunWriter(ArtifactWrites):
    """One destination run (see the module docstring for the durability rules)."""

    def __init__(
        self,
        destination: MlflowDestination,
        record: RunRecord,
        dest: _DestRun,
        start_points: int,
        *,
        pending: list[dict[str, Any]],
    ) -> None:
        self.destination = destination
        self.record = record
        self.dest = dest
        self.dest_id = dest.run_id
        self._durable = start_points
        self._in_flight = anyio.Semaphore(destination.config.batch_concurrency)
        self._pending = pending  # log-batch bodies of params/tags not sent yet
        # after a crash the first replayed chunk may hold points the server already has; a
        # server that does not drop repeats gets them filtered out here
        self._check_replay = start_points > 0 and not destination.server_dedupes
        self.replayed_points_skipped = 0
        self.skipped_points = 0
        self.dropped_keys: set[str] = set()
        # W&B runs: metric names MLflow accepts, and the side files for what it cannot hold
        self.wandb_names = _wandb.MetricNames(self._event) if _wandb.is_wandb(record) else None
        self.side = SideFiles(self.artifact_area)
        self.saw_whole_history = start_points == 0
        self.nonnumeric_points = 0

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(history_points=self._durable, state={"dest_run_id": self.dest_id})

    # -- metadata -------------------------------------------------------------------------------
    async def send_pending(self) -> None:
        """Params and tags not sent yet (idempotent: same param values are no-ops, tags upsert)."""
        while self._pending:
            await self.rest.post("runs/log-batch", {"run_id": self.dest_id, **self._pending[0]})
            self._pending.pop(0)

    # -- history --------------------------------------------------------------------------------
    async def write_history(self, chunk: HistoryChunk) -> None:
        if chunk.end <= self._durable:
            return  # already durable (a replay of acknowledged points)
        batch = chunk.batch
        skip = max(0, self._durable - chunk.offset)
        keys = batch.column("key").to_pylist()[skip:]
        steps = batch.column("step").to_pylist()[skip:]
        times = batch.column("timestamp").to_pylist()[skip:]
        values = batch.column("value").to_pylist()[skip:]
        side_part: tuple[str, bytes] | None = None
        if self.wandb_names is not None:
            value_json = batch.column("value_json").to_pylist()[skip:]
            rows = zip(keys, steps, times, values, value_json, strict=True)
            metrics, lines = _wandb.split_points(self.wandb_names, rows, metric_entry)
            if lines:
                self.nonnumeric_points += len(lines)
                self._event("points_to_artifact", n=len(lines), path=_wandb.NONNUMERIC_ARTIFACT)
            side_part = (_wandb.part_name(chunk.offset + skip, chunk.end), "".join(lines).encode("utf-8"))
        else:
            metrics = self._plain_metrics(keys, steps, times, values)
        longest = max((len(m["key"]) for m in metrics), default=0)
        if self._check_replay:
            self._check_replay = False
            metrics = await self._drop_already_stored(metrics)
        first: dict[str, Any] = {}
        if self._pending:  # params/tags ride along with the first points when they fit
            first = self._pending.pop(0)
            room = MAX_ENTITIES_PER_BATCH - sum(len(v) for v in first.values())
            per_entry = 4 * longest + 2 + 120
            room = min(room, max(0, (MAX_BATCH_BYTES - len(orjson.dumps(first))) // per_entry))
            first = {**first, "metrics": metrics[:room]}
            metrics = metrics[room:]
        await self.send_pending()
        bodies = [orjson.dumps({"run_id": self.dest_id, **first})] if first else []
        bodies += [
            orjson.dumps({"run_id": self.dest_id, "metrics": part})
            for part in pack_metrics(metrics, key_bytes=4 * longest + 2)
        ]
        async with anyio.create_task_group() as tg:
            if side_part is not None:
                tg.start_soon(self.side.put, *side_part)
            for body in bodies:
                await self._in_flight.acquire()
                tg.start_soon(self._send_batch, body)
        self._durable = chunk.end

    def _plain_metrics(
        self, keys: list[str], steps: list[int], times: list[float], values: list[float | None]
    ) -> list[dict[str, Any]]:
        metrics = []
        for key, step, ts, value in zip(keys, steps, times, values, strict=True):
            if value is None:
                self.skipped_points += 1  # not a number: MLflow holds floats only
                continue
            if len(key) > 250:
                if key not in self.dropped_keys:
                    self.dropped_keys.add(key)
                    self._event("key_dropped", key=key)
                continue
            metrics.append(metric_entry(key, step, ts, value))
        if len(metrics) < len(keys):
            self._event("points_skipped", n=len(keys) - len(metrics))
        return metrics

    async def prune_stale_parts(self) -> None:
        """Delete non-numeric parts reaching beyond the resume point: their chunk was stored
        but never counted durable, and its replay may be cut differently."""
        for (_, end), path in await self.side.parts(_wandb.NONNUMERIC_PARTS, _wandb.part_span):
            if end > self._durable:
                await self.side.delete(path)

    async def _drop_already_stored(self, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Remove points the destination already holds (as a multiset, so points the source
        really repeats are kept as often as they are not yet stored)."""
        stored: Counter[tuple[Any, ...]] = Counter()
        page_size = 25_000
        for key in sorted({m["key"] for m in metrics}):
            token = None
            while True:
                page, token = await self.rest.history_page(self.dest_id, key, page_size=page_size, token=token)
                stored.update(point_identity(p["key"], p.get("step", 0), p.get("timestamp", 0), p.get("value")) for p in page)
                if token is None:
                    break
        kept = []
        for metric in metrics:
            identity = point_identity(metric["key"], metric["step"], metric["timestamp"], metric["value"])
            if stored[identity] > 0:
                stored[identity] -= 1
                self.replayed_points_skipped += 1
            else:
                kept.append(metric)
        if self.replayed_points_skipped:
            self._event("replay_deduplicated", n=self.replayed_points_skipped)
        return kept

    async def _send_batch(self, body: bytes) -> None:
        try:
            await self.rest.http.request_json(
                "POST", "/api/2.0/mlflow/runs/log-batch", data=body, headers={"Content-Type": "application/json"}
            )
        finally:
            self._in_flight.release()

    async def flush_history(self) -> None:
        await self.send_pending()  # no points came: params and tags still go
        if self.wandb_names is not None:
            await self._join_nonnumeric()

    async def _join_nonnumeric(self) -> None:
        """One ``history_nonnumeric.jsonl`` from the parts (see ``_wandb``), crash-safe."""
        parts = await self.side.parts(_wandb.NONNUMERIC_PARTS, _wandb.part_span)
        target, folder = _wandb.NONNUMERIC_ARTIFACT, _wandb.NONNUMERIC_PARTS
        if _wandb.covers([span for span, _ in parts], self._durable):
            await self.side.join_parts(parts, target, folder)
        elif await self.side.exists(target):
            if parts:  # joined before a crash that broke off deleting the parts
                await self.side.delete(folder)
        else:
            raise FatalError(
                f"mlflow: run {self.dest_id}: parts of {target} are missing (artifacts removed at the "
                "destination?); migrate the run again without resuming",
                adapter="mlflow",
                run=self.record.ref.id,
            )

    # -- the end --------------------------------------------------------------------------------
    async def finish(self, run: RunRecord) -> None:
        """Dataset inputs, then the original status and end time, then deletion if deleted."""
        await self.send_pending()
        if self.wandb_names is not None:
            await self._finish_wandb(run)
        if run.inputs:
            datasets = [i for i in run.inputs if isinstance(i, dict) and "dataset" in i]
            if datasets:
                await self.rest.post("runs/log-inputs", {"run_id": self.dest_id, "datasets": datasets})
        body: dict[str, Any] = {"run_id": self.dest_id, "status": STATUSES.get(run.state, "FINISHED")}
        if run.end_time is not None:
            body["end_time"] = seconds_to_millis(run.end_time)
        await self.rest.post("runs/update", body)
        if run.deleted and not self.destination.config.restore_deleted:
            await self.rest.post("runs/delete", {"run_id": self.dest_id})
            self.dest.lifecycle_stage = "deleted"

    async def _finish_wandb(self, run: RunRecord) -> None:
        """config.json and summary.json, and summary numbers never logged as history."""
        await self.side.put(_wandb.CONFIG_ARTIFACT, _wandb.json_document(run.config))
        await self.side.put(_wandb.SUMMARY_ARTIFACT, _wandb.json_document(run.summary))
        assert self.wandb_names is not None
        if run.metric_keys is not None:
            history_keys: set[str] | None = set(run.metric_keys)
        else:
            history_keys = set(self.wandb_names.seen) if self.saw_whole_history else None
        metrics = []
        for key, step, ts, value in _wandb.summary_points(run, history_keys, self._event):
            name = self.wandb_names(key)
            if name is not None:
                metrics.append(metric_entry(name, step, ts, value))
        if metrics:
            self._event("summary_as_metrics", n=len(metrics))
            longest = max(len(m["key"]) for m in metrics)
            for part in pack_metrics(metrics, key_bytes=4 * longest + 2):
                await self.rest.post("runs/log-batch", {"run_id": self.dest_id, "metrics": part})

    async def aclose(self) -> None:
        return None
