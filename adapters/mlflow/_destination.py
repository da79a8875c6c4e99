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

Runs from W&B (``source_system = "wandb"``) are mapped as ``_wandb`` documents: flattened
params, W&B fields as tags, non-numeric history and the config and summary as artifacts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio

from core.protocols import AdapterContext, Checkpoint
from adapters.http import HttpClient
from adapters.mlflow._batching import (
    MAX_TAG_VALUE,
    pack_params_and_tags,
)
from adapters.mlflow._client import (
    MlflowRest,
)
from adapters.mlflow._config import (
    MAX_PARAMS_TAGS_PER_BATCH,
    MlflowDestinationConfig,
    resolve_connection,
)
from core.errors import FatalError, NotFoundError, RetryableError
from core.model import RunRecord, seconds_to_millis
from adapters.mlflow._mapping import (
    PARENT_TAG,
    PENDING_PARENT_TAG,
    SOURCE_URI_TAG,
    prepare_metadata,
    run_tags,
    source_identity,
)
from adapters.mlflow._s3_artifacts import DirectS3
from adapters.mlflow._writer import MlflowRunWriter

_CREATE_ATTEMPTS = 4


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
        self._direct_s3: DirectS3 | None = None
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
            # s3:// artifact roots are written straight to the bucket (the store opens at first use)
            part = c.part_size or max(self.context.part_bytes, 5 << 20)
            self._direct_s3 = await stack.enter_async_context(
                DirectS3(
                    self.context,
                    part_size=part,
                    multipart_threshold=min(c.multipart_threshold, part),
                    credential_envs=(c.s3_access_key_id_env, c.s3_secret_access_key_env, c.s3_session_token_env),
                    sse_customer_key_env=c.s3_sse_customer_key_env,
                )
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
        self._rest, self._presigned, self._direct_s3 = None, None, None
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

    @property
    def direct_s3(self) -> DirectS3:
        if self._direct_s3 is None:
            raise RuntimeError("MlflowDestination used outside 'async with'")
        return self._direct_s3

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
