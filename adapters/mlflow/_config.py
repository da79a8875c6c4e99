"""The ``[source]`` / ``[destination]`` tables of ``type = "mlflow"`` and how they find credentials.

Kept apart from the I/O code so the config loader (and the README) can read them without
touching the network. Secrets are read from the environment at ``__aenter__`` time only.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from adapters.mlflow._database import backend_store
from core.errors import ConfigError

# Server limits of runs/log-batch (mlflow/utils/validation.py); the 1 MB body cap is kept with
# a margin for the JSON envelope.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_BYTES = 900_000


@dataclass(frozen=True, kw_only=True)
class MlflowSourceConfig:
    """MLflow source (``[source] type = "mlflow"``).

    - ``tracking_uri``: ``http(s)://host[:port]`` of the tracking server, or ``databricks``
      (host and token from ``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN``, bearer auth).
    - ``experiments``: experiment names, ids or shell globs over names (default ``["*"]``).
    - ``filter``: MLflow search filter pushed down to ``runs/search``, e.g.
      ``"params.lr > '0.001' and attributes.status = 'FINISHED'"`` (default: none).
    - ``include_deleted``: also copy deleted experiments and runs (default false).
    - ``artifacts``: copy run artifacts (default true; ``[transfer] artifacts`` must be on too).
    - ``username_env`` / ``password_env``: environment variables holding the user and password
      of a server running MLflow's basic-auth app (default: none).
    - ``token_env``: environment variable holding a bearer token (default: none; for
      ``databricks`` it defaults to ``DATABRICKS_TOKEN``).
    - ``page_size``: runs per ``runs/search`` page (default 1000, at most 50,000; the first
      page holds at most 100, so reading runs starts while the rest are listed).
    - ``history_page_size``: points per ``metrics/get-history`` page (default 25,000, the
      Databricks cap). Servers older than 3.1.1 ignore paging and send the whole history.
    - ``bulk_history``: read a key's history of several runs in one request through the
      server's ``get-history-bulk`` endpoint (every point, not sampled; runs with 10,000 or
      more points of a key, and servers without the endpoint, use ``metrics/get-history``).
      The runs queued next (not done yet) ride along in a request's spare places, up to 50
      runs and 20,000 held points: on SQLite a request costs the server about as much for
      one run as for fifty (default true).
    - ``history_database``: the server's backend store, as given to ``mlflow server
      --backend-store-uri``: SQLite (``sqlite:////path/mlflow.db``) or PostgreSQL
      (``postgresql://user@host:5432/mlflow``, also ``postgresql+psycopg2://...`` and libpq's
      ``?host=/socket/dir``). Metric histories are read from it directly, read-only, in the
      same order as through the API (so resume cursors stay valid), many times faster and
      without loading the server; runs, params, tags and artifacts still come through the
      server. It must be this server's database (checked at start). A password is better
      left out of the URI and given through libpq's ``PGPASSWORD`` or ``~/.pgpass``; one in
      the URI is shown as ``***`` in messages. One connection per run being read
      (``runs_concurrency``); up to 16 stay open between reads (default: none).
    - ``key_concurrency``: metric keys of one run fetched at once (default 4); points are
      still yielded in order (keys sorted, the server's order within a key).
    - ``max_in_flight``: requests in flight to the tracking server at once (default 6). MLflow's
      SQL store holds up to two pooled database connections per request and pools 15 per
      worker process, so more concurrent requests can jam a one-worker server until they time
      out; raise it for servers with several workers.
    - ``timeout``: seconds to connect and seconds of silence while reading (default 120).
    - ``artifacts_direct_s3``: read runs whose artifact root is ``s3://...`` straight from the
      bucket, as MLflow's own client does (``MLFLOW_S3_ENDPOINT_URL`` and the usual AWS
      credential chain), under the adaptive S3 limiter (one streamed GET per file up to 256 MiB,
      resumed after a break; parallel ranged GETs above), instead of through the tracking server
      (default false).
    - ``s3_access_key_id_env`` / ``s3_secret_access_key_env`` / ``s3_session_token_env``:
      environment variables holding the keys for ``artifacts_direct_s3``, instead of the AWS
      chain (default: none).
<<<<<<< HEAD
    - ``s3_sse_customer_key_env``: a variable holding the base64 256-bit key of artifacts
      stored with SSE-C (customer-provided keys), sent with every read (default: none).
=======

    Runs without artifacts cost no request on a server that proxies artifacts
    (``mlflow-artifacts:/`` roots): the first run of an experiment that needs it lists the
    experiment's artifact root once, which names every run that has logged a file. A run that
    is absent from that listing, is FINISHED, FAILED or KILLED, and ended more than 5 minutes
    before the listing was taken (a margin for clock skew between the server and this machine)
    yields no files without being asked; every other run (active or recently ended ones, roots
    outside the experiment's, ``s3://`` roots read directly, Databricks) is listed on its own,
    as is every run of an experiment whose listing the server refuses. The one limit, as for
    any snapshot: files logged to an already-finished run after the listing are not seen.
>>>>>>> art1
    """

    tracking_uri: str
    experiments: list[str] = field(default_factory=lambda: ["*"])
    filter: str = ""
    include_deleted: bool = False
    artifacts: bool = True
    username_env: str = ""
    password_env: str = ""
    token_env: str = ""
    page_size: int = 1000
    history_page_size: int = 25_000
    bulk_history: bool = True
    history_database: str = field(default="", repr=False)  # a PostgreSQL URI may hold a password
    key_concurrency: int = 4
    max_in_flight: int = 6
    timeout: float = 120.0
    artifacts_direct_s3: bool = False
    s3_access_key_id_env: str = ""
    s3_secret_access_key_env: str = ""
    s3_session_token_env: str = ""
    s3_sse_customer_key_env: str = ""

    def __post_init__(self) -> None:
        check_tracking_uri(self.tracking_uri)
        check_s3_keys(self.s3_access_key_id_env, self.s3_secret_access_key_env)
        if not self.experiments:
            raise ValueError("experiments must name at least one experiment (or '*')")
        if not 1 <= self.page_size <= 50_000:
            raise ValueError("page_size must be between 1 and 50000")
        if not 1 <= self.history_page_size <= 25_000:
            raise ValueError("history_page_size must be between 1 and 25000")
        if self.key_concurrency < 1:
            raise ValueError("key_concurrency must be at least 1")
        if self.history_database:
            backend_store(self.history_database)
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")


@dataclass(frozen=True, kw_only=True)
class MlflowDestinationConfig:
    """MLflow destination (``[destination] type = "mlflow"``).

    - ``tracking_uri``: ``http(s)://host[:port]`` or ``databricks`` (as for the source).
    - ``experiment``: experiment name template, created when missing. ``{experiment}`` = the
      source experiment (MLflow) or project (W&B), ``{entity}`` = the source entity (W&B).
      Default ``{experiment}``.
    - ``username_env`` / ``password_env`` / ``token_env``: as for the source.
    - ``source_tag``: tag holding the source run's identity on every destination run; a
      re-run finds the run by it instead of creating a duplicate (default
      ``runferry.source_run_id``; ``runferry.source`` holds the source URI).
    - ``batch_concurrency``: ``log-batch`` requests in flight per run (default 4; use 1 for a
      file-store server, which keeps points in arrival order).
    - ``multipart_threshold``: artifact files at least this large try the proxy's multipart
      upload (``mpu/create``; only S3/GCS/Azure artifact stores offer it), default 100 MiB;
      ``part_size``: multipart part size (default 0 = the engine's ``part_bytes``).
    - Runs whose artifact root is ``s3://...`` (a server run with ``--default-artifact-root
      s3://...``, usually with ``--no-serve-artifacts``, or an experiment whose artifact
      location is in S3) get their files written straight to the bucket, as MLflow's own
      client writes them: endpoint from ``MLFLOW_S3_ENDPOINT_URL``, credentials from the usual
      AWS chain, ``MLFLOW_S3_UPLOAD_EXTRA_ARGS`` / ``MLFLOW_S3_EXPECTED_BUCKET_OWNER`` honoured;
      streamed under the adaptive per-prefix S3 limiter, one PUT up to ``part_size`` (or
      ``multipart_threshold`` if smaller), parallel multipart above it. Roots on other stores
      (``gs://``, ``wasbs://``, ``hdfs://``, a path on the server) fail the runs that have
      files, naming them; copy with ``[transfer] artifacts = false`` to move them without files.
    - ``s3_access_key_id_env`` / ``s3_secret_access_key_env`` / ``s3_session_token_env``:
      environment variables holding the keys for ``s3://`` roots, instead of the AWS chain
      (default: none).
    - ``s3_sse_customer_key_env``: a variable holding a base64 256-bit key: files written to
      ``s3://`` roots are encrypted with it (SSE-C), sent with every upload request (default:
      none).
    - ``restore_deleted``: ``false`` (default) deletes runs that were deleted at the source
      after copying them; ``true`` leaves them active.
    - ``max_in_flight``: requests in flight to the tracking server at once (default 6). MLflow's
      SQL store holds up to two pooled database connections per request and pools 15 per
      worker process, so more concurrent requests can jam a one-worker server until they time
      out; raise it for servers with several workers.
    - ``timeout``: seconds to connect and seconds of silence while reading (default 120).
    """

    tracking_uri: str
    experiment: str = "{experiment}"
    username_env: str = ""
    password_env: str = ""
    token_env: str = ""
    source_tag: str = "runferry.source_run_id"
    batch_concurrency: int = 4
    multipart_threshold: int = 100 * 1024 * 1024
    part_size: int = 0
    restore_deleted: bool = False
    max_in_flight: int = 6
    timeout: float = 120.0
    s3_access_key_id_env: str = ""
    s3_secret_access_key_env: str = ""
    s3_session_token_env: str = ""
    s3_sse_customer_key_env: str = ""

    def __post_init__(self) -> None:
        check_tracking_uri(self.tracking_uri)
        check_s3_keys(self.s3_access_key_id_env, self.s3_secret_access_key_env)
        if not self.experiment.strip():
            raise ValueError("experiment must not be empty")
        if not self.source_tag or len(self.source_tag) > 250:
            raise ValueError("source_tag must be 1..250 characters")
        if self.batch_concurrency < 1:
            raise ValueError("batch_concurrency must be at least 1")
        if self.multipart_threshold < 1 or self.part_size < 0:
            raise ValueError("multipart_threshold must be positive and part_size not negative")
        if self.part_size and not 5 * 1024 * 1024 <= self.part_size <= 5 * 1024**3:
            raise ValueError("part_size must be between 5 MiB and 5 GiB (S3's part limits), or 0")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")


def check_s3_keys(access_key_id_env: str, secret_access_key_env: str) -> None:
    if bool(access_key_id_env) != bool(secret_access_key_env):
        raise ValueError("s3_access_key_id_env and s3_secret_access_key_env go together")


def check_tracking_uri(uri: str) -> None:
    if uri != "databricks" and (not uri.startswith(("http://", "https://")) or not urlsplit(uri).hostname):
        raise ValueError(f"tracking_uri {uri!r} must be http(s)://host[:port] or 'databricks'")


@dataclass(frozen=True)
class Connection:
    """Where to send requests and how to authenticate; never logged (holds secrets)."""

    base_url: str
    headers: dict[str, str]
    auth: aiohttp.BasicAuth | None
    credential_names: tuple[str, ...] = ()
    """The environment variables the credentials came from (names only: safe to show)."""

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"Connection({self.base_url!r})"


def resolve_connection(
    tracking_uri: str, *, username_env: str, password_env: str, token_env: str, where: str
) -> Connection:
    """Turn a tracking URI and the names of secret variables into a ``Connection``."""
    headers: dict[str, str] = {}
    names: list[str] = []
    base_url = tracking_uri.rstrip("/")
    if tracking_uri == "databricks":
        host = os.environ.get("DATABRICKS_HOST", "").strip().rstrip("/")
        if not host:
            raise ConfigError(f"{where}: tracking_uri 'databricks' needs DATABRICKS_HOST in the environment")
        base_url = host if host.startswith(("http://", "https://")) else f"https://{host}"
        token_env = token_env or "DATABRICKS_TOKEN"
    if token_env:
        token = os.environ.get(token_env, "")
        if not token:
            raise ConfigError(f"{where}: environment variable {token_env} (token_env) is not set")
        headers["Authorization"] = f"Bearer {token}"
        names.append(token_env)
    auth = None
    if username_env or password_env:
        if not (username_env and password_env):
            raise ConfigError(f"{where}: set both username_env and password_env for basic auth")
        user, password = os.environ.get(username_env), os.environ.get(password_env)
        if user is None or password is None:
            missing = username_env if user is None else password_env
            raise ConfigError(f"{where}: environment variable {missing} is not set")
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {credentials}"
        names += [username_env, password_env]
    return Connection(base_url, headers, auth, tuple(names))
