"""The data every adapter speaks: run identities, run metadata, columnar history chunks, files.

Adapters translate their system's wire format into these types and back; the pipeline moves
only these. History is columnar (one Arrow record batch per chunk, "long" layout: one row per
metric point) so that millions of points move without one Python object per point.

History layout (``HISTORY_SCHEMA``), one row per point, in the source's deterministic order:

- ``key``        metric name (string)
- ``step``       int64 step
- ``timestamp``  float64 seconds since the epoch, exactly as the source stored it (MLflow's
                 integer milliseconds divide by 1000 and round-trip exactly; W&B's float
                 ``_timestamp`` is kept bit for bit)
- ``value``      float64 value (NaN, +inf, -inf and -0.0 kept); null when the value is not a number
- ``value_json`` the value as JSON text when it is not a float (strings, dicts, lists, bools,
                 null, media refs), otherwise null. A point may carry both: an integer logged
                 to W&B has ``value`` = the float and ``value_json`` = its exact text (``"3"``,
                 ``"12345678901234567890"``), so JSON destinations write it back unchanged while
                 numeric destinations (MLflow, Parquet's ``value``) read the float. Readers that
                 write JSON prefer ``value_json`` when it is set.

A run's history is an ordered sequence of points; ``HistoryChunk.offset`` is the index of the
chunk's first point in that sequence. Resume cursors count points in this order, so every source
must yield the same order every time it is asked.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("timestamp", pa.float64(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
        pa.field("value_json", pa.string(), nullable=True),
    ]
)


class RunState(str, enum.Enum):
    """Lifecycle of a run, the common ground of MLflow statuses and W&B states."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    CRASHED = "crashed"
    SCHEDULED = "scheduled"


@dataclass(frozen=True, slots=True)
class Namespace:
    """Where a run lives: W&B entity/project, MLflow (workspace)/experiment name."""

    entity: str
    project: str

    def __str__(self) -> str:
        return f"{self.entity}/{self.project}" if self.entity else self.project


@dataclass(frozen=True, slots=True)
class RunRef:
    """A source run's identity, cheap to page through and to put on a queue.

    ``id`` is unique within the source; ``extra`` carries adapter-private hints (for example the
    MLflow experiment id or artifact URI) so ``get_run`` need not look them up again.
    """

    id: str
    namespace: Namespace
    name: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    def hint(self, key: str, default: Any = None) -> Any:
        for k, v in self.extra:
            if k == key:
                return v
        return default

    @property
    def run_id(self) -> str:
        """The run's own id in its system. ``id`` must be unique within the whole source, so a
        source whose run ids are unique only per namespace (W&B: per entity/project) qualifies
        ``id`` (``"entity/project/run"``) and gives the bare id as the ``run_id`` hint;
        destinations that keep source ids (W&B ``run_id = "source"``) use this."""
        value = self.hint("run_id")
        return str(value) if value else self.id


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """A versioned group of files (a W&B artifact; an MLflow artifacts sub-tree)."""

    name: str
    type: str = "dataset"
    version: str | None = None
    aliases: tuple[str, ...] = ()
    description: str | None = None
    metadata: tuple[tuple[str, Any], ...] = ()
    source_project: str | None = None
    """``entity/project`` of the artifact's collection at the source, when it is a W&B
    artifact (a run may log into, or use from, another project); None for file groupings."""
    digest: str | None = None
    """The source's manifest digest (W&B: hex MD5 over the manifest entries), when known:
    copies are deduplicated and validated by it."""


CONSOLE_LOG = "console"
"""``FileRef.role`` of a run's console log (see ``FileRef``)."""


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file of a run: a run file, or a member of an artifact (``artifact`` is set).

    ``path`` is relative, POSIX-style, and unique within the run (or within the artifact).
    ``size`` and ``md5`` are known up front when the source can tell cheaply; a destination that
    needs them before the bytes (multipart planning, W&B manifests) computes them while streaming
    when they are missing.

    ``role`` marks a file that is more than bytes to the systems that know it (None for plain
    files). ``CONSOLE_LOG`` (``"console"``): the run's captured console output (stdout/stderr as
    text lines, UTF-8); a run has at most one. It travels like any file (streamed in pieces,
    ledger entry per file), so the pipeline never asks what a file is: a destination that knows
    the role gives it its native place (W&B: ``output.log``, streamed line by line), every other
    destination stores it as a plain file at ``path``.
    """

    path: str
    size: int | None = None
    md5: str | None = None  # hex digest
    artifact: ArtifactRef | None = None
    role: str | None = None

    @property
    def key(self) -> str:
        """Identity of the file within its run, used by ledger cursors."""
        if self.role is not None:
            return f"{self.role}:{self.path}"
        if self.artifact is None:
            return self.path
        version = self.artifact.version or ""
        return f"artifact:{self.artifact.name}:{version}/{self.path}"


@dataclass(slots=True)
class RunRecord:
    """Everything about a run except its history points and file bytes.

    Times are float seconds since the epoch (None when unknown). ``config`` holds MLflow params
    (as the strings MLflow stores) or W&B config values; ``tags`` holds key/value tags (MLflow);
    ``labels`` holds W&B-style string tags. ``summary`` is the latest value per key as the source
    reports it. ``system`` records where the run came from (source system, URI, run id).

    ``source_system`` names the kind of source (``"mlflow"``, ``"wandb"``, ``"synthetic"``,
    ``"local"``) so destinations can choose a mapping without reading ``system`` keys: what one
    adapter needs to know about another's runs is a typed field (``source_system``,
    ``source_uri``, ``source_namespace``, ``deleted``, ``metric_keys``); ``system`` is the
    source's own provenance record, copied as it is and read by nobody else.
    W&B sources: ``config`` holds the unwrapped config values (``{"lr": 0.1}``), with W&B's
    internal ``_wandb`` value (metric definitions ``m``, telemetry ``t``, ``start_time``...)
    under the key ``"_wandb"``; ``summary`` is the run's whole summary as stored (values set
    directly included, ``_wandb``/``_runtime``/``_step``/``_timestamp`` kept); ``start_time``
    is the run's creation time. ``inputs`` lists artifacts the run used, each
    ``{"artifact": {"project": "entity/project", "name": collection, "version": "vN",
    "type": type, "digest": hex}}``; ``metric_keys`` lists the history keys when cheap to know.
    """

    ref: RunRef
    display_name: str | None = None
    state: RunState = RunState.FINISHED
    start_time: float | None = None
    end_time: float | None = None
    user: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None
    git_commit: str | None = None
    program: str | None = None
    host: str | None = None
    parent_id: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    system: dict[str, Any] = field(default_factory=dict)
    source_system: str | None = None
    metric_keys: list[str] | None = None
    source_uri: str | None = None
    """Where the source system lives (MLflow tracking URI, W&B base URL) when it has one; the
    W&B destination derives stable run ids from it when the engine gave none."""
    source_namespace: str | None = None
    """The run's namespace at the source, set by the engine when ``[[remap]]`` moved it (so
    destinations keep identities stable across remaps)."""
    deleted: bool = False
    """The source holds the run as deleted (MLflow ``lifecycle_stage``); a destination that can
    keeps it deleted."""
    revision: str | None = None
    """Changes whenever the source run changes (new points, summary, config, files), when the
    source can tell cheaply (W&B: line counts, summary, config, heartbeat). An incremental
    migration resumes a finished run whose revision moved, to carry the new data over."""
    # Sizes as far as the source knows them cheaply (plan and progress); None when unknown.
    history_points: int | None = None
    file_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryChunk:
    """A slice of a run's history: ``batch`` follows ``HISTORY_SCHEMA``; ``offset`` is the
    index of its first point in the run's ordered history."""

    batch: pa.RecordBatch
    offset: int

    def __len__(self) -> int:
        return int(self.batch.num_rows)

    @property
    def end(self) -> int:
        return self.offset + int(self.batch.num_rows)


def history_batch(
    keys: Any, steps: Any, timestamps: Any, values: Any, value_json: Any = None
) -> pa.RecordBatch:
    """Build a history record batch from columns (sequences, numpy arrays or Arrow arrays)."""
    n = len(steps)
    if value_json is None:
        value_json = pa.nulls(n, pa.string())
    return pa.RecordBatch.from_arrays(
        [
            pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys,
            pa.array(steps, pa.int64()) if not isinstance(steps, pa.Array) else steps,
            pa.array(timestamps, pa.float64()) if not isinstance(timestamps, pa.Array) else timestamps,
            pa.array(values, pa.float64()) if not isinstance(values, pa.Array) else values,
            pa.array(value_json, pa.string()) if not isinstance(value_json, pa.Array) else value_json,
        ],
        schema=HISTORY_SCHEMA,
    )


def empty_history_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=HISTORY_SCHEMA)


def seconds_to_millis(ts: float) -> int:
    """Exact inverse of ``ms / 1000`` for MLflow's integer millisecond timestamps."""
    return int(round(ts * 1000.0))


def same_float(a: float | None, b: float | None) -> bool:
    """Bitwise-meaningful float equality: NaN equals NaN, -0.0 differs from 0.0."""
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
