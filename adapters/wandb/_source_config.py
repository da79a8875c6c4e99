"""The ``[source] type = "wandb"`` table, as a frozen dataclass (see adapters/base.py).

Kept apart from the I/O code so the config loader and the README can read it without touching
the network; ``filters`` is checked here so a typo fails before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True, kw_only=True)
class WandbSourceConfig:
    """W&B source (``[source] type = "wandb"``). Read-only: only queries and downloads.

    - ``base_url``: W&B server, default ``https://api.wandb.ai`` (self-hosted: your host).
    - ``api_key_env``: environment variable holding the API key (default ``WANDB_API_KEY``).
    - ``namespaces``: ``"entity/project"`` selectors; ``*`` / ``?`` globs on either part:
      ``"team/*"`` = every project of ``team``, ``"*/*"`` = every project of every entity the
      key belongs to (the viewer's teams). A selector without globs that names no project is
      a config error. Default: every project of the key's default entity.
    - ``filters``: a W&B MongoDB-style filter as JSON text, sent as the ``filters`` variable
      of the ``Runs`` query exactly as ``wandb.Api().runs(path, filters=...)`` sends it, e.g.
      ``'{"$or": [{"config.experiment_name": "foo"}, {"state": "finished"}]}'``
      (default: none, every run).
    - ``order``: run order, as ``api.runs(order=...)``: ``+created_at`` (default),
      ``-created_at``, ``+heartbeat_at``, ``+config.lr.value``, ``-summary_metrics.acc``...
    - ``per_page``: runs per ``Runs`` page (default 100; the public API uses 50; each run
      carries its whole config and summary, so very large pages make very large answers).
    - ``include_system_metrics``: copy the system-metrics stream (``wandb-events.jsonl``,
      every line, unsampled) as history points ``system/<name>`` after the run's history
      (default true).
    - ``include_console``: copy the console log (``output.log``) (default true).
    - ``include_files``: copy run files (``wandb-metadata.json``, ``requirements.txt``,
      ``config.yaml``, ``wandb-summary.json``, ``media/...``, files saved with ``run.save``)
      (default true).
    - ``include_artifacts``: copy logged artifacts (default true).
    - ``include_reports``: copy the projects' reports (default true).
    - ``history_page_rows``: history lines wanted per ``HistoryPage`` request (default 1000,
      the SDK's page size); step windows grow over sparse steps and shrink over dense ones
      to stay near it.
    - ``history_exports``: read the history the server has exported to parquet
      (``parquetHistory``, what wandb-core reads) from those files, and only the rows after
      them as JSON pages (default true; a server without exports is read as JSON). An export
      keeps no key logged as null, and a key that mixed integers and floats reads as floats.
    - ``files_per_page``: run files per ``RunFiles`` page (default 200).
    - ``max_in_flight``: requests in flight to the server at once (default 8).
    - ``timeout``: seconds to connect and seconds of silence while reading (default 120).
    """

    base_url: str = "https://api.wandb.ai"
    api_key_env: str = "WANDB_API_KEY"
    namespaces: list[str] = field(default_factory=list)
    filters: str = ""
    order: str = "+created_at"
    per_page: int = 100
    include_system_metrics: bool = True
    include_console: bool = True
    include_files: bool = True
    include_artifacts: bool = True
    include_reports: bool = True
    history_page_rows: int = 1000
    history_exports: bool = True
    files_per_page: int = 200
    max_in_flight: int = 8
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")) or not urlsplit(self.base_url).hostname:
            raise ValueError(f"base_url {self.base_url!r} must be http(s)://host[:port]")
        for selector in self.namespaces:
            entity, slash, project = selector.partition("/")
            if not slash or not entity or not project or "/" in project:
                raise ValueError(f"namespaces: {selector!r} is not \"entity/project\" (globs allowed: \"team/*\")")
        if self.filters.strip():
            try:
                parsed = json.loads(self.filters)
            except ValueError as exc:
                raise ValueError(f"filters is not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("filters must be a JSON object, e.g. '{\"state\": \"finished\"}'")
        if self.per_page < 1 or self.history_page_rows < 1 or self.files_per_page < 1:
            raise ValueError("per_page, history_page_rows and files_per_page must be at least 1")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")

    @property
    def filters_variable(self) -> str:
        """The ``filters`` JSONString as the public API sends it: ``json.dumps(filters or {})``."""
        return json.dumps(json.loads(self.filters) if self.filters.strip() else {})
