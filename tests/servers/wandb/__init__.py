"""A W&B-compatible server for tests and benchmarks, held to the official ``wandb`` SDK.

It answers the GraphQL operations, ``file_stream`` and presigned object-storage URLs the
official SDK uses (the installed release's wandb-core, wandb==0.27.0's wandb-core, and
0.27.0's legacy Python SendManager that W&B's importers drive), on 127.0.0.1 only, from one
aiohttp app running on a background thread (so sync SDK code and async runferry code can
both use it). Everything is kept in memory (file and artifact bytes spill to a temp dir), or
in a SQLite file with ``sqlite_path=`` / ``--sqlite FILE`` (loaded at start, saved on ``save()``
and at close; bytes in ``<file>.blobs/``).

Start it
--------
From a test::

    from tests.servers.wandb import Faults, start_wandb_server

    with start_wandb_server(port=0, keys={"<40-char key>": ["entity", "team"]}) as server:
        server.base_url       # "http://127.0.0.1:<port>"
        server.api_key        # the first key of ``keys`` (default: DEFAULT_API_KEY)
        server.entity         # that key's default (first) entity
        server.sdk_env(dir)   # WANDB_* environment for an SDK subprocess (online, silent, ...)
        server.state          # ServerState: runs, history lines, files, artifacts (see _state.py)
        server.faults         # Faults: knobs below, changeable while it runs
        server.export_history(entity, project, run)   # parquet export (see History below)

``launch(...)`` returns the same handle without a context manager (call ``close()``).
``ServerState(clock=...)`` may be passed as ``state=`` to control created/heartbeat times.
From a shell: ``python -m tests.servers.wandb --port N [--key KEY=entity1,entity2]``
(``--filestream-rps-per-run``, ``--run-creation-rps-per-project`` and ``--storage-slowdown-rps`` set the limits).

Auth is HTTP Basic ``api:<key>``; a wrong or missing key gets 401 ``{"errors":[{"message":
"user is not logged in",...}]}``; an entity the key may not touch gets 403 with W&B's
``{"errors":[{"message":"permission denied","path":[field],"extensions":{"code":
"PERMISSION_ERROR"}}],"data":{field:null}}``. Storage URLs carry a token instead (no auth).

Faults and limits (``server.faults``; ``reset()`` turns all off)
----------------------------------------------------------------
* ``filestream_rps_per_run`` (W&B documents 2): excess file_stream POSTs -> 429 + Retry-After;
  while set, file_stream answers carry ``RateLimit-Remaining`` (0..1000) / ``RateLimit-Reset``.
* ``run_creation_rps_per_project``: UpsertBucket that would create a run -> 429 + Retry-After.
* ``storage_slowdown_rps``: storage requests above the rate -> 503 S3 ``SlowDown`` XML.
* ``latency_s``, ``error_rate``/``error_status``, ``drop_rate`` on ``targets``
  (``graphql``, ``filestream``, ``files``, ``storage``), seeded by ``seed``.
* ``script(target, [500, 429, "drop", ...])``: the next requests fail exactly so.
* ``clock``: rate-limit clock (inject a fake one for deterministic tests);
  ``injected`` counts what was injected.

Implemented
-----------
GraphQL (``POST /graphql``, parsed with graphql-core; fragments, aliases, variables and
``@include/@skip`` honoured; fields the server does not know resolve to null, while an
unknown *top-level* operation field is a 400 naming the field and operation, also recorded
in ``state.unknown_operations``):

* viewer, serverInfo (features LARGE_FILENAMES, MARK_RUN_FILES_UPLOADED,
  TOTAL_COUNT_IN_FILE_CONNECTION, EXPAND_DEFINED_METRIC_GLOBS), entity, ``__type`` (empty).
* UpsertBucket (create/update by name or storage id; config/summary/tags/notes/...),
  RunResumeStatus (``model``/``bucket`` aliases; line counts and tails), Run, Runs with cursor
  paging, ``runCount``, MongoDB-style ``filters`` ($and $or $nor $eq $ne $gt $gte $lt $lte $in
  $nin $regex $exists $not over name, displayName, state, tags, group, jobType, createdAt,
  heartbeatAt, ``config.K[.value]``, ``summary_metrics.K``) and ``order`` (+/- created_at,
  heartbeat_at, name, config and summary keys; ties by creation order).
* History: ``history(minStep, maxStep[exclusive], samples)``, ``sampledHistory(specs)``
  (spec maxStep is *inclusive*, matching what wandb-core sends), ``historyKeys``
  (``lastStep``), ``events(samples)``, ``parquetHistory(liveKeys)``: signed URLs of the run's
  parquet exports (made by ``server.export_history(...)``, or for every run on completion when
  ``state.export_history_on_finish = True``) plus ``liveData`` for rows not exported; without
  an export every row is live and wandb-core reads it through HistoryPage/SampledHistoryPage.
  ``history``/``sampledHistory`` always return all rows (older SDKs rely on it), so, as on
  W&B, export a run only once it is complete. Sampling keeps first and last rows.
* System metrics and console: ``events(samples)`` (``run.history(stream="system")``),
  ``systemMetrics`` (latest value of every ``system.*`` key of the events lines),
  ``logLines(first, after, last)`` (``run.console_logs()``: wandb-core's RunConsoleLogPage /
  RunConsoleLogTail) with ``number``, ``timestamp``, ``level``, ``label``, ``line`` parsed from
  the SDK's legacy text or structured JSON lines.
* Run files: CreateRunFiles, MarkRunFilesUploaded, RunFiles (names, pattern, paging),
  authenticated GET ``/files/{entity}/{project}/{run}/{path}`` and presigned storage URLs.
* Artifacts: ArtifactType, CreateArtifact (digest dedup -> COMMITTED), CreateArtifactManifest,
  UpdateArtifactManifest, CreateArtifactFiles (content-addressed; uploadUrl=null when the
  bytes exist; multipart URLs when ``uploadPartsInput`` is given),
  CompleteMultipartUploadArtifact (ETag check, Abort), CommitArtifact (manifest parsed,
  every entry must be uploaded with a matching MD5; versions and ``latest`` assigned),
  UseArtifact, ``artifact(id)``, ``project.artifact(name)``, artifactCollection /
  artifactCollectionMembership / artifactMembership(aliasName){files}, artifactTypes,
  run output/input artifacts, usedBy, createdBy, currentManifest, file directUrls,
  ClientIDMapping.
* Reports: upsertView, ProjectViews (``allViews``), ``view(id)``.
* ``POST /files/{entity}/{project}/{run}/file_stream``: history/events/output.log by line
  offset (re-sent windows overwrite), summary line replaces the summary, ``uploaded``,
  ``preempting``, ``complete`` + ``exitcode`` (0 -> finished, else failed); gzip bodies.
* Storage ``PUT/GET /storage/{key}``: Content-MD5 checked (400 BadDigest), ETag = hex MD5,
  multipart parts (``uploadId``/``partNumber``), Range downloads; bodies streamed to disk.

Not implemented (known gaps; keep this list honest)
---------------------------------------------------
* Parquet exports are one file per run with float64 columns for numbers and JSON text for
  anything else (W&B's exact export schema is not public); system-metrics sampling beyond
  returning ``wandb-events.jsonl`` lines; ``logLines`` for lines in neither SDK format (an
  import without per-line times) is our reconstruction: the whole line is the content, no
  timestamp, no level.
* Schema introspection (``__type`` returns empty field lists), sweeps, launch queues,
  registries/portfolios (LinkArtifact), artifact deletion, DeleteRun, tags/alias mutations,
  TTLs, reference (``ref``) artifact entries are stored but not resolved.
* Server-side metric glob expansion (the feature flag is advertised only so 0.27.0 does not
  warn), derived summaries; the 500 req/s and 120 MB/s per-project file_stream limits.
* The 401 body is our best reconstruction (the 403 body is the documented one).
* JSON-typed (not JSON-string) fields encode NaN/Infinity as strings; history lines keep
  the SDK's bare ``NaN``/``Infinity`` tokens.
"""

from ._faults import Faults
from ._server import DEFAULT_API_KEY, DEFAULT_KEYS, WandbServer, launch, start_wandb_server
from ._state import ServerState

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_KEYS",
    "Faults",
    "ServerState",
    "WandbServer",
    "launch",
    "start_wandb_server",
]
