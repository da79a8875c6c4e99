"""``WandbDestination``: opens sessions, checks the key, finds-or-creates runs idempotently."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from core.protocols import AdapterContext, Checkpoint
from adapters.http import HttpClient
from core.errors import AuthError, ConfigError, FatalError
from core.model import Namespace, RunRecord, RunRef
from core.probe import probe_directory

from core.protocols import FinishedRun

from . import _auth, _gql
from ._artifact_copy import ArtifactFetcher, ArtifactOrder
from ._check import check_run
from ._reports import copy_reports
from ._config import WandbDestinationConfig
from ._filestream import FileStream, FileStreamClient, RunPacer
from ._mapping import (
    check_template,
    group_for,
    project_for,
    run_id_for,
    upsert_variables,
)
from ._staging import RunStaging, remove_staging_root, staging_root
from ._writer import WandbRunWriter


class WandbDestination:
    """Writes runs to a W&B server (SaaS or self-hosted); see the package docstring."""

    Config = WandbDestinationConfig

    def __init__(self, config: WandbDestinationConfig, context: AdapterContext) -> None:
        for template in (config.project, config.group):
            try:
                check_template(template)
            except ValueError as exc:
                raise ConfigError(f"[destination] {exc}") from None
        self.config = config
        self.context = context
        self.clock = context.clock
        self._stack: contextlib.AsyncExitStack | None = None
        self.api: HttpClient | None = None
        self.filestream_http: FileStreamClient | None = None
        self.storage: HttpClient | None = None
        self.default_entity = ""
        self.source_uri = context.source_uri
        # copied W&B artifacts (see _artifact_copy): one version-order coordinator for all runs;
        # dest_project_of maps a source "entity/project" as runs are mapped (the engine may set
        # a remap-aware one); artifact_fetcher reads used versions from a W&B source
        self.artifact_order = ArtifactOrder(timeout=config.artifact_order_timeout)
        self.dest_project_of = self.default_dest_project
        self.artifact_fetcher: ArtifactFetcher | None = None
        self._source: Any = None

    def describe(self) -> str:
        return f"wandb:{self.config.base_url.rstrip('/')}/{self.config.entity or '*'}/{self.config.project}"

    def default_dest_project(self, source_project: str) -> tuple[str, str]:
        """Where a source ``entity/project`` lands under this config (entity and project
        template), without the engine's ``[[remap]]`` rules."""
        entity, _, project = source_project.partition("/")
        namespace = self.context.namespace_map(Namespace(entity, project))
        record = RunRecord(ref=RunRef(id="", namespace=namespace))
        return self.config.entity or namespace.entity or self.default_entity, project_for(record, self.config)

    def pair_with(self, source: object) -> None:
        """Called by the engine with this migration's source: a W&B source lets used artifacts
        be copied on use (lineage across projects) and reports be copied at the end."""
        from ._source import WandbSource

        self._source = source if isinstance(source, WandbSource) else None

    async def __aenter__(self) -> Self:
        if self.config.spool_dir:  # staged bytes must have a place before any run is created
            probe_directory(Path(self.config.spool_dir), key="spool_dir")
        # HTTP Basic with user "api" (as the SDK); the header lives only inside the sessions
        auth_headers = _auth.auth_headers(_auth.api_key_from_env(self.config.api_key_env, "[destination]"))
        base = self.config.base_url.rstrip("/")
        async with contextlib.AsyncExitStack() as stack:
            self.api = await stack.enter_async_context(HttpClient(
                base_url=base, name="wandb", context=self.context,
                classify=_gql.classify_graphql, headers=auth_headers))
            if self.config.run_creation_rate:
                self.api.declare_limit(_gql.RUN_CREATION_KEYS, **_gql.run_creation_pacing(self.config.run_creation_rate))
            self.filestream_http = await stack.enter_async_context(FileStreamClient(
                base_url=base, name="wandb-filestream", context=self.context, max_attempts=1,
                headers=auth_headers))
            # presigned storage URLs never get W&B credentials
            self.storage = await stack.enter_async_context(HttpClient(
                base_url=base, name="wandb-storage", context=self.context))
            try:
                viewer = await _gql.call(self.api, _gql.VIEWER, {}, name="Viewer")
            except AuthError:
                raise AuthError(f"wandb: {base} refused the API key in {self.config.api_key_env} (api_key_env)") from None
            self.default_entity = ((viewer.get("viewer") or {}).get("entity")) or ""
            self._check_entity(viewer.get("viewer") or {})
            self._stack = stack.pop_all()
        return self

    def _check_entity(self, viewer: dict[str, Any]) -> None:
        """A configured ``entity`` the key cannot write to fails now, before any run is created."""
        teams = [e["node"]["name"] for e in ((viewer.get("teams") or {}).get("edges") or []) if e.get("node")]
        mine = {self.default_entity, *teams} - {""}
        if self.config.entity and mine and self.config.entity not in mine:
            raise ConfigError(
                f"[destination] entity {self.config.entity!r} is not one of the API key's entities "
                f"({', '.join(sorted(mine))}) — fix entity or use a key of that entity"
            )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        remove_staging_root(self.config.spool_dir)

    async def open_run(self, run: RunRecord, resume: Checkpoint | None) -> WandbRunWriter:
        assert self.api is not None and self.filestream_http is not None and self.storage is not None
        entity = self.config.entity or run.ref.namespace.entity or self.default_entity
        if not entity:
            raise ConfigError("[destination] entity is empty and the API key has no default entity")
        project = project_for(run, self.config)
        source_uri = self.source_uri or run.source_uri or ""
        run_id = run_id_for(run, self.config, source_uri)
        parent_run_id = None
        if run.parent_id:
            parent_run_id = run_id_for(
                RunRecord(ref=type(run.ref)(id=run.parent_id, namespace=run.ref.namespace)), self.config, source_uri
            )
        variables = upsert_variables(run, entity=entity, project=project, run_id=run_id,
                                     group=group_for(run, self.config, parent_run_id))
        answer = await _gql.call(self.api, _gql.UPSERT_BUCKET, variables, name="UpsertBucket",
                                 limit_key=_gql.run_creation_key(entity, project))
        bucket = answer["upsertBucket"]["bucket"]
        server_lines = int(bucket.get("historyLineCount") or 0)
        server_events = int(bucket.get("eventsLineCount") or 0)
        state: dict[str, Any] = {}
        points = lines = events_lines = 0
        if resume is not None and resume.state.get("run_id") == run_id:
            state = dict(resume.state)
            points, lines = resume.history_points, int(state.get("lines") or 0)
            events_lines = int(state.get("events_lines") or 0)
            counts = (("history", server_lines, lines), ("system-metrics", server_events, events_lines))
            for what, server, ours in counts:
                if server < ours:
                    raise FatalError(
                        f"wandb: run {entity}/{project}/{run_id} has {server} {what} lines but the ledger "
                        f"says {ours} were acknowledged; re-run with incremental = false to rewrite it",
                        adapter="wandb", run=run.ref.id)
            # the split of points between history and system stream must not change mid-run
            # (checkpoints from before the split existed hold no prefix: everything was history)
            before, now = state.get("system_metrics_prefix", ""), self.config.system_metrics_prefix
            if points and before != now and _split_differs(run, before, now):
                raise FatalError(
                    f"wandb: run {run.ref.id} was started with system_metrics_prefix = "
                    f"{state.get('system_metrics_prefix', '')!r}; resume with the same value, or re-run with "
                    "incremental = false to rewrite it", adapter="wandb", run=run.ref.id)
        elif resume is not None and resume.history_points:
            raise FatalError(f"wandb: ledger checkpoint for {run.ref.id} belongs to another run id", adapter="wandb")
        if server_lines > lines:
            self.context.events("history_overwrite", run=run.ref.id, from_line=lines, server_lines=server_lines)
        if server_events > events_lines:
            self.context.events("history_overwrite", run=run.ref.id, from_line=events_lines,
                                server_lines=server_events, stream="events")
        dest_id = f"{entity}/{project}/{run_id}"
        staging = RunStaging(staging_root(self.config.spool_dir), dest_id)
        if resume is None:
            staging.clear()
        pacer = RunPacer(self.config.filestream_rate, self.clock)
        stream = FileStream(self.filestream_http, f"files/{entity}/{project}/{run_id}/file_stream", pacer,
                            use_gzip=self.config.gzip)
        return WandbRunWriter(
            config=self.config, api=self.api, storage=self.storage, stream=stream, staging=staging,
            events=self.context.events, entity=entity, project=project, run_id=run_id, record=run,
            start_points=points, start_lines=lines, state=state, artifact_order=self.artifact_order,
            dest_project_of=self.dest_project_of, artifact_fetcher=self._fetcher(),
        )

    async def finalize(self) -> None:
        """After every run: a W&B source's reports (``include_reports``), namespaces remapped."""
        source = self._source
        if source is None or not source.config.include_reports:
            return
        assert self.api is not None
        for namespace in source.namespaces:
            await copy_reports(source.api, self.api, f"{namespace.entity}/{namespace.project}",
                               dest_project_of=self.dest_project_of, events=self.context.events)

    def _fetcher(self) -> ArtifactFetcher | None:
        """Reads used artifact versions straight from a W&B source (made once it is open)."""
        if self.artifact_fetcher is None and self._source is not None:
            self.artifact_fetcher = ArtifactFetcher(self._source.api, self._source.storage,
                                                    spool_dir=self.config.spool_dir or None)
        return self.artifact_fetcher

    async def check_run(self, run: RunRecord, finished: FinishedRun) -> list[str]:
        """Incremental re-runs: what differs at the destination from what was written (see
        ``_check``); empty when the run is intact."""
        assert self.api is not None
        return await check_run(self.api, self.config, run, finished)


def _split_differs(run: RunRecord, before: str, now: str) -> bool:
    """Whether two system-metrics prefixes route any of the run's metric keys differently (the
    source's key list, else its summary keys)."""
    keys = run.metric_keys if run.metric_keys is not None else list(run.summary)
    return any(bool(before and str(k).startswith(before)) != bool(now and str(k).startswith(now)) for k in keys)
