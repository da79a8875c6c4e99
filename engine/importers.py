"""A Python API shaped like W&B's own importers (``wandb.apis.importers``, removed in wandb
0.27.1), running on runferry's engine, so W&B users can switch by changing one import.

W&B -> W&B (``WandbImporter``)::

    from engine.importers import Namespace, WandbImporter

    importer = WandbImporter(
        src_base_url="https://old.example.com", src_api_key=os.environ["SRC_KEY"],
        dst_base_url="https://api.wandb.ai", dst_api_key=os.environ["DST_KEY"],
    )
    importer.import_all(
        namespaces=[Namespace("old-team", "proj")],
        remapping={Namespace("old-team", "proj"): Namespace("new-team", "proj")},
        incremental=True,
    )

``import_runs``, ``import_artifact_sequences`` and ``import_reports`` take the same
``namespaces`` / ``remapping``. Unlike W&B's, a repeated ``import_runs`` validates what earlier
calls imported and repairs only what differs (history included), appends what is new at the
source, and keeps run ids, states, times, system metrics and metric definitions.

MLflow -> W&B (``MlflowImporter``)::

    from engine.importers import MlflowImporter, Namespace

    importer = MlflowImporter(
        mlflow_tracking_uri="http://127.0.0.1:5000",
        dst_base_url="https://api.wandb.ai",
        dst_api_key=os.environ["WANDB_API_KEY"],
    )
    runs = importer.collect_runs()                      # or any iterable of runs
    report = importer.import_runs(runs, artifacts=False, namespace=Namespace("my-team", "imported"))

Differences from W&B's importer, all on purpose: every MLflow run is found (page tokens, not
only the first 1000 per experiment); history keeps timestamps and several values per step
(see ``adapters/wandb``); state, job type, commit and program are migrated; progress is kept
in a ledger (``ledger=``), so calling ``import_runs`` again resumes and skips finished runs.
``import_runs`` returns the engine's report instead of ``None`` and raises ``ConfigError`` /
``AuthError`` for unusable settings; failed runs are listed in the report, never swallowed.

``runs`` may hold what ``collect_runs`` returns (``RunRef``), MLflow run ids, MLflow ``Run``
objects (``run.info.run_id``), or W&B importer runs (``run.run_id()``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import anyio

from engine.config import Config, parse_config
from core.model import Namespace, RunRef
from engine.pipeline import Report, make_context, migrate, open_adapters
from engine.progress import Progress
from scaleout.shards import ShardSource

__all__ = ["MlflowImporter", "Namespace", "WandbImporter"]


def _run_id_of(run: Any) -> str:
    if isinstance(run, RunRef):
        return run.id
    if isinstance(run, str):
        return run
    info = getattr(run, "info", None)
    if info is not None and getattr(info, "run_id", None):
        return str(info.run_id)
    run_id = getattr(run, "run_id", None)
    if callable(run_id):
        return str(run_id())
    if isinstance(run_id, str):
        return run_id
    raise TypeError(f"cannot tell the MLflow run id of {run!r}")


class _SelectedRuns(ShardSource):
    """A source that yields only the given runs (in the given order) and delegates the rest."""

    def __init__(self, inner: Any, runs: list[Any]) -> None:
        super().__init__(inner, [r for r in runs if isinstance(r, RunRef)])
        self.runs = runs

    async def list_runs(self) -> AsyncGenerator[RunRef, None]:
        refs = [r for r in self.runs if isinstance(r, RunRef)]
        wanted = [_run_id_of(r) for r in self.runs if not isinstance(r, RunRef)]
        for ref in refs:
            yield ref
        if wanted:  # bare ids: find their experiments by listing (filters pushed down by the source)
            remaining = dict.fromkeys(wanted)
            async for ref in self.inner.list_runs():
                if ref.id in remaining:
                    remaining.pop(ref.id)
                    yield ref
                    if not remaining:
                        break


_TRANSFER_KEYS = frozenset(
    {"incremental", "runs_concurrency", "file_workers", "chunk_points", "queue_chunks", "run_queue",
     "part_bytes", "max_runs"}
)


def _secret_env(value: str | None, fallback: str) -> str:
    """Keep a key in this process's environment under a private name (config objects, logs and
    the ledger only ever see the name); ``None`` takes ``fallback``'s value."""
    name = f"RUNFERRY_IMPORTER_KEY_{secrets.token_hex(6).upper()}"
    os.environ[name] = value if value is not None else os.environ.get(fallback, "")
    return name


def _split_options(options: dict[str, Any], transfer: dict[str, Any], adapter: dict[str, Any]) -> None:
    """``[transfer]`` keys go to the transfer table, every other option to the adapter's."""
    for key, value in options.items():
        (transfer if key in _TRANSFER_KEYS else adapter)[key] = value


def _migrate_now(config: Config, mode: str, selected: list[Any] | None = None) -> Report:
    async def run() -> Report:
        progress = Progress(mode=mode, interval=30.0)
        context = make_context(config, progress)
        progress.limiters = context.limiters
        source, destination = open_adapters(config, context)
        if selected is not None:
            source = _SelectedRuns(source, selected)
        return await migrate(config, progress=progress, adapters=(source, destination))

    return anyio.run(run)


class MlflowImporter:
    """MLflow -> W&B with W&B's importer API (see module docstring).

    :param mlflow_tracking_uri: the MLflow server (``http(s)://...`` or ``databricks``)
    :param dst_base_url: the W&B server, e.g. ``https://api.wandb.ai``
    :param dst_api_key: the W&B API key (kept in this process's environment only)
    :param ledger: journal of progress (default ``runferry-ledger.jsonl`` in the working dir)
    :param options: more ``[transfer]`` keys (``runs_concurrency``, ``chunk_points``...) and
        destination keys (``artifact_layout``, ``filestream_rate``...), by name
    """

    def __init__(
        self,
        mlflow_tracking_uri: str,
        dst_base_url: str = "https://api.wandb.ai",
        dst_api_key: str | None = None,
        *,
        ledger: str = "runferry-ledger.jsonl",
        experiments: list[str] | None = None,
        progress: str = "plain",
        **options: Any,
    ) -> None:
        self.mlflow_tracking_uri = mlflow_tracking_uri
        self.dst_base_url = dst_base_url
        self.ledger = ledger
        self.experiments = experiments or ["*"]
        self.progress_mode = progress
        self.options = options
        self._key_env = _secret_env(dst_api_key, "WANDB_API_KEY")

    def __repr__(self) -> str:
        return f"<MlflowImporter src={self.mlflow_tracking_uri} dst={self.dst_base_url}>"

    def _config(self, *, artifacts: bool, namespace: Namespace | None) -> Config:
        destination: dict[str, Any] = {"type": "wandb", "base_url": self.dst_base_url, "api_key_env": self._key_env}
        transfer: dict[str, Any] = {"ledger": self.ledger, "artifacts": artifacts}
        _split_options(self.options, transfer, destination)
        if namespace is not None:
            if namespace.entity:
                destination["entity"] = namespace.entity
            if namespace.project:
                destination["project"] = namespace.project
        source = {"type": "mlflow", "tracking_uri": self.mlflow_tracking_uri, "experiments": self.experiments,
                  "artifacts": artifacts}
        return parse_config({"source": source, "destination": destination, "transfer": transfer}, "<MlflowImporter>")

    def collect_runs(self, *, limit: int | None = None) -> list[RunRef]:
        """Every selected MLflow run (all experiments by default), as ``RunRef``s."""
        config = self._config(artifacts=False, namespace=None)

        async def collect() -> list[RunRef]:
            context = make_context(config, Progress(mode=self.progress_mode))
            source, _ = open_adapters(config, context)
            refs: list[RunRef] = []
            async with source:
                async for ref in source.list_runs():
                    refs.append(ref)
                    if limit is not None and len(refs) >= limit:
                        break
            return refs

        return anyio.run(collect)

    def import_runs(
        self,
        runs: Iterable[Any],
        *,
        artifacts: bool = True,
        namespace: Namespace | None = None,
        parallel: bool = True,
        max_workers: int | None = None,
    ) -> Report:
        """Import ``runs`` into W&B (``namespace`` = target entity/project; default: the API
        key's entity and one project per MLflow experiment). Returns the engine's report."""
        options = dict(self.options)
        if not parallel:
            options["runs_concurrency"] = 1
        elif max_workers:
            options["runs_concurrency"] = max_workers
        saved, self.options = self.options, options
        try:
            config = self._config(artifacts=artifacts, namespace=namespace)
        finally:
            self.options = saved
        return _migrate_now(config, self.progress_mode, list(runs))


class WandbImporter:
    """W&B -> W&B with W&B's importer API (see module docstring).

    :param src_base_url / src_api_key: the W&B server to read (never written to)
    :param dst_base_url / dst_api_key: the W&B server to write (keys stay in this process's
        environment only; ``None`` takes ``WANDB_API_KEY``)
    :param ledger: journal of progress (default ``runferry-ledger.jsonl`` in the working dir)
    :param options: more ``[transfer]`` keys (``runs_concurrency``...) and destination keys
        (``filestream_rate``, ``artifact_layout``...), by name
    """

    def __init__(
        self,
        src_base_url: str = "https://api.wandb.ai",
        src_api_key: str | None = None,
        dst_base_url: str = "https://api.wandb.ai",
        dst_api_key: str | None = None,
        *,
        ledger: str = "runferry-ledger.jsonl",
        progress: str = "plain",
        **options: Any,
    ) -> None:
        self.src_base_url, self.dst_base_url = src_base_url, dst_base_url
        self.ledger = ledger
        self.progress_mode = progress
        self.options = options
        self._src_env = _secret_env(src_api_key, "WANDB_API_KEY")
        self._dst_env = _secret_env(dst_api_key, "WANDB_API_KEY")

    def __repr__(self) -> str:
        return f"<WandbImporter src={self.src_base_url} dst={self.dst_base_url}>"

    def _config(
        self,
        namespaces: Iterable[Namespace] | None,
        remapping: dict[Namespace, Namespace] | None,
        *,
        incremental: bool,
        artifacts: bool,
        **options: Any,
    ) -> Config:
        source: dict[str, Any] = {"type": "wandb", "base_url": self.src_base_url, "api_key_env": self._src_env,
                                  "include_artifacts": artifacts, "include_reports": False}
        if namespaces is not None:
            source["namespaces"] = [f"{ns.entity}/{ns.project}" for ns in namespaces]
        destination: dict[str, Any] = {"type": "wandb", "base_url": self.dst_base_url, "api_key_env": self._dst_env}
        transfer: dict[str, Any] = {"ledger": self.ledger, "incremental": incremental, "artifacts": True}
        _split_options({**self.options, **options}, transfer, destination)
        remap = [{"from": f"{a.entity}/{a.project}", "to": f"{b.entity}/{b.project}"}
                 for a, b in (remapping or {}).items()]
        return parse_config({"source": source, "destination": destination, "transfer": transfer, "remap": remap},
                            "<WandbImporter>")

    def import_runs(
        self,
        namespaces: Iterable[Namespace] | None = None,
        remapping: dict[Namespace, Namespace] | None = None,
        *,
        incremental: bool = True,
        parallel: bool = True,
        max_workers: int | None = None,
        limit: int | None = None,
        artifacts: bool = True,
    ) -> Report:
        """Copy every run of ``namespaces`` (default: every project of the source key's
        entity), with history, system metrics, console log, files and (``artifacts``) the
        artifacts they logged and used. Returns the engine's report."""
        options: dict[str, Any] = {}
        if not parallel:
            options["runs_concurrency"] = 1
        elif max_workers:
            options["runs_concurrency"] = max_workers
        if limit:
            options["max_runs"] = limit
        config = self._config(namespaces, remapping, incremental=incremental, artifacts=artifacts, **options)
        return _migrate_now(config, self.progress_mode)

    def import_artifact_sequences(
        self,
        namespaces: Iterable[Namespace] | None = None,
        remapping: dict[Namespace, Namespace] | None = None,
        *,
        incremental: bool = True,
        max_workers: int | None = None,
    ) -> dict[str, int]:
        """Copy every artifact collection of ``namespaces``: all versions in version order with
        aliases, description and metadata, gaps (deleted versions) as placeholders, versions
        of deleted runs under a placeholder run, as W&B's importer did. Idempotent (a version
        already there comes back deduplicated by digest). Returns the counts."""
        del incremental, max_workers  # always idempotent; versions go one at a time to keep their order
        return self._with_adapters(namespaces, remapping, self._sequences)

    def import_reports(
        self,
        namespaces: Iterable[Namespace] | None = None,
        remapping: dict[Namespace, Namespace] | None = None,
        *,
        limit: int | None = None,
    ) -> dict[str, int]:
        """Copy the reports of ``namespaces``, their namespace references remapped; a report
        copied before is updated in place. Returns ``{"reports": n}``."""
        del limit
        return self._with_adapters(namespaces, remapping, self._reports)

    def import_all(
        self,
        *,
        runs: bool = True,
        artifacts: bool = True,
        reports: bool = True,
        namespaces: Iterable[Namespace] | None = None,
        incremental: bool = True,
        remapping: dict[Namespace, Namespace] | None = None,
    ) -> Report | None:
        """Runs first (with the artifacts they logged, in version order, and their lineage),
        then the artifact sequences (versions no selected run logged: deleted runs' versions,
        gaps; the rest deduplicate by digest), then reports, as W&B's importer ordered them."""
        selected = list(namespaces) if namespaces is not None else None
        report = self.import_runs(selected, remapping, incremental=incremental, artifacts=artifacts) if runs else None
        if artifacts:
            self.import_artifact_sequences(selected, remapping)
        if reports:
            self.import_reports(selected, remapping)
        return report

    def _with_adapters(self, namespaces: Iterable[Namespace] | None, remapping: dict[Namespace, Namespace] | None,
                       work: Any) -> dict[str, int]:
        config = self._config(namespaces, remapping, incremental=True, artifacts=True)

        async def run() -> dict[str, int]:
            context = make_context(config, Progress(mode=self.progress_mode, interval=30.0))
            source, destination = open_adapters(config, context)
            async with source, destination:
                counts: dict[str, int] = {}
                for namespace in source.namespaces:  # type: ignore[attr-defined]
                    found = await work(source, destination, f"{namespace.entity}/{namespace.project}")
                    for key, value in found.items():
                        counts[key] = counts.get(key, 0) + value
                return counts

        return anyio.run(run)

    @staticmethod
    async def _sequences(source: Any, destination: Any, project: str) -> dict[str, int]:
        from adapters.wandb._artifact_copy import (
            ArtifactFetcher,
            import_artifact_sequences,
        )

        fetcher = ArtifactFetcher(source.api, source.storage, spool_dir=destination.config.spool_dir or None)
        return await import_artifact_sequences(
            fetcher, project, api=destination.api, storage=destination.storage,
            dest_project_of=destination.dest_project_of, events=destination.context.events,
            multipart_threshold=destination.config.multipart_threshold,
            upload_concurrency=destination.config.upload_concurrency, order=destination.artifact_order)

    @staticmethod
    async def _reports(source: Any, destination: Any, project: str) -> dict[str, int]:
        from adapters.wandb._reports import copy_reports

        copied = await copy_reports(source.api, destination.api, project, dest_project_of=destination.dest_project_of,
                                    events=destination.context.events)
        return {"reports": len(copied)}
