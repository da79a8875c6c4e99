"""GraphQL resolvers for viewer/server info, projects, runs, history and run files.

Why: these are the operations ``wandb.init``/``run.log``/``run.finish`` (write path) and
``wandb.Api().runs()``/``run.history()``/``run.files()`` (read path) send. Each resolver
returns plain dicts whose callables receive GraphQL field arguments (see ``_gql``).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ._filters import matches_filters, order_key
from ._gql import GqlFieldError
from ._refs import project_ref, stable_number
from ._state import Run, RunFile, ServerState, iso, node_id

SERVER_FEATURES = (
    "LARGE_FILENAMES",
    "MARK_RUN_FILES_UPLOADED",
    "TOTAL_COUNT_IN_FILE_CONNECTION",
    "EXPAND_DEFINED_METRIC_GLOBS",  # accepted so 0.27.0 does not warn; globs are stored, not expanded
)


class PermissionDenied(Exception):
    """The caller's key may not touch this entity (HTTP 403, like the real service)."""


@dataclass
class Ctx:
    """Per-request context: the store, the server's URL and the caller's identity."""

    state: ServerState
    base_url: str
    username: str
    entities: tuple[str, ...]
    storage_token: str

    @property
    def default_entity(self) -> str:
        return self.entities[0]

    def entity(self, name: str | None) -> str:
        entity = name or self.default_entity
        if entity not in self.entities:
            raise PermissionDenied(entity)
        return entity

    def storage_url(self, key: str) -> str:
        return f"{self.base_url}/storage/{key}?token={self.storage_token}"


# ---------------------------------------------------------------- pagination helpers


def encode_cursor(index: int) -> str:
    return base64.b64encode(f"cursor:{index}".encode()).decode()


def decode_cursor(cursor: str | None) -> int:
    """Index of the first item after ``cursor`` (0 when absent)."""
    if not cursor:
        return 0
    try:
        return int(base64.b64decode(cursor).decode().split(":", 1)[1]) + 1
    except (ValueError, IndexError) as exc:
        raise GqlFieldError(f"invalid cursor {cursor!r}") from exc


def connection(items: list, args: dict, node_fn, default_first: int = 50, extra=None) -> dict:
    start = decode_cursor(args.get("after"))
    first = args.get("first")
    first = default_first if first is None else first
    page = items[start : start + first]
    edges = [
        {"node": node_fn(item), "cursor": encode_cursor(start + i)} for i, item in enumerate(page)
    ]
    result = {
        "edges": edges,
        "totalCount": len(items),
        "pageInfo": {
            "__typename": "PageInfo",
            "endCursor": edges[-1]["cursor"] if edges else args.get("after"),
            "hasNextPage": start + len(page) < len(items),
            "startCursor": edges[0]["cursor"] if edges else None,
            "hasPreviousPage": start > 0,
        },
    }
    if extra:
        result.update(extra)
    return result


# ---------------------------------------------------------------- JSON helpers


def dumps(value: Any) -> str:
    """JSON like the W&B backend: NaN/Infinity written as bare tokens (Python json style)."""
    return json.dumps(value, allow_nan=True)


def loads_json_arg(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    return json.loads(value)


# ---------------------------------------------------------------- root resolvers


def viewer(ctx: Ctx) -> dict:
    return {
        "__typename": "User",
        "id": node_id("User", ctx.username),
        "entity": ctx.default_entity,
        "username": ctx.username,
        "name": ctx.username,
        "email": f"{ctx.username}@example.invalid",
        "admin": False,
        "flags": "{}",
        "photoUrl": None,
        "apiKeys": {"edges": []},
        "userInfo": None,
        "deletedAt": None,
        "teams": {"edges": [{"node": {"name": e}} for e in ctx.entities]},
    }


def server_info(ctx: Ctx) -> dict:
    return {
        "features": [{"name": f, "isEnabled": True} for f in SERVER_FEATURES],
        "cliVersionInfo": None,
        "latestLocalVersionInfo": None,
        "availableBucketProviders": ["s3"],
        "isLocalServer": True,
        "exportsEnabled": False,
    }


def project_node(ctx: Ctx, args: dict, create: bool = False) -> dict | None:
    entity = ctx.entity(args.get("entityName"))
    name = args.get("name") or args.get("projectName")
    if name is None:
        return None
    with ctx.state.lock:
        exists = (entity, name) in ctx.state.projects
        if not exists and create:
            ctx.state.projects.add((entity, name))
            exists = True
    if not exists:
        return None
    return make_project(ctx, entity, name)


def projects_connection(ctx: Ctx, args: dict) -> dict:
    """``models(entityName)``: the entity's projects in name order."""
    entity = ctx.entity(args.get("entityName"))
    with ctx.state.lock:
        names = sorted(p for e, p in ctx.state.projects if e == entity)
    return connection(names, args, lambda name: make_project(ctx, entity, name))


def make_project(ctx: Ctx, entity: str, name: str) -> dict:
    from . import _artifacts_api as arts  # local import: artifact resolvers need project nodes

    def run(args: dict) -> dict | None:
        found = ctx.state.run(entity, name, args["name"])
        return run_node(ctx, found) if found else None

    def runs(args: dict) -> dict:
        return runs_connection(ctx, entity, name, args)

    def run_count(args: dict) -> int:
        filters = loads_json_arg(args.get("filters")) or {}
        return sum(1 for r in ctx.state.runs_in(entity, name) if matches_filters(r, filters))

    return {
        "__typename": "Project",
        "id": node_id("Project", name, entity),
        "internalId": str(stable_number(entity, name)),
        "name": name,
        "entityName": entity,
        "readOnly": False,
        "access": "PRIVATE",
        "createdAt": "2026-01-01T00:00:00",
        "updatedAt": "2026-01-01T00:00:00",
        "description": None,
        "isBenchmark": False,
        "user": viewer(ctx),
        "entity": {"id": node_id("Entity", entity), "name": entity},
        "run": run,
        "bucket": run,
        "runs": runs,
        "buckets": runs,
        "runCount": run_count,
        **arts.project_fields(ctx, entity, name),
    }


def runs_connection(ctx: Ctx, entity: str, project: str, args: dict) -> dict:
    filters = loads_json_arg(args.get("filters")) or {}
    order = args.get("order") or "+created_at"
    selected = [r for r in ctx.state.runs_in(entity, project) if matches_filters(r, filters)]
    selected.sort(key=lambda r: order_key(r, order))
    if order.startswith("-"):
        selected.reverse()
    return connection(selected, args, lambda r: run_node(ctx, r))


# ---------------------------------------------------------------- runs


def history_keys(run: Run) -> dict:
    keys: dict[str, dict] = {}
    last_step = -1
    for row in run.history_rows():
        step = row.get("_step")
        if isinstance(step, int):
            last_step = max(last_step, step)
        for key, value in row.items():
            entry = keys.setdefault(key, {"typeCounts": [], "previousValue": None})
            kind = "number" if isinstance(value, (int, float)) else type(value).__name__
            counts = {c["type"]: c for c in entry["typeCounts"]}
            counts.setdefault(kind, {"type": kind, "count": 0})["count"] += 1
            entry["typeCounts"] = list(counts.values())
            entry["previousValue"] = value
    return {"keys": keys, "lastStep": last_step}


def sample(rows: list, samples: int | None) -> list:
    """Evenly spaced rows, first and last kept, when there are more rows than ``samples``."""
    if samples is None or samples <= 0 or len(rows) <= samples:
        return rows
    if samples == 1:
        return [rows[-1]]
    step = (len(rows) - 1) / (samples - 1)
    return [rows[round(i * step)] for i in range(samples)]


def history_lines(run: Run, args: dict) -> list[str]:
    """``history(minStep, maxStep, samples)``: maxStep is exclusive (HistoryPage pages by it)."""
    min_step, max_step = args.get("minStep"), args.get("maxStep")
    lines = run.history_window(
        None if min_step is None else int(min_step), None if max_step is None else int(max_step)
    )
    return sample(lines, page_samples(args.get("samples"), min_step, max_step, 0))


def sampled_history(run: Run, args: dict) -> list[list[dict]]:
    """One list per spec; rows must hold every key; spec maxStep is inclusive (wandb-core)."""
    out = []
    for raw_spec in args.get("specs") or []:
        spec = loads_json_arg(raw_spec)
        keys = list(dict.fromkeys(spec.get("keys") or []))
        rows = []
        for line in run.history_window(spec.get("minStep"), spec.get("maxStep"), inclusive=True):
            row = json.loads(line)
            if keys and not all(k in row for k in keys):
                continue
            rows.append({k: row[k] for k in keys} if keys else row)
        samples = page_samples(spec.get("samples"), spec.get("minStep"), spec.get("maxStep"), 1)
        out.append(sample(rows, samples))
    return out


def page_samples(samples: int | None, min_step, max_step, inclusive: int) -> int | None:
    """A scan page asks for as many samples as its window has steps: then nothing is sampled
    away, even when a writer put several lines at one step (W&B's SDK never does)."""
    if samples is None or min_step is None or max_step is None:
        return samples
    return None if samples >= int(max_step) - int(min_step) + inclusive else samples


def parquet_history(ctx: Ctx, run: Run, args: dict) -> dict:
    """Signed URLs of the run's parquet exports plus ``liveKeys`` of the rows not exported."""
    keys = args.get("liveKeys") or ["_step"]
    with ctx.state.lock:
        urls = [ctx.storage_url(key) for key in run.parquet_exports]
        tail = [line for line in run.history[run.exported_lines :] if line is not None]
    live = [{k: row[k] for k in keys if k in row} for row in map(json.loads, tail)]
    return {"parquetUrls": urls, "liveData": live}


_LEGACY_LOG_LINE = re.compile(
    r"^(?P<error>ERROR )?(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?) "
    r"(?:\[(?P<label>[^\]]*)\] )?(?P<content>.*)$",
    re.DOTALL,
)


def log_line_node(number: int, raw: str) -> dict:
    """One ``output.log`` line as a ``logLines`` node. Lines the SDK sends are parsed: legacy
    ``[ERROR ]<RFC 3339 micro> [[label] ]content`` or structured JSON ``{"level", "ts", "label",
    "content"}``; any other line (an import without per-line times) is all content, with no
    timestamp or level (our reconstruction: W&B does not document this case)."""
    node = {"__typename": "RunLogLine", "number": number, "timestamp": None, "level": "", "label": "", "line": raw}
    if raw.startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("content"), str):
            node.update(timestamp=doc.get("ts"), level=doc.get("level") or "", label=doc.get("label") or "",
                        line=doc["content"])
            return node
    found = _LEGACY_LOG_LINE.match(raw)
    if found:
        node.update(timestamp=found["ts"], level="error" if found["error"] else "", label=found["label"] or "",
                    line=found["content"])
    return node


def log_lines(run: Run, args: dict) -> dict:
    """``logLines(first, after, last, useImprovedPagination)``: ascending line order; ``last``
    = the tail in one page (what wandb-core's RunConsoleLogTail / RunConsoleLogPage ask)."""
    lines = [(i, line) for i, line in enumerate(run.logs) if line is not None]
    if args.get("last") is not None:
        start = max(0, len(lines) - int(args["last"]))
        args = {"first": len(lines), "after": encode_cursor(start - 1) if start else None}
    return connection(lines, args, lambda item: log_line_node(*item), default_first=1000)


def system_metrics(run: Run) -> str:
    """``systemMetrics``: the latest value of every system metric (``system.*`` keys of the
    ``wandb-events.jsonl`` lines), as the W&B backend keeps it for ``Run.system_metrics``."""
    latest: dict[str, Any] = {}
    for line in run.events:
        if line is None:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        latest.update({k: v for k, v in row.items() if k.startswith("system.")})
    return dumps(latest)


def tail(lines: list[str | None], count: int = 10) -> str:
    return json.dumps([line for line in lines[-count:] if line is not None])


def run_node(ctx: Ctx, run: Run) -> dict:
    from . import _artifacts_api as arts

    def files(args: dict) -> dict:
        names = args.get("names") or []
        pattern = args.get("pattern")
        with ctx.state.lock:
            entries = [f for f in run.files.values() if f.uploaded or f.blob_key in ctx.state.blobs]
        if names:
            entries = [f for f in entries if f.name in names]
        if pattern:
            entries = [f for f in entries if like(pattern, f.name)]
        entries.sort(key=lambda f: f.name)
        return connection(entries, args, lambda f: file_node(ctx, run, f))

    def wandb_config(args: dict) -> str:
        raw = run.config.get("_wandb", {})
        value = raw.get("value", raw) if isinstance(raw, dict) else {}
        keys = args.get("keys")
        if keys and isinstance(value, dict):
            value = {k: value[k] for k in keys if k in value}
        return dumps(value)

    return {
        "__typename": "Run",
        "id": run.storage_id,
        "name": run.name,
        "displayName": run.display_name,
        "state": run.state,
        "config": lambda a: dumps(run.config),
        "summaryMetrics": lambda a: dumps(run.summary),
        "systemMetrics": lambda a: system_metrics(run),
        "wandbConfig": wandb_config,
        "tags": list(run.tags),
        "notes": run.notes,
        "description": run.notes,
        "group": run.group,
        "groupName": run.group,
        "jobType": run.job_type,
        "commit": run.commit,
        "host": run.host,
        "program": run.program,
        "repo": run.repo,
        "sweepName": run.sweep,
        "readOnly": False,
        "exitcode": run.exitcode,
        "stopped": False,
        "createdAt": iso(run.created_at),
        "heartbeatAt": iso(run.heartbeat_at),
        "updatedAt": iso(run.heartbeat_at),
        "historyLineCount": len(run.history),
        "eventsLineCount": len(run.events),
        "logLineCount": len(run.logs),
        "historyTail": lambda a: tail(run.history),
        "eventsTail": lambda a: tail(run.events),
        "logTail": lambda a: tail(run.logs),
        "logLines": lambda a: log_lines(run, a),
        "historyKeys": lambda a: run.cached("historyKeys", history_keys),
        "history": lambda a: history_lines(run, a),
        "sampledHistory": lambda a: sampled_history(run, a),
        "events": lambda a: sample([l for l in run.events if l is not None], a.get("samples")),
        "parquetHistory": lambda a: parquet_history(ctx, run, a),
        "fileCount": lambda a: len(run.files),
        "files": files,
        "user": {"name": ctx.username, "username": ctx.username, "id": node_id("User", ctx.username)},
        "project": project_ref(run.entity, run.project),
        "projectId": stable_number(run.entity, run.project),
        "runInfo": None,
        "servicesAvailable": None,
        **arts.run_fields(ctx, run),
    }


def like(pattern: str, name: str) -> bool:
    """SQL LIKE with % and _ (what RunFiles' ``pattern`` argument uses)."""
    import re

    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def run_file_key(run: Run, name: str) -> str:
    return f"runs/{run.entity}/{run.project}/{run.name}/{name}"


def file_node(ctx: Ctx, run: Run, entry: RunFile) -> dict:
    blob = ctx.state.blob(entry.blob_key) if entry.blob_key else None
    download = f"{ctx.base_url}/files/{run.entity}/{run.project}/{run.name}/{entry.name}"
    return {
        "__typename": "File",
        "id": node_id("File", run.entity, run.project, run.name, entry.name),
        "name": entry.name,
        "url": lambda a: ctx.storage_url(run_file_key(run, entry.name)) if a.get("upload") else download,
        "directUrl": ctx.storage_url(run_file_key(run, entry.name)),
        "sizeBytes": blob.size if blob else 0,
        "mimetype": "application/octet-stream",
        "updatedAt": iso(entry.updated_at),
        "md5": blob.b64md5 if blob else None,
        "digest": blob.b64md5 if blob else None,
        "storagePath": run_file_key(run, entry.name),
        "user": None,
    }


# ---------------------------------------------------------------- mutations


def upsert_bucket(ctx: Ctx, args: dict, on_create) -> dict:
    """Create or update a run. ``on_create(entity, project)`` enforces run-creation limits."""
    data = args.get("input") or args
    entity = ctx.entity(data.get("entityName"))
    project = data.get("modelName") or "uncategorized"
    name = data.get("name")
    state = ctx.state
    with state.lock:
        run = None
        if data.get("id"):
            run = state.runs_by_id.get(data["id"])
            if run is None and not name:
                raise GqlFieldError(f"run with id {data['id']!r} not found", code="NOT_FOUND")
        if run is None and name:
            run = state.runs.get((entity, project, name))
        inserted = run is None
        if inserted:
            on_create(entity, project)
            name = name or f"run{state.next_seq():07d}"
            now = state.clock()
            run = Run(
                entity=entity,
                project=project,
                name=name,
                storage_id=node_id("Run", name, project, entity),
                seq=state.next_seq(),
                created_at=now,
                heartbeat_at=now,
            )
            state.runs[(entity, project, name)] = run
            state.runs_by_id[run.storage_id] = run
            state.projects.add((entity, project))
        apply_run_input(run, data)
        run.heartbeat_at = state.clock()
    return {"bucket": run_node(ctx, run), "inserted": inserted}


def apply_run_input(run: Run, data: dict) -> None:
    simple = {
        "displayName": "display_name",
        "groupName": "group",
        "jobType": "job_type",
        "notes": "notes",
        "commit": "commit",
        "host": "host",
        "jobProgram": "program",
        "jobRepo": "repo",
        "sweep": "sweep",
        "state": "state",
    }
    for key, attr in simple.items():
        if data.get(key) is not None:
            setattr(run, attr, data[key])
    if data.get("description") is not None:
        run.notes = data["description"]
    if data.get("tags") is not None:
        run.tags = list(data["tags"])
    if data.get("config") is not None:
        run.config = loads_json_arg(data["config"])
    if data.get("summaryMetrics") is not None:
        run.summary = loads_json_arg(data["summaryMetrics"])


def create_run_files(ctx: Ctx, args: dict) -> dict:
    data = args.get("input") or args
    entity = ctx.entity(data.get("entityName"))
    run = ctx.state.run(entity, data.get("projectName"), data.get("runName"))
    if run is None:
        raise GqlFieldError("run not found", code="NOT_FOUND")
    files = []
    with ctx.state.lock:
        for name in data.get("files") or []:
            entry = run.files.setdefault(name, RunFile(name))
            entry.blob_key = run_file_key(run, name)
            entry.updated_at = ctx.state.clock()
            files.append({"name": name, "uploadUrl": ctx.storage_url(entry.blob_key)})
    return {"runID": run.storage_id, "uploadHeaders": [], "files": files}


def mark_run_files_uploaded(ctx: Ctx, args: dict) -> dict:
    data = args.get("input") or args
    entity = ctx.entity(data.get("entityName"))
    run = ctx.state.run(entity, data.get("projectName"), data.get("runName"))
    if run is None:
        raise GqlFieldError("run not found", code="NOT_FOUND")
    mark_uploaded(ctx.state, run, data.get("files") or [])
    return {"success": True}


def mark_uploaded(state: ServerState, run: Run, names: list[str]) -> None:
    with state.lock:
        for name in names:
            entry = run.files.setdefault(name, RunFile(name, blob_key=run_file_key(run, name)))
            entry.uploaded = True


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
