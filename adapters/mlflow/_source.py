"""Reading runs out of an MLflow tracking server, with every point exactly as stored.

Runs come from ``runs/search`` (all pages, one stable order); each search result already holds
params, tags, latest metrics and dataset inputs, so ``get_run`` costs no request. History is
read per key, keys sorted and the server's order within a key: through ``get-history-bulk``
for runs read at the same time (``_bulk``), or ``metrics/get-history`` page by page for long
histories and servers without it (never the sampled bulk-interval endpoint). Which of the two
a run's key takes depends on its data only, so the same run always yields the same point
sequence and resume cursors (point counts) stay valid. Several keys are fetched ahead while
earlier ones are yielded: one page ahead for each of the next ``key_concurrency`` keys.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import orjson

from core.protocols import AdapterContext
from adapters.mlflow._bulk import BulkHistory
from adapters.mlflow._client import MlflowRest, decode_value, proxied_artifact_path
from adapters.mlflow._config import MlflowSourceConfig, resolve_connection
from adapters.mlflow._database import HistoryDatabase
from adapters.mlflow._dbfs import DBFS_RUN_PREFIX, DatabricksArtifacts, is_databricks_run_uri
from adapters.mlflow._run_dirs import RunsWithArtifacts
from core.errors import AuthError, ConfigError, FatalError, NotFoundError
from core.model import (
    FileRef,
    HistoryChunk,
    Namespace,
    RunRecord,
    RunRef,
    RunState,
    history_batch,
)

if TYPE_CHECKING:  # botocore is heavy to import; only runs read straight from S3 need it
    from adapters.s3 import S3Store, S3Url

STATES = {
    "RUNNING": RunState.RUNNING,
    "SCHEDULED": RunState.SCHEDULED,
    "FINISHED": RunState.FINISHED,
    "FAILED": RunState.FAILED,
    "KILLED": RunState.KILLED,
}

_DOWNLOAD_PIECE = 1 << 20
FIRST_PAGE_RUNS = 100
"""Runs on the first ``runs/search`` page: the first runs are read while the rest are listed."""


def millis_to_seconds(ms: Any) -> float | None:
    """MLflow's integer milliseconds as float seconds (exact inverse of ``seconds_to_millis``)."""
    return None if ms is None else int(ms) / 1000


class MlflowSource:
    """``[source] type = "mlflow"``; see ``MlflowSourceConfig`` for the keys."""

    Config = MlflowSourceConfig

    def __init__(self, config: MlflowSourceConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self._rest: MlflowRest | None = None
        self._s3: S3Store | None = None
        self._dbfs: DatabricksArtifacts | None = None
        self._resources: contextlib.AsyncExitStack | None = None
        self._experiments: list[dict[str, Any]] = []
        self._bulk: BulkHistory | None = None
        self._database: HistoryDatabase | None = None
        self._runs_with_artifacts: RunsWithArtifacts | None = None
        self._source_uri = config.tracking_uri  # "databricks" becomes the workspace's URL once open

    def describe(self) -> str:
        return f"mlflow:{self.config.tracking_uri.rstrip('/')}"

    async def __aenter__(self) -> MlflowSource:
        c = self.config
        connection = resolve_connection(
            c.tracking_uri,
            username_env=c.username_env,
            password_env=c.password_env,
            token_env=c.token_env,
            where="[source]",
        )
        self._source_uri = connection.base_url if c.tracking_uri == "databricks" else c.tracking_uri
        async with contextlib.AsyncExitStack() as stack:  # unwinds whatever opened if a step fails
            rest = await stack.enter_async_context(
                MlflowRest(
                    connection, name="mlflow-source", context=self.context, timeout=c.timeout, max_in_flight=c.max_in_flight
                )
            )
            await rest.check_access()
            self._experiments = await self._select_experiments(rest)
            await self._check_filter(rest)
            if c.artifacts_direct_s3 and c.artifacts:
                from adapters.s3 import S3Config, S3Store

                self._s3 = await stack.enter_async_context(
                    S3Store(
                        S3Config.from_mlflow_env(
                            access_key_id_env=c.s3_access_key_id_env,
                            secret_access_key_env=c.s3_secret_access_key_env,
                            session_token_env=c.s3_session_token_env,
                            sse_customer_key_env=c.s3_sse_customer_key_env,
                        ),
                        self.context,
                        name="mlflow-s3",
                    )
                )
            if c.artifacts:  # Databricks-hosted runs: signed URLs, read without the token
                self._dbfs = await stack.enter_async_context(
                    DatabricksArtifacts(rest, context=self.context, timeout=c.timeout, piece=_DOWNLOAD_PIECE)
                )
            self._rest = rest
            self._bulk = BulkHistory(rest.history_bulk) if c.bulk_history else None
            if c.artifacts and c.tracking_uri != "databricks":
                self._runs_with_artifacts = RunsWithArtifacts(rest, self._experiments, events=self.context.events)
            if c.history_database:
                self._database = HistoryDatabase(c.history_database)
                stack.push_async_callback(self._database.aclose)
                await self._database.check(self._experiments)
            self._resources = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        resources, self._resources = self._resources, None
        self._rest, self._s3, self._dbfs, self._runs_with_artifacts = None, None, None, None
        if resources is not None:
            await resources.__aexit__(exc_type, exc, tb)

    @property
    def rest(self) -> MlflowRest:
        if self._rest is None:
            raise RuntimeError("MlflowSource used outside 'async with'")
        return self._rest

    @property
    def experiments(self) -> list[dict[str, Any]]:
        """The selected experiments (``experiments/search`` objects), in selection order."""
        return list(self._experiments)

    async def _select_experiments(self, rest: MlflowRest) -> list[dict[str, Any]]:
        """Match every selector (id, exact name or glob over names); a selector that is not a
        glob and matches nothing is a config error (a typo should not copy nothing quietly)."""
        everything = [e async for e in rest.search_experiments(include_deleted=self.config.include_deleted)]
        chosen: dict[str, dict[str, Any]] = {}
        for selector in self.config.experiments:
            is_glob = any(ch in selector for ch in "*?[")
            matches = [
                e
                for e in everything
                if e.get("experiment_id") == selector
                or e.get("name") == selector
                or (is_glob and fnmatch.fnmatchcase(e.get("name", ""), selector))
            ]
            if not matches and not is_glob:
                await self._refused_or_missing(rest, selector)
            for e in sorted(matches, key=_experiment_order):
                chosen.setdefault(e["experiment_id"], e)
        return list(chosen.values())

    async def _refused_or_missing(self, rest: MlflowRest, selector: str) -> None:
        """Why a selector found nothing: a server with permissions leaves experiments the user
        may not read out of searches, and names them only when asked directly (403)."""
        try:
            await rest.get("experiments/get-by-name", {"experiment_name": selector})
        except AuthError as exc:
            raise AuthError(f"[source] experiments: '{selector}': the user may not read it ({exc})") from None
        except (NotFoundError, FatalError):
            pass
        raise ConfigError(f"[source] experiments: no experiment named or numbered '{selector}' at {self.config.tracking_uri}")

    async def _check_filter(self, rest: MlflowRest) -> None:
        """Ask for one run with ``filter``, so a filter the server cannot parse is a config error
        before anything is written, not a failure after the migration started."""
        if not self.config.filter.strip() or not self._experiments:
            return
        runs = rest.search_runs([self._experiments[0]["experiment_id"]], filter=self.config.filter, page_size=1)
        try:
            async with contextlib.aclosing(runs):
                async for _ in runs:
                    break
        except FatalError as exc:
            raise ConfigError(f"[source] filter {self.config.filter!r} is refused by the server ({exc}) — fix it (MLflow search syntax)") from None

    # -- runs -----------------------------------------------------------------------------------
    async def list_runs(self) -> AsyncGenerator[RunRef, None]:
        for experiment in self._experiments:
            namespace = Namespace("", experiment["name"])
            async for run in self.rest.search_runs(
                [experiment["experiment_id"]],
                filter=self.config.filter,
                include_deleted=self.config.include_deleted,
                page_size=self.config.page_size,
                first_page_size=FIRST_PAGE_RUNS,
            ):
                info = run.get("info", {})
                yield RunRef(
                    id=info["run_id"],
                    namespace=namespace,
                    name=info.get("run_name"),
                    extra=(("experiment_id", experiment["experiment_id"]), ("run_json", orjson.dumps(run))),
                )

    def expect(self, ref: RunRef) -> None:
        """``ReadAhead``: this run is read soon, so its keys may ride along in the bulk
        requests made for runs read before it (``_bulk``)."""
        raw = ref.hint("run_json")
        if self._bulk is None or self._database is not None or raw is None:
            return
        metrics = orjson.loads(raw).get("data", {}).get("metrics", ())
        self._bulk.expect(ref.id, [metric["key"] for metric in metrics])

    async def get_run(self, ref: RunRef) -> RunRecord:
        raw = ref.hint("run_json")
        if raw is not None:
            run = orjson.loads(raw)
        else:
            try:
                run = (await self.rest.get("runs/get", {"run_id": ref.id}))["run"]
            except KeyError:
                raise NotFoundError(f"mlflow: run {ref.id} not found", adapter="mlflow", run=ref.id) from None
        return self.record_from_run(ref, run)

    def record_from_run(self, ref: RunRef, run: dict[str, Any]) -> RunRecord:
        """Map one MLflow ``Run`` JSON object onto the engine's ``RunRecord``."""
        info = run.get("info", {})
        data = run.get("data", {})
        tags = {t["key"]: t.get("value", "") for t in data.get("tags", ())}
        params = {p["key"]: p.get("value", "") for p in data.get("params", ())}
        latest = {m["key"]: decode_value(m.get("value")) for m in data.get("metrics", ())}
        return RunRecord(
            ref=ref,
            display_name=info.get("run_name") or tags.get("mlflow.runName"),
            state=STATES.get(info.get("status", "FINISHED"), RunState.FINISHED),
            start_time=millis_to_seconds(info.get("start_time")),
            end_time=millis_to_seconds(info.get("end_time")),
            user=info.get("user_id") or tags.get("mlflow.user"),
            config=params,
            summary=latest,
            tags=tags,
            notes=tags.get("mlflow.note.content"),
            git_commit=tags.get("mlflow.source.git.commit"),
            program=tags.get("mlflow.source.name"),
            parent_id=tags.get("mlflow.parentRunId"),
            inputs=list(run.get("inputs", {}).get("dataset_inputs", ())),
            system={
                "source": "mlflow",
                "tracking_uri": self._source_uri,
                "run_id": info.get("run_id", ref.id),
                "experiment_id": info.get("experiment_id"),
                "artifact_uri": info.get("artifact_uri", ""),
                "lifecycle_stage": info.get("lifecycle_stage", "active"),
            },
            source_system="mlflow",
            source_uri=self._source_uri,
            deleted=info.get("lifecycle_stage") == "deleted",
            metric_keys=sorted(latest),
        )

    # -- history --------------------------------------------------------------------------------
    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncGenerator[HistoryChunk, None]:
        """Points from index ``start`` on, keys sorted, the server's order within a key.

        The points before ``start`` are fetched and skipped: MLflow cannot seek into a key's
        history, and counting is what keeps cursors exact. Fetching runs ahead by one page for
        each of the next ``key_concurrency`` keys (so runs of many short keys do not pay one
        round trip per key), and never yields from inside a task group: a consumer may stop
        early at any ``yield``.
        """
        if self._database is not None:
            # closed with this generator: a reader stopping early must not leave a query open
            history = self._database.history(run.ref.id, start, max(1, self.context.chunk_points))
            async with contextlib.aclosing(history) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        keys: list[str] = list(run.metric_keys or sorted(run.summary))
        builder = _ChunkBuilder(max(1, self.context.chunk_points), offset=start)
        fetchers = [_KeyFetcher(key) for key in keys]
        position = 0  # index of the next point of the run's history
        current = 0
        while current < len(fetchers):
            fetcher = fetchers[current]
            if not fetcher.pages and not fetcher.done:
                window = fetchers[current : current + self.config.key_concurrency]
                async with anyio.create_task_group() as tg:
                    for ahead in window:
                        if not ahead.pages and not ahead.done:
                            tg.start_soon(ahead.fetch, self.rest, self._bulk, run.ref.id, self.config.history_page_size)
            while fetcher.pages:
                page = fetcher.pages.pop(0)
                if position + len(page) <= start:
                    position += len(page)
                    continue
                skip = max(0, start - position)
                position += len(page)
                for chunk in builder.add(page, skip):
                    yield chunk
            if fetcher.done:
                current += 1
        last = builder.flush()
        if last is not None:
            yield last

    # -- artifacts ------------------------------------------------------------------------------
    async def list_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        """Every file of the artifact tree, depth first, names sorted (one list call per dir,
        through the server's artifact proxy when it serves the run's root). A finished run that
        one listing of its experiment's root shows without a directory is not asked at all
        (``_run_dirs``)."""
        if not self.config.artifacts:
            return
        root = self._direct_root(run)
        if root is not None:
            async for obj in self._s3.list(type(root)(root.bucket, root.key + "/")):  # type: ignore[union-attr]
                yield FileRef(path=obj.url.key[len(root.key) + 1 :], size=obj.size)
            return
        if self._runs_with_artifacts is not None and await self._runs_with_artifacts.surely_empty(run):
            return
        directories = [""]
        while directories:
            path = directories.pop()
            entries = await self.rest.list_artifacts(run.ref.id, path, artifact_uri=str(run.system.get("artifact_uri", "")))
            subdirs = []
            for entry in sorted(entries, key=lambda e: e["path"]):
                if entry.get("is_dir"):
                    subdirs.append(entry["path"])
                else:
                    # proto JSON leaves out default values: a file without file_size has 0 bytes
                    yield FileRef(path=entry["path"], size=int(entry.get("file_size", 0)))
            directories.extend(reversed(subdirs))

    def _direct_root(self, run: RunRecord) -> S3Url | None:
        """The run's ``s3://`` artifact root when it is read straight from the bucket."""
        artifact_uri = str(run.system.get("artifact_uri", ""))
        if self._s3 is None or not artifact_uri.startswith("s3://"):
            return None
        from adapters.s3 import S3Url

        root = S3Url.parse(artifact_uri)
        return S3Url(root.bucket, root.key.rstrip("/"))

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncGenerator[bytes, None]:
        """The file's bytes, streamed: from the bucket (``artifacts_direct_s3``), through a
        Databricks signed URL (``dbfs:/databricks/mlflow-tracking`` roots, see ``_dbfs``), or
        through the tracking server (``mlflow-artifacts`` proxy, else ``get-artifact``)."""
        root = self._direct_root(run)
        if root is not None:
            async for piece in self._s3.get_stream(type(root)(root.bucket, f"{root.key}/{file.path}")):  # type: ignore[union-attr]
                yield piece
            return
        artifact_uri = str(run.system.get("artifact_uri", ""))
        if is_databricks_run_uri(artifact_uri) and self._dbfs is not None:
            async for piece in self._dbfs.read(run.ref.id, file.path):
                yield piece
            return
        url = proxied_artifact_path(artifact_uri, file.path)
        if url is None:
            if artifact_uri.startswith("dbfs:") or self.config.tracking_uri == "databricks":
                raise FatalError(
                    f"mlflow: artifact roots {artifact_uri.split(':')[0]}:... other than "
                    f"{DBFS_RUN_PREFIX} are not supported yet (set artifacts = false)",
                    adapter="mlflow",
                    run=run.ref.id,
                )
            url = f"/get-artifact?run_uuid={quote(run.ref.id)}&path={quote(file.path, safe='')}"
        async for piece in self.rest.http.download(url, chunk_size=_DOWNLOAD_PIECE):
            yield piece


class _KeyFetcher:
    """One metric key's paging state: pages fetched but not yet consumed, and the next token."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pages: list[list[dict[str, Any]]] = []
        self.started = False
        self.token: str | None = None
        self.done = False

    async def fetch(self, rest: MlflowRest, bulk: BulkHistory | None, run_id: str, page_size: int) -> None:
        if bulk is not None and not self.started:
            whole = await bulk.history(run_id, self.key)
            if whole is not None:
                self.pages.append(whole)
                self.done = True
                return
        self.started = True
        page, self.token = await rest.history_page(run_id, self.key, page_size=page_size, token=self.token)
        self.pages.append(page)
        self.done = self.token is None


def _experiment_order(experiment: dict[str, Any]) -> tuple[int, str]:
    ident = experiment.get("experiment_id", "")
    return (int(ident), "") if ident.isdigit() else (1 << 62, ident)


class _ChunkBuilder:
    """Collects metric points into Arrow chunks of ``size`` rows, tracking offsets."""

    def __init__(self, size: int, *, offset: int) -> None:
        self.size = size
        self.offset = offset
        self._keys: list[str] = []
        self._steps: list[int] = []
        self._times: list[float] = []
        self._values: list[float] = []

    def add(self, page: list[dict[str, Any]], skip: int) -> list[HistoryChunk]:
        out: list[HistoryChunk] = []
        for point in page[skip:] if skip else page:
            self._keys.append(point["key"])
            self._steps.append(int(point.get("step", 0)))
            self._times.append(int(point.get("timestamp", 0)) / 1000)
            self._values.append(decode_value(point.get("value")))
            if len(self._steps) >= self.size:
                out.append(self._emit())
        return out

    def flush(self) -> HistoryChunk | None:
        return self._emit() if self._steps else None

    def _emit(self) -> HistoryChunk:
        batch = history_batch(self._keys, self._steps, self._times, self._values)
        chunk = HistoryChunk(batch=batch, offset=self.offset)
        self.offset += batch.num_rows
        self._keys, self._steps, self._times, self._values = [], [], [], []
        return chunk
