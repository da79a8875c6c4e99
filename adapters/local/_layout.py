"""Where things live in a local export directory, and how a run's metadata becomes run.json.

Layout (all names below ``<path>``)::

    runs.parquet, runs.csv                       one row per run (rebuilt by ``finalize``)
    runs/<entity>/<project>/<run_id>/
        run.json                                 every RunRecord field, exact (NaN, ±inf, -0.0)
        history.parquet                          long layout (HISTORY_SCHEMA), one row per point
                                                 (while a run is written: its first chunk)
        history.parts/part-<offset:012d>.parquet durable later chunks not merged yet
        files/<path>                             run files, folder structure kept
        console/<path>                           the run's console log (FileRef role "console")
        artifacts/<name>/<version>/<path>        artifact members
        artifacts/<name>/<version>/artifact.json the ArtifactRef fields

Directory names are sanitised deterministically and injectively (percent-encoding), so two
different names never share a directory and nothing a source says can escape the export.
run.json uses the stdlib ``json`` module with ``allow_nan``: orjson would turn NaN into null.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import FatalError
from core.model import CONSOLE_LOG, ArtifactRef, Namespace, RunRecord, RunRef, RunState

FORMAT = "runferry.local/1"
RUN_JSON = "run.json"
HISTORY = "history.parquet"
PARTS = "history.parts"
FILES = "files"
CONSOLE = "console"
ARTIFACTS = "artifacts"
ARTIFACT_JSON = "artifact.json"
TMP_MARK = ".runferry-tmp-"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
EMPTY_NAME = "_"
MAX_NAME = 200

_RECORD_FIELDS = (
    "display_name", "user", "config", "summary", "tags", "labels", "notes", "group", "job_type",
    "git_commit", "program", "host", "parent_id", "inputs", "system", "history_points", "file_bytes",
    "start_time", "end_time", "source_system", "metric_keys", "source_uri", "source_namespace", "deleted",
)  # fmt: skip


def sanitise(name: str) -> str:
    """A directory name for ``name``: safe characters kept, others %XX-encoded (UTF-8).

    Injective: the empty name is ``_`` and a literal ``_`` becomes ``%5F``; a leading dot is
    encoded so no name is hidden or special (``.``, ``..``). Names longer than ``MAX_NAME``
    once encoded keep a prefix and a SHA-256 digest of the full name.
    """
    if name == "":
        return EMPTY_NAME
    out = []
    for i, ch in enumerate(name):
        if ch in _SAFE and not (i == 0 and ch == ".") and not (name == EMPTY_NAME):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    encoded = "".join(out)
    if len(encoded) > MAX_NAME:
        # file systems cap names at 255 bytes: keep a readable prefix plus a digest of the whole
        # name; "~" never appears in an encoded name (it would be %7E), so no clash with one
        encoded = f"{encoded[:MAX_NAME - 33]}~{hashlib.sha256(name.encode()).hexdigest()[:32]}"
    return encoded


def run_rel_dir(namespace: Namespace, run_id: str) -> str:
    return "/".join(("runs", sanitise(namespace.entity), sanitise(namespace.project), sanitise(run_id)))


def safe_relative(path: str) -> PurePosixPath:
    """``path`` as a relative path that stays inside its directory, or ``FatalError``."""
    if not path or "\x00" in path or "\\" in path:
        raise FatalError(f"unsafe file path {path!r}: empty, NUL or backslash")
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in path.split("/")):
        raise FatalError(f"unsafe file path {path!r}: must be relative without '.', '..' or empty parts")
    return pure


def file_target(run_dir: Path, path: str, artifact: ArtifactRef | None, role: str | None = None) -> Path:
    """Where a run file, console log or artifact member is stored."""
    relative = safe_relative(path)
    if role is not None:
        if role != CONSOLE_LOG or artifact is not None:
            raise FatalError(f"file {path!r}: unknown role {role!r} (or a role on an artifact member)")
        return run_dir / CONSOLE / relative
    if artifact is None:
        return run_dir / FILES / relative
    if str(relative) == ARTIFACT_JSON:
        raise FatalError(f"artifact {artifact.name}: a member named {ARTIFACT_JSON!r} clashes with the metadata file")
    return artifact_dir(run_dir, artifact) / relative


def artifact_dir(run_dir: Path, artifact: ArtifactRef) -> Path:
    return run_dir / ARTIFACTS / sanitise(artifact.name) / sanitise(artifact.version or "v0")


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(4)}")


def write_atomic(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` all or nothing (tmp + rename). Blocking: call off the loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_if_changed(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """``write_atomic`` unless ``path`` already holds exactly ``data`` (shared metadata files)."""
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    write_atomic(path, data, fsync=fsync)


def dumps(value: Any) -> bytes:
    """JSON that keeps NaN / ±inf / -0.0 (stdlib ``json`` with ``allow_nan``)."""
    # one line: ``indent`` would switch json to its pure-Python encoder (several times slower)
    return json.dumps(value, allow_nan=True, ensure_ascii=False, default=str).encode("utf-8")


def record_to_json(record: RunRecord) -> dict[str, Any]:
    ref = record.ref
    doc: dict[str, Any] = {
        "format": FORMAT,
        "id": ref.id,
        "entity": ref.namespace.entity,
        "project": ref.namespace.project,
        "name": ref.name,
        "source_extra": [[k, v] for k, v in ref.extra if not isinstance(v, bytes)],  # not a page's raw JSON
        "state": record.state.value,
    }
    for name in _RECORD_FIELDS:
        doc[name] = getattr(record, name)
    return doc


def record_from_json(doc: dict[str, Any], rel_dir: str) -> RunRecord:
    """The RunRecord stored in run.json; ``ref.extra`` holds this export's ``local_dir`` and
    the source's ``run_id`` hint when it had one (``RunRef.run_id``)."""
    if doc.get("format") != FORMAT:
        raise FatalError(f"{rel_dir}/{RUN_JSON}: unknown format {doc.get('format')!r}")
    extra: tuple[tuple[str, Any], ...] = (("local_dir", rel_dir),)
    extra += tuple(("run_id", v) for k, v in doc.get("source_extra") or () if k == "run_id")
    ref = RunRef(
        id=doc["id"],
        namespace=Namespace(doc["entity"], doc["project"]),
        name=doc.get("name"),
        extra=extra,
    )
    fields: dict[str, Any] = {name: doc.get(name) for name in _RECORD_FIELDS}
    for name, empty in (("config", {}), ("summary", {}), ("tags", {}), ("labels", []), ("inputs", []), ("system", {}),
                        ("deleted", False)):
        if fields[name] is None:
            fields[name] = empty
    return RunRecord(ref=ref, state=RunState(doc["state"]), **fields)


def artifact_to_json(artifact: ArtifactRef) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "type": artifact.type,
        "version": artifact.version,
        "aliases": list(artifact.aliases),
        "description": artifact.description,
        "metadata": [[k, v] for k, v in artifact.metadata],
        "source_project": artifact.source_project,
        "digest": artifact.digest,
    }


def artifact_from_json(doc: dict[str, Any]) -> ArtifactRef:
    return ArtifactRef(
        name=doc["name"],
        type=doc.get("type", "dataset"),
        version=doc.get("version"),
        aliases=tuple(doc.get("aliases") or ()),
        description=doc.get("description"),
        metadata=tuple((k, _freeze(v)) for k, v in doc.get("metadata") or ()),
        source_project=doc.get("source_project"),
        digest=doc.get("digest"),
    )


def _freeze(value: Any) -> Any:
    """JSON lists back to tuples, so metadata stays hashable like the frozen ArtifactRef."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
