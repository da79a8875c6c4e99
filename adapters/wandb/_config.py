"""The ``[destination] type = "wandb"`` table, as a frozen dataclass (see adapters/base.py)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

ARTIFACT_LAYOUTS = ("files", "folders", "single")
RUN_ID_MODES = ("source", "hash")


@dataclass(frozen=True, kw_only=True)
class WandbDestinationConfig:
    """W&B destination (``type = "wandb"``).

    - ``base_url``: W&B server, default ``https://api.wandb.ai`` (self-hosted: your host).
    - ``api_key_env``: environment variable holding the API key (default ``WANDB_API_KEY``).
    - ``entity``: target entity; empty = the source namespace's entity, else the key's default.
    - ``project``: project name template; ``{project}`` / ``{experiment}`` = source project or
      MLflow experiment name, ``{entity}`` = source entity. Default ``{project}``.
    - ``group``: run group template (same placeholders; empty = the source's group). Put the
      experiment into a group of a fixed project with ``project = "imported"``,
      ``group = "{experiment}"``.
    - ``run_id``: ``source`` keeps the source run id when W&B accepts it (else hashes it);
      ``hash`` always derives a 32-hex-char id from source URI + run id. Both are deterministic,
      so re-running a migration updates the same W&B runs.
    - ``artifact_layout``: where source files without an artifact go: ``files`` = run files
      (paths kept), ``folders`` = one artifact per top-level folder (files at the top level stay
      run files), ``single`` = one artifact per run holding the whole tree.
    - ``artifact_type``: artifact type for ``folders`` / ``single`` (default
      ``imported-artifacts``).
    - ``max_request_bytes``: upper bound of one file_stream request body (default 8 MiB; W&B
      refuses requests above ~10 MiB).
    - ``filestream_rate``: requests per second per run on file_stream (default 2.0, the
      documented per-run limit); the writer backs off on 429 / Retry-After and speeds up again.
    - ``run_creation_rate``: the server's run-creation limit per project, per second (default
      80, the documented default of Dedicated Cloud and Self-Managed). Runs are created paced
      just under it from the start instead of finding it by a refusal; set your server's value
      if it differs, or 0 if it is unknown (then the limit is found from 429 answers). A
      ``[ratelimit.endpoints]`` table for ``<base_url>/graphql#run-creation/`` keys wins over it.
    - ``gzip``: gzip file_stream bodies (only for servers with the FILESTREAM_GZIP feature).
    - ``multipart_threshold``: artifact files at least this large go multipart (default 2 GiB,
      as the SDK); ``part_size``: multipart part size (default 100 MiB, as the SDK).
    - ``upload_concurrency``: parallel artifact file uploads per run (default 8).
    - ``spool_dir``: where file bytes are staged for retryable uploads and artifact digests
      (default: the system temp dir). Staged files are removed once uploaded, also when the
      migration fails or is interrupted; only an uncommitted artifact's members stay (under
      ``runferry-wandb-staging``), because the ledger counts them as moved: the resume commits
      and removes them.
    - ``system_metrics_prefix``: history keys starting with it are system metrics (MLflow's
      system-metrics monitor logs ``system/cpu_utilization_percentage``...). They go to the
      run's system stream (``wandb-events.jsonl``: W&B's system charts,
      ``run.history(stream="system")``) instead of its history and summary, renamed
      ``system.`` + the rest of the key (``system/gpu_0_utilization_percentage`` ->
      ``system.gpu_0_utilization_percentage``); one line per source step with ``_wandb: true``,
      ``_timestamp`` (the original time, the latest of the step's points) and ``_runtime``
      (seconds since the run start); the step itself is not kept (W&B's system stream has
      none). Default ``"system/"``; ``""`` keeps every key in the history. Resume needs the
      same value as the interrupted migration.

    - ``artifact_order_timeout``: seconds a copied W&B artifact version waits for the version
      before it (logged by another run still on its way) before it is committed anyway and
      counted as ``artifact_order`` (default 120; see ``_artifact_copy``).

    A source's console log (a file with role ``console``) becomes the run's ``output.log``:
    streamed line by line (the Logs tab, ``run.console_logs()``), then uploaded as the run file
    ``output.log`` with the source's exact bytes.
    """

    base_url: str = "https://api.wandb.ai"
    api_key_env: str = "WANDB_API_KEY"
    entity: str = ""
    project: str = "{project}"
    group: str = ""
    run_id: str = "source"
    artifact_layout: str = "files"
    artifact_type: str = "imported-artifacts"
    max_request_bytes: int = 8 * 1024 * 1024
    filestream_rate: float = 2.0
    run_creation_rate: float = 80.0
    gzip: bool = False
    multipart_threshold: int = 2 * 1024**3
    part_size: int = 100 * 1024**2
    upload_concurrency: int = 8
    spool_dir: str = ""
    system_metrics_prefix: str = "system/"
    artifact_order_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.artifact_layout not in ARTIFACT_LAYOUTS:
            raise ValueError(f"artifact_layout must be one of {ARTIFACT_LAYOUTS}")
        if self.run_id not in RUN_ID_MODES:
            raise ValueError(f"run_id must be one of {RUN_ID_MODES}")
        if not 64 * 1024 <= self.max_request_bytes <= 10 * 1024 * 1024:
            raise ValueError("max_request_bytes must be between 64 KiB and 10 MiB (W&B refuses larger requests)")
        if self.filestream_rate <= 0:
            raise ValueError("filestream_rate must be positive")
        if self.run_creation_rate != 0 and self.run_creation_rate < 1:
            raise ValueError("run_creation_rate must be at least 1 per second, or 0 (unknown)")
        if self.part_size < 1 or self.multipart_threshold < 1:
            raise ValueError("part_size and multipart_threshold must be positive")
        if self.part_size > 5 * 1024**3:
            raise ValueError("part_size must be at most 5 GiB (the object store's largest part)")
        if self.artifact_order_timeout < 0:
            raise ValueError("artifact_order_timeout must be 0 or more seconds")
        if self.upload_concurrency < 1:
            raise ValueError("upload_concurrency must be at least 1")
        if not self.base_url.startswith(("http://", "https://")) or not urlsplit(self.base_url).hostname:
            raise ValueError(f"base_url {self.base_url!r} must be http(s)://host[:port]")
