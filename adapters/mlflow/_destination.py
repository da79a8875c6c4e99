"""Writing runs into an MLflow tracking server, idempotently and resumably.

Each destination run carries a tag with the source run's identity (``source_tag``); the first
run opened in an experiment loads that experiment's tag index with one paged search, so a re-run
finds its runs instead of creating duplicates. Runs are created with their original start time,
name and user; params and tags go in packed ``log-batch`` requests; history chunks become
``log-batch`` requests of up to 1000 points, a few in flight per run; the original status and end
time are restored last with ``runs/update``.

Replay safety: a chunk counts as durable once all of its requests were acknowledged. After a
crash the engine replays from the last durable point, so the last chunk may be sent twice; the
SQL store keeps one row per (key, timestamp, step, value, is_nan) and drops the repeat
(tested), so no point is stored twice. Servers that do not say they are SQL stores
(``server-info``; file stores, Databricks, MLflow < 3) get the first replayed chunk filtered
against the destination's stored history of its keys instead.

Nested runs: ``mlflow.parentRunId`` is rewritten to the parent's destination id. When the
parent has not been copied yet, the child gets a ``runferry.pending_parent`` tag that
``finalize`` resolves once every run was handled (also after a crash, on the next run).
"""

from __future__ import annotations

import contextlib
import functools
import math
import posixpath
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import orjson

from core.protocols import AdapterContext, Checkpoint
from adapters.http import HttpClient
from adapters.mlflow import _wandb
from adapters.mlflow._batching import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    Packed,
    clean_entries,
    pack_metrics,
    pack_params_and_tags,
)
from adapters.mlflow._client import (
    ARTIFACTS_API,
    MlflowRest,
    decode_value,
    encode_value,
    proxied_artifact_path,
)
from adapters.mlflow._config import (
    MAX_BATCH_BYTES,
    MAX_ENTITIES_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MlflowDestinationConfig,
    resolve_connection,
)
from adapters.mlflow._side_files import SideFiles
from adapters.mlflow._spool import ReplayableStream
from core.errors import FatalError, NotFoundError, RetryableError
from core.model import FileRef, HistoryChunk, RunRecord, RunState, seconds_to_millis

SOURCE_URI_TAG = "runferry.source"
PENDING_PARENT_TAG = "runferry.pending_parent"
PARENT_TAG = "mlflow.parentRunId"
STATUSES = {
    RunState.RUNNING: "RUNNING",
    RunState.SCHEDULED: "SCHEDULED",
    RunState.FINISHED: "FINISHED",
    RunState.FAILED: "FAILED",
    RunState.KILLED: "KILLED",
    RunState.CRASHED: "FAILED",
}
_CREATE_ATTEMPTS = 4


def source_identity(record: RunRecord) -> str:
    """What the destination tag holds: MLflow run ids are globally unique uuids and W&B refs
    are already qualified (``entity/project/run``); other sources' ids are unique within
    their namespace, which is prefixed."""
    if record.source_system == "mlflow" or _wandb.is_wandb(record):
        return record.ref.id
    namespace = record.source_namespace or str(record.ref.namespace)
    return f"{namespace}/{record.ref.id}"


def parent_identity(record: RunRecord) -> str | None:
    if not record.parent_id:
        return None
    if record.source_system == "mlflow":
        return record.parent_id
    namespace = record.source_namespace or str(record.ref.namespace)
    return f"{namespace}/{record.parent_id}"


def run_tags(record: RunRecord) -> dict[str, str]:
    """The run's tags; for non-MLflow sources, system tags are filled from the record's fields
    (an MLflow source's own tags are authoritative and copied as they are)."""
    tags = dict(record.tags)
    if record.source_system == "mlflow":
        return tags
    for key, value in (
        ("mlflow.note.content", record.notes),
        ("mlflow.source.git.commit", record.git_commit),
        ("mlflow.source.name", record.program),
        ("mlflow.user", record.user),
    ):
        if value and key not in tags:
            tags[key] = value
    if _wandb.is_wandb(record):
        tags.update(_wandb.wandb_tags(record))
    return tags


def metric_entry(key: str, step: int, ts: float, value: float) -> dict[str, Any]:
    """One log-batch metric: the timestamp in integer milliseconds, NaN/inf as MLflow's JSON."""
    if math.isnan(value) or math.isinf(value):
        return {"key": key, "value": encode_value(value), "timestamp": round(ts * 1000.0), "step": step}
    return {"key": key, "value": value, "timestamp": round(ts * 1000.0), "step": step}


def _point_identity(key: str, step: Any, timestamp: Any, value: Any) -> tuple[Any, ...]:
    number = decode_value(value)
    if math.isinf(number):  # the SQL store keeps +-inf as +-DBL_MAX: the same point either way
        number = math.copysign(sys.float_info.max, number)
    bits = "nan" if math.isnan(number) else repr(number)
    return (key, int(step), int(timestamp), bits)


def param_text(value: Any) -> str:
    """Params are strings at MLflow: strings pass as they are, containers become JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    return str(value)


def prepare_metadata(destination: MlflowDestination, record: RunRecord) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Params and tags as log-batch entries: values cut to the server's limits (each cut is
    reported), over-long keys dropped (reported), the parent remapped or marked pending."""
    config = destination.config
    tags = {
        k: v
        for k, v in run_tags(record).items()
        if k not in (PARENT_TAG, "mlflow.runName", config.source_tag, SOURCE_URI_TAG, PENDING_PARENT_TAG)
    }
    parent = parent_identity(record)
    if parent is not None:
        found = destination.find_run(parent)
        if found is not None:
            tags[PARENT_TAG] = found.run_id
        else:
            tags[PENDING_PARENT_TAG] = parent
    packed = Packed()
    if _wandb.is_wandb(record):
        emit = functools.partial(destination.context.events, run=record.ref.id)
        config_params = _wandb.wandb_params(record.config, emit)
    else:
        config_params = [(k, param_text(v)) for k, v in record.config.items()]
    params = clean_entries(config_params, max_value=MAX_PARAM_VALUE, packed=packed)
    tag_entries = clean_entries(tags.items(), max_value=MAX_TAG_VALUE, packed=packed)
    for key in packed.truncated:
        destination.context.events("value_truncated", run=record.ref.id, key=key)
    for key in packed.dropped:
        destination.context.events("key_dropped", run=record.ref.id, key=key)
    return params, tag_entries


@dataclass
class _DestRun:
    run_id: str
    lifecycle_stage: str
    artifact_uri: str


@dataclass
class _Experiment:
    experiment_id: str
    name: str
    index: dict[str, _DestRun] = field(default_factory=dict)


class MlflowDestination:
    """``[destination] type = "mlflow"``; see ``MlflowDestinationConfig`` for the keys."""

    Config = MlflowDestinationConfig

    def __init__(self, config: MlflowDestinationConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self._rest: MlflowRest | None = None
        self._presigned: HttpClient | None = None
        self._resources: contextlib.AsyncExitStack | None = None
        self._experiments: dict[str, _Experiment] = {}
        self._experiment_locks: dict[str, anyio.Lock] = {}
        self.multipart_supported: bool | None = None  # unknown until server-info or a first attempt
        self.server_dedupes = False  # the SQL store drops repeated identical points (server-info)

    def describe(self) -> str:
        return f"mlflow:{self.config.tracking_uri.rstrip('/')}"

    async def __aenter__(self) -> MlflowDestination:
        c = self.config
        connection = resolve_connection(
            c.tracking_uri,
            username_env=c.username_env,
            password_env=c.password_env,
            token_env=c.token_env,
            where="[destination]",
        )
        async with contextlib.AsyncExitStack() as stack:  # unwinds whatever opened if a step fails
            rest = await stack.enter_async_context(
                MlflowRest(
                    connection, name="mlflow-destination", context=self.context, timeout=c.timeout, max_in_flight=c.max_in_flight
                )
            )
            await rest.check_access()
            info = await self._server_info(rest)
            # presigned part URLs go straight to the object store: never with our credentials
            self._presigned = await stack.enter_async_context(
                HttpClient(base_url=connection.base_url, name="mlflow-presigned", context=self.context, timeout=c.timeout)
            )
            self.server_dedupes = info.get("store_type") == "SqlStore"
            if "multipart_uploads_enabled" in info:
                self.multipart_supported = bool(info["multipart_uploads_enabled"])
            self._rest = rest
            self._resources = stack.pop_all()
        return self

    @staticmethod
    async def _server_info(rest: MlflowRest) -> dict[str, Any]:
        """``/api/3.0/mlflow/server-info`` (MLflow 3): store type and multipart support;
        empty when the server predates it (then nothing is assumed)."""
        try:
            info = await rest.http.request_json("GET", "/api/3.0/mlflow/server-info")
        except (NotFoundError, FatalError):
            return {}
        return info if isinstance(info, dict) else {}

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        resources, self._resources = self._resources, None
        self._rest, self._presigned = None, None
        if resources is not None:
            await resources.__aexit__(exc_type, exc, tb)

    @property
    def rest(self) -> MlflowRest:
        if self._rest is None:
            raise RuntimeError("MlflowDestination used outside 'async with'")
        return self._rest

    @property
    def presigned(self) -> HttpClient:
        if self._presigned is None:
            raise RuntimeError("MlflowDestination used outside 'async with'")
        return self._presigned

    # -- experiments and the identity index ----------------------------------------------------
    def experiment_name(self, record: RunRecord) -> str:
        namespace = record.ref.namespace
        fields = {"experiment": namespace.project, "project": namespace.project, "entity": namespace.entity}
        try:
            return self.config.experiment.format_map(fields)
        except (KeyError, ValueError, IndexError) as exc:
            raise FatalError(f"mlflow: experiment template {self.config.experiment!r}: {exc}", adapter="mlflow") from None

    async def experiment(self, name: str) -> _Experiment:
        """Find or create the experiment and load its identity index (once per name)."""
        lock = self._experiment_locks.setdefault(name, anyio.Lock())
        async with lock:
            known = self._experiments.get(name)
            if known is not None:
                return known
            experiment_id = await self._find_or_create_experiment(name)
            experiment = _Experiment(experiment_id, name)
            tag = self.config.source_tag
            async for run in self.rest.search_runs(
                [experiment_id], filter=f"tags.`{tag}` LIKE '%'", include_deleted=True, page_size=1000
            ):
                info = run.get("info", {})
                tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", ())}
                identity = tags.get(tag)
                if identity is not None and identity not in experiment.index:
                    experiment.index[identity] = _DestRun(
                        info["run_id"], info.get("lifecycle_stage", "active"), info.get("artifact_uri", "")
                    )
            self._experiments[name] = experiment
            return experiment

    async def _find_or_create_experiment(self, name: str) -> str:
        for _ in range(2):
            try:
                found = await self.rest.get("experiments/get-by-name", {"experiment_name": name})
                experiment = found["experiment"]
                if experiment.get("lifecycle_stage") == "deleted":
                    await self.rest.post("experiments/restore", {"experiment_id": experiment["experiment_id"]})
                return str(experiment["experiment_id"])
            except NotFoundError:
                pass
            try:
                created = await self.rest.post("experiments/create", {"name": name}, retry_transient=False)
                return str(created["experiment_id"])
            except FatalError as exc:
                if exc.code != "RESOURCE_ALREADY_EXISTS":
                    raise
            except RetryableError:
                pass  # it may have been created: look again
        raise FatalError(f"mlflow: could not create or find experiment {name!r}", adapter="mlflow")

    def find_run(self, identity: str) -> _DestRun | None:
        """A destination run by source identity, in any experiment loaded so far."""
        for experiment in self._experiments.values():
            found = experiment.index.get(identity)
            if found is not None:
                return found
        return None

    # -- runs -----------------------------------------------------------------------------------
    async def open_run(self, run: RunRecord, resume: Checkpoint | None) -> MlflowRunWriter:
        experiment = await self.experiment(self.experiment_name(run))
        identity = source_identity(run)
        existing = experiment.index.get(identity)
        start_points = 0
        params, tags = prepare_metadata(self, run)
        created = existing is None
        if existing is None:
            # small tag sets ride along with runs/create; params go with the first metrics batch
            inline = tags if len(tags) <= MAX_PARAMS_TAGS_PER_BATCH and sum(len(t["value"]) for t in tags) < 200_000 else []
            existing = await self._create_run(experiment, run, identity, inline)
            tags = [] if inline else tags
        else:
            if existing.lifecycle_stage == "deleted":
                await self.rest.post("runs/restore", {"run_id": existing.run_id})
                existing.lifecycle_stage = "active"
            if resume is not None and resume.state.get("dest_run_id") in (None, existing.run_id):
                start_points = resume.history_points
        writer = MlflowRunWriter(self, run, existing, start_points, pending=list(pack_params_and_tags(params, tags)))
        if writer.wandb_names is not None and not created:
            await writer.prune_stale_parts()
        return writer

    async def _create_run(
        self, experiment: _Experiment, run: RunRecord, identity: str, inline_tags: list[dict[str, str]]
    ) -> _DestRun:
        tags = {t["key"]: t["value"] for t in inline_tags}
        tags[self.config.source_tag] = identity
        # an MLflow source's tracking URI; other sources are named by their kind, as before
        source_uri = (run.source_uri if run.source_system == "mlflow" else None) or run.source_system
        if source_uri:
            tags[SOURCE_URI_TAG] = str(source_uri)[:MAX_TAG_VALUE]
        user_tag = run_tags(run).get("mlflow.user")
        if user_tag:
            tags["mlflow.user"] = user_tag
        body: dict[str, Any] = {
            "experiment_id": experiment.experiment_id,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run.start_time is not None:
            body["start_time"] = seconds_to_millis(run.start_time)
        if run.display_name:
            body["run_name"] = run.display_name[:250]
        if run.user:
            body["user_id"] = run.user
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                info = (await self.rest.post("runs/create", body, retry_transient=False))["run"]["info"]
                break
            except RetryableError:
                # the run may exist even though the answer was lost: look it up by identity
                found = await self._lookup_identity(experiment, identity)
                if found is not None:
                    return found
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
        created = _DestRun(info["run_id"], info.get("lifecycle_stage", "active"), info.get("artifact_uri", ""))
        experiment.index[identity] = created
        return created

    async def _lookup_identity(self, experiment: _Experiment, identity: str) -> _DestRun | None:
        escaped = identity.replace("'", "\\'")
        async for found in self.rest.search_runs(
            [experiment.experiment_id],
            filter=f"tags.`{self.config.source_tag}` = '{escaped}'",
            include_deleted=True,
            page_size=10,
        ):
            info = found["info"]
            dest = _DestRun(info["run_id"], info.get("lifecycle_stage", "active"), info.get("artifact_uri", ""))
            experiment.index[identity] = dest
            return dest
        return None

    async def finalize(self) -> None:
        """Point children whose parent was copied after them at the parent's new id."""
        for experiment in list(self._experiments.values()):
            async for run in self.rest.search_runs(
                [experiment.experiment_id],
                filter=f"tags.`{PENDING_PARENT_TAG}` LIKE '%'",
                include_deleted=True,
                page_size=1000,
            ):
                run_id = run["info"]["run_id"]
                tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", ())}
                parent = self.find_run(tags.get(PENDING_PARENT_TAG, ""))
                if parent is None:
                    continue  # the parent was not selected; the tag keeps its source id
                deleted = run["info"].get("lifecycle_stage") == "deleted"
                if deleted:
                    await self.rest.post("runs/restore", {"run_id": run_id})
                await self.rest.post("runs/set-tag", {"run_id": run_id, "key": PARENT_TAG, "value": parent.run_id})
                await self.rest.post("runs/delete-tag", {"run_id": run_id, "key": PENDING_PARENT_TAG})
                if deleted:
                    await self.rest.post("runs/delete", {"run_id": run_id})


class MlflowRunWriter:
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
        self.side = SideFiles(destination.rest, dest.run_id, self._artifact_url)
        self.saw_whole_history = start_points == 0
        self.nonnumeric_points = 0

    @property
    def rest(self) -> MlflowRest:
        return self.destination.rest

    def _event(self, name: str, **fields: Any) -> None:
        self.destination.context.events(name, run=self.record.ref.id, **fields)

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
                stored.update(_point_identity(p["key"], p.get("step", 0), p.get("timestamp", 0), p.get("value")) for p in page)
                if token is None:
                    break
        kept = []
        for metric in metrics:
            identity = _point_identity(metric["key"], metric["step"], metric["timestamp"], metric["value"])
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

    # -- files ----------------------------------------------------------------------------------
    def _artifact_url(self, path: str) -> str:
        url = proxied_artifact_path(self.dest.artifact_uri, path)
        if url is None:
            raise FatalError(
                f"mlflow: destination run {self.dest_id} stores artifacts at {self.dest.artifact_uri!r}, "
                "which the tracking server does not proxy (run the server with --serve-artifacts and a "
                "default artifact root of mlflow-artifacts:/)",
                adapter="mlflow",
                run=self.record.ref.id,
            )
        return url

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        """Run files keep their path; members of a source artifact (W&B) go under a folder
        named after the artifact and its version (``name/v3/path``), so they cannot collide
        with run files nor with another version of the artifact."""
        path = file.path
        if file.artifact is not None:
            version = f"{file.artifact.version}/" if file.artifact.version else ""
            path = f"{file.artifact.name}/{version}{file.path}"
        url = self._artifact_url(path)
        config = self.destination.config
        if (
            file.size is not None
            and file.size >= config.multipart_threshold
            and self.destination.multipart_supported is not False
            and await self._multipart(path, file.size, data)
        ):
            return
        stream = ReplayableStream(data)
        try:
            await self.rest.http.upload(
                "PUT",
                url,
                stream.attempt,
                headers={"Content-Type": "application/octet-stream"},
                size=file.size,
            )
        finally:
            await stream.aclose()

    async def _multipart(self, path: str, size: int, data: AsyncIterator[bytes]) -> bool:
        """Multipart upload through the proxy; False (nothing consumed) when unsupported."""
        from adapters.s3 import plan_part_size  # the proxy stores parts in S3: S3's part rules

        config = self.destination.config
        part_size = plan_part_size(size, config.part_size or max(self.destination.context.part_bytes, 5 << 20))
        num_parts = max(1, -(-size // part_size))
        root = proxied_artifact_path(self.dest.artifact_uri, "")
        assert root is not None
        directory, name = posixpath.split(path)
        suffix = root[len(ARTIFACTS_API + "artifacts/") :] + (f"/{directory}" if directory else "")
        create_url = f"{ARTIFACTS_API}mpu/create/{suffix}"
        try:
            created = await self.rest.http.request_json(
                "POST", create_url, data=orjson.dumps({"path": name, "num_parts": num_parts}),
                headers={"Content-Type": "application/json"},
            )
        except FatalError as exc:
            # MLflow's _UnsupportedMultipartUploadException: 501 NOT_IMPLEMENTED
            if exc.code == "NOT_IMPLEMENTED" or exc.status == 501:
                self.destination.multipart_supported = False
                return False
            raise
        self.destination.multipart_supported = True
        upload_id = created["upload_id"]
        credentials = sorted(created["credentials"], key=lambda c: int(c["part_number"]))
        try:
            parts = []
            buffer = bytearray()
            index = 0

            async def send_part(payload: bytes) -> None:
                credential = credentials[index]
                headers = await self.destination.presigned.upload(
                    "PUT", credential["url"], lambda: payload, headers=credential.get("headers") or {}, size=len(payload)
                )
                parts.append(
                    {"part_number": int(credential["part_number"]), "etag": headers.get("ETag", ""), "url": credential["url"]}
                )

            async for piece in data:
                buffer += piece
                while len(buffer) >= part_size and index < num_parts - 1:
                    await send_part(bytes(buffer[:part_size]))
                    del buffer[:part_size]
                    index += 1
            await send_part(bytes(buffer))
            await self.rest.http.request_json(
                "POST", f"{ARTIFACTS_API}mpu/complete/{suffix}",
                data=orjson.dumps({"path": name, "upload_id": upload_id, "parts": parts}),
                headers={"Content-Type": "application/json"},
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self.rest.http.request_json(
                        "POST", f"{ARTIFACTS_API}mpu/abort/{suffix}",
                        data=orjson.dumps({"path": name, "upload_id": upload_id}),
                        headers={"Content-Type": "application/json"},
                    )
                except Exception as abort_error:  # the original failure matters more
                    self._event("multipart_abort_failed", path=path, error=str(abort_error))
            raise
        return True

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
