"""``WandbSource``: opens the session, checks the key, resolves namespaces, reads runs.

Read-only by construction: it sends only the queries of ``_read_ops`` (plus ``Viewer``) and
GETs file bytes; no mutation, no file_stream, no upload.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Self

from core.protocols import AdapterContext
from adapters.http import HttpClient
from core.errors import AuthError, ConfigError, NotFoundError
from core.model import CONSOLE_LOG, FileRef, HistoryChunk, Namespace, RunRecord, RunRef

from . import _auth, _gql, _read_ops
from ._files_read import (
    CONSOLE_FILE,
    console_from_log_lines,
    download,
    file_nodes,
    file_url,
    hex_md5,
    read_metadata,
)
from ._history_exports import ExportSupport
from ._history_read import iter_points
from ._mapping import original_times
from ._read_artifacts import logged_artifact_files, read_artifact_file, used_artifacts
from ._runs_read import record_from_node, resolve_namespaces, run_nodes, run_ref
from ._source_config import WandbSourceConfig


def source_path(ref: RunRef) -> tuple[str, str, str]:
    """(entity, project, run) at the source. ``ref.id`` is ``entity/project/run`` and never
    changes, while ``ref.namespace`` is where the run goes once ``[[remap]]`` has moved it."""
    entity, project, name = ref.id.split("/", 2)
    return entity, project, name


class WandbSource:
    """``[source] type = "wandb"``; see ``WandbSourceConfig`` for the keys and the package
    docstring for how runs, history, files and the console log are read."""

    Config = WandbSourceConfig

    def __init__(self, config: WandbSourceConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.base_url = config.base_url.rstrip("/")
        self._stack: contextlib.AsyncExitStack | None = None
        self._api: HttpClient | None = None
        self._storage: HttpClient | None = None
        self.namespaces: list[Namespace] = []
        self._urls: dict[tuple[str, str], str] = {}  # (run id, file name) -> download URL
        self._exports: ExportSupport | None = None

    def describe(self) -> str:
        return f"wandb:{self.base_url}"

    async def __aenter__(self) -> Self:
        key = _auth.api_key_from_env(self.config.api_key_env, "[source]")
        async with contextlib.AsyncExitStack() as stack:
            api = await stack.enter_async_context(HttpClient(
                base_url=self.base_url, name="wandb-source", context=self.context,
                classify=_gql.classify_graphql, headers=_auth.auth_headers(key),
                timeout=self.config.timeout, limit_per_host=self.config.max_in_flight))
            try:
                viewer = (await _gql.call(api, _gql.VIEWER, {}, name="Viewer")).get("viewer") or {}
            except AuthError:
                raise AuthError(
                    f"wandb: {self.base_url} refused the API key in {self.config.api_key_env} (api_key_env)"
                ) from None
            teams = [e["node"]["name"] for e in ((viewer.get("teams") or {}).get("edges") or []) if e.get("node")]
            default_entity = viewer.get("entity") or ""
            if not default_entity and not self.config.namespaces:
                raise ConfigError("[source] namespaces is empty and the API key has no default entity")
            self.namespaces = await resolve_namespaces(
                api, self.config.namespaces, default_entity=default_entity, teams=teams, base_url=self.base_url)
            # presigned storage URLs (artifact members) never get W&B credentials
            self._storage = await stack.enter_async_context(HttpClient(
                base_url=self.base_url, name="wandb-source-storage", context=self.context,
                timeout=self.config.timeout))
            self._exports = ExportSupport(self._storage)
            self._api = api
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack, self._api, self._storage = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def api(self) -> HttpClient:
        if self._api is None:
            raise RuntimeError("WandbSource used outside 'async with'")
        return self._api

    @property
    def storage(self) -> HttpClient:
        if self._storage is None:
            raise RuntimeError("WandbSource used outside 'async with'")
        return self._storage

    # -- runs -----------------------------------------------------------------------------------
    async def list_runs(self) -> AsyncGenerator[RunRef, None]:
        """Every selected run once, namespaces in order, each in the server's ``order``; a run
        a later page repeats (a run created or changed while paging) is skipped."""
        seen: set[tuple[str, str, str]] = set()
        filters = self.config.filters_variable
        for namespace in self.namespaces:
            async for node in run_nodes(self.api, namespace, per_page=self.config.per_page,
                                        order=self.config.order, filters=filters):
                identity = (namespace.entity, namespace.project, node["name"])
                if identity in seen:
                    self.context.events("duplicate_run", run="/".join(identity))
                    continue
                seen.add(identity)
                yield run_ref(namespace, node)

    async def get_run(self, ref: RunRef) -> RunRecord:
        entity, project, name = source_path(ref)
        raw = ref.hint("run_json")
        if raw is not None:
            node = json.loads(raw)
        else:
            data = await _gql.call(self.api, _read_ops.RUN, {"entity": entity, "project": project, "name": name},
                                   name="Run")
            node = (data.get("project") or {}).get("run")
            if node is None:
                raise NotFoundError(f"wandb: run {ref.id} not found", adapter="wandb", run=ref.id)
        record = record_from_node(ref, node, base_url=self.base_url,
                                  include_system_metrics=self.config.include_system_metrics)
        metadata = await read_metadata(self.api, entity, project, name)
        record.host = metadata.get("host")
        record.program = metadata.get("program") or metadata.get("codePath")
        if not record.git_commit:
            record.git_commit = (metadata.get("git") or {}).get("commit")
        if self.config.include_artifacts:
            record.inputs = await used_artifacts(self.api, entity=entity, project=project, run_name=name)
        kept = original_times(record.config)
        if kept is not None:  # a run an earlier migration wrote: its source's times, not W&B's
            record.start_time, record.end_time = kept
        return record

    # -- history --------------------------------------------------------------------------------
    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncGenerator[HistoryChunk, None]:
        """History points then system-metrics points (``_history_read`` has the conventions)."""
        events = int(run.system.get("events_line_count") or 0) if self.config.include_system_metrics else 0
        entity, project, name = source_path(run.ref)
        chunks = iter_points(
            self.api,
            entity=entity,
            project=project,
            run=name,
            exports=self._exports if self.config.history_exports else None,
            last_step=int(run.system.get("last_step", -1)),
            events_count=events,
            start_time=run.start_time or 0.0,
            page_rows=self.config.history_page_rows,
            chunk_points=self.context.chunk_points,
            start=start,
        )
        async with contextlib.aclosing(chunks) as stream:
            async for chunk in stream:
                yield chunk

    # -- files ----------------------------------------------------------------------------------
    async def list_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        """Run files (``include_files``), ``output.log`` as the console log
        (``include_console``), then the artifact members (``artifact_files``)."""
        entity, project, name = source_path(run.ref)
        has_console_file = False
        if self.config.include_files or self.config.include_console:
            async for node in file_nodes(self.api, entity, project, name, per_page=self.config.files_per_page):
                path = node["name"]
                is_console = path == CONSOLE_FILE
                if is_console:
                    has_console_file = True
                if (is_console and not self.config.include_console) or (not is_console and not self.config.include_files):
                    continue
                if node.get("url"):
                    self._urls[(run.ref.id, path)] = node["url"]
                size = node.get("sizeBytes")
                yield FileRef(path=path, size=int(size) if size is not None else None, md5=hex_md5(node.get("md5")),
                              role=CONSOLE_LOG if is_console else None)
        if self.config.include_console and not has_console_file and int(run.system.get("log_line_count") or 0):
            yield FileRef(path=CONSOLE_FILE, role=CONSOLE_LOG)
        async for member in self.artifact_files(run):
            yield member

    async def artifact_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        """Members of the run's logged artifact versions (``FileRef.artifact`` set), oldest
        version first, when ``include_artifacts`` is on (see ``_read_artifacts``)."""
        if not self.config.include_artifacts:
            return
        entity, project, name = source_path(run.ref)
        members = logged_artifact_files(self.api, self.storage, entity=entity, project=project, run_name=name,
                                        events=self.context.events)
        async with contextlib.aclosing(members) as listing:
            async for member in listing:
                yield member

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncGenerator[bytes, None]:
        """The file's bytes in pieces (authenticated ``url``; the console log rebuilt from
        ``logLines`` when the run has no ``output.log`` file)."""
        if file.artifact is not None and file.artifact.source_project:
            async with contextlib.aclosing(read_artifact_file(self.storage, self.api, file)) as member:
                async for piece in member:
                    yield piece
            return
        entity, project, name = source_path(run.ref)
        url = self._urls.pop((run.ref.id, file.path), None)
        if url is None:
            url = await file_url(self.api, entity, project, name, file.path)
        if url is None:
            if file.role == CONSOLE_LOG:
                async for piece in console_from_log_lines(self.api, entity, project, name):
                    yield piece
                return
            raise NotFoundError(f"wandb: run {run.ref.id} has no file {file.path}", adapter="wandb", run=run.ref.id)
        async for piece in download(self.api, url):
            yield piece
