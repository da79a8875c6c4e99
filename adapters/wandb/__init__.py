"""W&B destination (``[destination] type = "wandb"``) and source (``[source] type = "wandb"``).

Source (read-only; modules ``_source_config``, ``_read_ops`` (its GraphQL queries),
``_runs_read`` (namespaces, ``Runs`` paging, RunRecord mapping), ``_history_read`` (full
history and system metrics as points), ``_page_points`` (a page of rows -> long points, a key
at a time), ``_history_exports`` (history the server exported to parquet), ``_files_read``
(run files, console log),
``_source``): ``RunRef.id`` = ``entity/project/run`` with hint ``run_id`` = the bare run id;
``RunRecord``: ``source_system = "wandb"``, ``config`` unwrapped with ``_wandb`` kept
(``wandb_version`` dropped), ``summary`` = the stored summary as is, ``labels`` = tags,
``start_time`` = ``createdAt``, ``end_time`` = start + summary ``_wandb.runtime`` (else
``heartbeatAt``), host/program from ``wandb-metadata.json``, ``system`` = source, uri, entity,
project, run_id, storage_id, line counts, last_step. History point rules: ``_history_read``.

Public names: ``WandbDestination`` (the adapter) and ``WandbDestinationConfig`` (its ``Config``;
the keys are documented on the class). Modules, one purpose each:

- ``_mapping``   RunRecord -> W&B fields (pure): deterministic run id (the source id when W&B
  accepts it, else ``blake2b(source URI, id)``), project/group templates, config in the
  ``{"key": {"value": v}}`` wire form (nested values kept; ``source_tags`` = all key/value tags,
  ``source_labels`` when a label is longer than W&B's 64 characters, ``runferry_source`` =
  source system/URI/run id/namespace, ``_wandb.start_time`` in ms), tags (labels and
  ``key:value`` of non-``mlflow.`` tags that fit 64 characters), summary, exit state.
- ``_lines``     history points -> ``wandb-history.jsonl`` lines (pure, vectorised; rules below).
- ``_streams``   system metrics (keys under ``system_metrics_prefix``) split off to
  ``wandb-events.jsonl`` (renamed ``system.<rest>``), and the one source cursor over both streams.
- ``_console``   a console log (a file with role ``console``) -> ``output.log`` lines.
- ``_filestream`` one run's file_stream: explicit offsets, request sizing, per-run pacing.
- ``_artifacts`` the artifact protocol (manifest + digest as the SDK computes them, CreateArtifact,
  CreateArtifactManifest, CreateArtifactFiles, PUTs with Content-MD5, multipart with per-part
  Content-MD5 + CompleteMultipartUploadArtifact, manifest upload, CommitArtifact, dedup).
- ``_spool`` / ``_staging`` file bytes staged on disk (retryable uploads; artifact members
  survive a crash until their artifact is committed).
- ``_gql``       the GraphQL documents and the call helper (GraphQL errors -> engine errors).
- ``_writer`` / ``_destination`` the RunWriter and the Destination.

History rules (also in ``_lines``):

- one line per step: ``_step``, ``_timestamp`` (the original time, float seconds, bit-exact
  shortest text), ``_runtime`` (``_timestamp`` - run start), then the values; NaN, Infinity,
  -Infinity written as the SDK writes them; integral floats keep ``.0``; -0.0 keeps its sign;
- **several values of one key at one step** (MLflow allows it): the k-th value goes to the k-th
  line of that step, so a step becomes several lines with the same ``_step``; nothing is
  dropped; each extra value is counted as a ``collision`` event (and in the run's
  ``wandb_run_finished`` event);
- a line's ``_timestamp`` is the latest timestamp of its points; points logged at another time
  within the same step are counted as ``timestamp_merged``;
- step-major sources stream (a step is complete when a larger step arrives); key-major sources
  (MLflow) are detected and buffered compactly (~28 bytes per point) until the end of the run,
  then released sorted by step in windows; their checkpoint advances only when the whole run is
  durable, so a resumed migration rewrites that run's lines at the same offsets.

System metrics: points whose key starts with ``system_metrics_prefix`` (default ``system/``,
MLflow's system-metrics names) become ``wandb-events.jsonl`` lines by the same rules as history
lines (one line per source step, ``_timestamp`` / ``_runtime``), with ``"_wandb": true`` instead
of ``_step`` and keys renamed ``system.<rest>``; they are left out of the history and the summary.

Console log: streamed as ``output.log`` lines from offset 0 (verbatim, no invented timestamps),
then uploaded as the run file ``output.log`` (exact bytes), as the SDK does at the end of a run.
Re-sending it after a crash overwrites the same offsets.

Durability and resume: lines are written at explicit offsets, one request at a time per run;
``checkpoint()`` counts only points whose lines the server acknowledged, with the next offsets in
``state["lines"]`` / ``state["events_lines"]`` (``_streams`` keeps one source cursor exact over
both streams); a resumed writer continues at that offset, and because lines are a pure
function of their steps' points, anything written past the checkpoint is overwritten with the
same lines. The starting offset comes from the ledger checkpoint (``UpsertBucket`` returns the
server's ``historyLineCount``: fewer lines than the ledger says is an error, more lines are
overwritten and reported as ``history_overwrite``).

Rate limits: each run paces its own file_stream requests (``filestream_rate``, default 2/s, the
documented per-run limit), doubles its interval or honours ``Retry-After`` on 429 and drifts
back when accepted; 5xx, resets and timeouts are retried (10 attempts). GraphQL and storage go
through the shared ``HttpClient`` and the engine's per-endpoint limiters; UpsertBucket calls that
may create a run go through one limiter per destination project (``_gql.run_creation_key``), as
W&B limits run creation per project (429 + ``Retry-After``): one project's refusals pause neither
another project's creations nor any other call. The limit is known (``run_creation_rate``,
default 80/s, declared to the registry: ``_gql.run_creation_pacing``), so creations are paced
just under it from the first run instead of finding it by a refusal and its pause.

Final state (last file_stream request, with the summary): finished -> exit 0; failed -> exit 1;
killed -> exit 255 then ``state: "killed"``; crashed -> exit 1 then ``state: "crashed"``;
running / scheduled -> left running. Source files: run files (``CreateRunFiles`` + PUT +
``MarkRunFilesUploaded``) or artifacts by ``artifact_layout``.
"""

from ._config import WandbDestinationConfig
from ._destination import WandbDestination
from ._source import WandbSource
from ._source_config import WandbSourceConfig

__all__ = ["WandbDestination", "WandbDestinationConfig", "WandbSource", "WandbSourceConfig"]
