"""Everything the fake W&B server stores, in memory (blobs spill to a temp directory).

Why: tests inspect exactly what the SDK or runferry wrote (history lines, summary, files,
artifacts), so storage is plain dataclasses behind one lock, readable from the test thread
while the server's event loop thread writes.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def node_id(kind: str, *parts: str) -> str:
    """W&B-style opaque ids: base64 of ``Kind:v1:part:part``."""
    return base64.b64encode(":".join([kind, "v1", *parts]).encode()).decode()


def iso(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


@dataclass
class Blob:
    """One stored object (run file, artifact file, manifest, multipart result)."""

    key: str
    path: Path
    size: int
    b64md5: str
    hexmd5: str
    etag: str

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


@dataclass
class RunFile:
    name: str
    blob_key: str | None = None
    uploaded: bool = False
    updated_at: dt.datetime = field(default_factory=utcnow)


@dataclass
class Run:
    entity: str
    project: str
    name: str
    storage_id: str
    seq: int
    created_at: dt.datetime
    heartbeat_at: dt.datetime
    display_name: str | None = None
    group: str | None = None
    job_type: str | None = None
    notes: str | None = None
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # backend form {"k": {"value": v}}
    summary: dict[str, Any] = field(default_factory=dict)
    state: str = "running"
    exitcode: int | None = None
    commit: str | None = None
    host: str | None = None
    program: str | None = None
    repo: str | None = None
    sweep: str | None = None
    history: list[str | None] = field(default_factory=list)
    history_steps: list[int | None] = field(default_factory=list)  # ``_step`` of each line (index)
    parquet_exports: list[str] = field(default_factory=list)  # blob keys of history exports
    exported_lines: int = 0  # history lines covered by ``parquet_exports``
    history_version: int = 0  # bumped on every history write (cache key for derived data)
    derived: dict[str, tuple[int, Any]] = field(default_factory=dict, repr=False)
    events: list[str | None] = field(default_factory=list)
    logs: list[str | None] = field(default_factory=list)
    files: dict[str, RunFile] = field(default_factory=dict)
    output_artifacts: list[str] = field(default_factory=list)
    input_artifacts: list[str] = field(default_factory=list)
    preempting: bool = False

    def write_history(self, offset: int, content: list[str]) -> None:
        """Lines at ``offset`` (re-sent windows overwrite), keeping the step index in sync."""
        write_lines(self.history, offset, content)
        write_lines(self.history_steps, offset, [step_of(line) for line in content])
        self.history_version += 1

    def cached(self, name: str, compute) -> Any:
        """``compute(self)`` memoised until the history changes (e.g. ``historyKeys``)."""
        hit = self.derived.get(name)
        if hit is not None and hit[0] == self.history_version:
            return hit[1]
        value = compute(self)
        self.derived[name] = (self.history_version, value)
        return value

    def history_window(self, min_step: int | None, max_step: int | None, inclusive: bool = False) -> list[str]:
        """Lines whose ``_step`` is in [min_step, max_step) (or ``]`` when ``inclusive``)."""
        out = []
        for line, step in zip(self.history, self.history_steps):
            if line is None:
                continue
            step = 0 if step is None else step
            if min_step is not None and step < min_step:
                continue
            if max_step is not None and (step > max_step if inclusive else step >= max_step):
                continue
            out.append(line)
        return out

    def history_rows(self) -> Iterator[dict[str, Any]]:
        """Rows in line order (decoded lazily; gaps from sparse offsets are skipped)."""
        for line in self.history:
            if line is not None:
                yield json.loads(line)

    def config_values(self) -> dict[str, Any]:
        return {
            k: (v.get("value") if isinstance(v, dict) and "value" in v else v)
            for k, v in self.config.items()
        }


def write_lines(lines: list, offset: int, content: list) -> None:
    """Place ``content`` at line ``offset``; gaps (offset past the end) become None."""
    if offset > len(lines):
        lines.extend([None] * (offset - len(lines)))
    end = offset + len(content)
    lines[offset:end] = content


_STEP = re.compile(r'"_step"\s*:\s*(-?\d+)(?=\s*[,}])')


def step_of(line: str) -> int | None:
    """``_step`` of a history line; a regex first (ingest speed), full JSON decode otherwise."""
    found = _STEP.search(line)
    if found and line.count('"_step"') == 1:
        return int(found.group(1))
    try:
        step = json.loads(line).get("_step")
    except (ValueError, AttributeError):
        return None
    return int(step) if isinstance(step, (int, float)) else None


@dataclass
class ArtifactFile:
    path: str
    digest: str  # base64 md5 from the manifest
    blob_key: str | None
    birth_artifact_id: str
    size: int | None = None


@dataclass
class Artifact:
    id: str
    entity: str
    project: str
    type: str
    collection: str
    version_index: int | None
    digest: str
    description: str | None
    metadata: str | None
    state: str = "PENDING"
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    created_at: dt.datetime = field(default_factory=utcnow)
    run_name: str | None = None
    client_id: str | None = None
    sequence_client_id: str | None = None
    manifest_blob_key: str | None = None
    manifest_id: str | None = None
    files: dict[str, ArtifactFile] = field(default_factory=dict)  # keyed by file name (path)
    used_by: list[tuple[str, str, str]] = field(default_factory=list)
    history_step: int | None = None
    ttl_duration_seconds: int | None = None

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files.values())


@dataclass
class MultipartUpload:
    upload_id: str
    blob_key: str
    parts: dict[int, Blob] = field(default_factory=dict)


@dataclass
class View:
    id: str
    entity: str
    project: str
    name: str
    display_name: str | None
    description: str | None
    type: str
    spec: str
    created_at: dt.datetime = field(default_factory=utcnow)
    updated_at: dt.datetime = field(default_factory=utcnow)


class ServerState:
    """All stored data plus the lock that guards it. Read it freely from tests."""

    def __init__(self, blob_dir: Path | None = None, clock: Callable[[], dt.datetime] = utcnow):
        self.lock = threading.RLock()
        self.clock = clock
        self._own_tmp = None
        if blob_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="fake-wandb-blobs-")
            blob_dir = Path(self._own_tmp.name)
        self.blob_dir = blob_dir
        self.runs: dict[tuple[str, str, str], Run] = {}
        self.runs_by_id: dict[str, Run] = {}  # storage id -> run
        self.blobs: dict[str, Blob] = {}
        self.artifacts: dict[str, Artifact] = {}
        self.collections: dict[tuple[str, str, str], list[str]] = {}  # -> artifact ids in order
        self.collection_types: dict[tuple[str, str, str], str] = {}
        self.multipart: dict[str, MultipartUpload] = {}
        self.views: dict[str, View] = {}
        self.projects: set[tuple[str, str]] = set()
        self._seq = itertools.count(1)
        self.export_history_on_finish = False  # parquet-export a run's history when it completes
        self.request_log: list[tuple[str, str]] = []  # (kind, name) e.g. ("graphql", "UpsertBucket")
        self.documents: dict[str, str] = {}  # last GraphQL document per operation name (debugging)
        self.last_variables: dict[str, dict] = {}  # last variables per operation name (debugging)
        self.unknown_operations: list[str] = []  # gaps the SDK hit; tests assert this stays empty

    def close(self) -> None:
        if self._own_tmp is not None:
            self._own_tmp.cleanup()

    def next_seq(self) -> int:
        return next(self._seq)

    def run(self, entity: str, project: str, name: str) -> Run | None:
        with self.lock:
            return self.runs.get((entity, project, name))

    def runs_in(self, entity: str, project: str) -> list[Run]:
        with self.lock:
            return sorted(
                (r for (e, p, _), r in self.runs.items() if e == entity and p == project),
                key=lambda r: r.seq,
            )

    def blob_path(self, key: str) -> Path:
        safe = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
        return self.blob_dir / safe[:200]

    def put_blob(self, blob: Blob) -> None:
        with self.lock:
            self.blobs[blob.key] = blob

    def blob(self, key: str) -> Blob | None:
        with self.lock:
            return self.blobs.get(key)

    def artifacts_of_collection(self, entity: str, project: str, name: str) -> list[Artifact]:
        with self.lock:
            return [self.artifacts[a] for a in self.collections.get((entity, project, name), [])]
