"""Which W&B projects a source reads, their runs page by page, and a run's JSON as a RunRecord.

Namespaces are resolved once, when the source opens (so a typo fails before anything is
copied); runs are paged with the ``Runs`` cursor exactly as ``wandb.Api().runs(path, filters,
order, per_page)`` pages them, the full ``RunFragment`` included, so ``get_run`` needs no query.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from adapters.http import HttpClient
from core.errors import AuthError, ConfigError
from core.model import Namespace, RunRecord, RunRef, RunState

from . import _read_ops
from ._gql import call
from ._history_read import SYSTEM_POINT_PREFIX, SYSTEM_PREFIX
from ._page_points import INTERNAL_KEYS, loads

STATES = {
    "running": RunState.RUNNING,
    "finished": RunState.FINISHED,
    "failed": RunState.FAILED,
    "crashed": RunState.CRASHED,
    "killed": RunState.KILLED,
    "preempted": RunState.CRASHED,
    "preempting": RunState.RUNNING,
    "pending": RunState.SCHEDULED,
}


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


async def resolve_namespaces(
    api: HttpClient, selectors: list[str], *, default_entity: str, teams: list[str], base_url: str
) -> list[Namespace]:
    """Every project the selectors name, in selector order, each once. A selector without
    globs must name an existing project; a glob may match nothing."""
    chosen: dict[Namespace, None] = {}
    for selector in selectors or [f"{default_entity}/*"]:
        entity_part, _, project_part = selector.partition("/")
        if _is_glob(entity_part):
            entities = [e for e in dict.fromkeys([default_entity, *teams]) if e and fnmatch.fnmatchcase(e, entity_part)]
        else:
            entities = [entity_part]
        for entity in entities:
            try:
                if _is_glob(project_part):
                    projects = [p async for p in list_projects(api, entity) if fnmatch.fnmatchcase(p, project_part)]
                elif await project_exists(api, entity, project_part):
                    projects = [project_part]
                elif _is_glob(entity_part):
                    projects = []
                else:
                    raise ConfigError(f"[source] namespaces: project '{entity}/{project_part}' does not exist at {base_url}")
            except AuthError:
                raise ConfigError(
                    f"[source] namespaces: '{selector}': the API key may not read entity '{entity}' at {base_url}"
                ) from None
            for project in projects:
                chosen.setdefault(Namespace(entity, project))
    return list(chosen)


async def list_projects(api: HttpClient, entity: str, per_page: int = 100) -> AsyncGenerator[str, None]:
    """Project names of ``entity`` (``models`` connection, as ``api.projects(entity)``)."""
    nodes = _read_ops.edges_of(api, _read_ops.GET_PROJECTS, {"entity": entity, "perPage": per_page},
                               name="GetProjects", cursor_var="cursor", connection=lambda d: d.get("models") or {})
    async for node in nodes:
        yield node["name"]


async def project_exists(api: HttpClient, entity: str, project: str) -> bool:
    data = await call(api, _read_ops.PROJECT, {"entity": entity, "project": project}, name="Project")
    return bool(data.get("project"))


async def run_nodes(
    api: HttpClient, namespace: Namespace, *, per_page: int, order: str, filters: str
) -> AsyncGenerator[dict[str, Any], None]:
    """The namespace's runs as ``RunFragment`` JSON, page by page (cursor = last edge's)."""
    variables = {"entity": namespace.entity, "project": namespace.project, "perPage": per_page, "order": order,
                 "filters": filters}
    nodes = _read_ops.edges_of(api, _read_ops.RUNS, variables, name="Runs", cursor_var="cursor",
                               connection=lambda d: None if d.get("project") is None else d["project"].get("runs") or {})
    try:
        async for node in nodes:
            yield node
    except LookupError:
        raise ConfigError(f"[source] project '{namespace}' no longer exists") from None


def run_ref(namespace: Namespace, node: dict[str, Any]) -> RunRef:
    """``id`` = ``entity/project/name`` (unique across the source); hints: the bare run id and
    the page's run JSON (so ``get_run`` costs no request)."""
    name = node["name"]
    return RunRef(
        id=f"{namespace.entity}/{namespace.project}/{name}",
        namespace=namespace,
        name=node.get("displayName"),
        extra=(("run_id", name), ("run_json", json.dumps(node).encode()), ("revision", revision_of(node))),
    )


REVISION_FIELDS = ("state", "displayName", "notes", "tags", "group", "jobType", "config", "summaryMetrics",
                   "historyLineCount", "eventsLineCount", "logLineCount")


def revision_of(node: dict[str, Any]) -> str:
    """Changes whenever the run gains lines or its metadata, config or summary change (see
    ``RunRecord.revision``); files saved later without any of these changing are not seen."""
    facts = json.dumps([node.get(name) for name in REVISION_FIELDS], sort_keys=True, default=str)
    return hashlib.blake2b(facts.encode(), digest_size=12).hexdigest()


def _json_field(value: Any) -> Any:
    """A JSONString field (bare NaN/Infinity tokens allowed) or an already-parsed one."""
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        return loads(value) if value else {}
    return value


def parse_time(value: Any) -> float | None:
    """W&B's ISO times (UTC, with or without ``Z``) as float seconds."""
    if not value:
        return None
    moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def unwrap_config(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"k": {"value": v, "desc": d}}`` -> ``{"k": v}``, ``_wandb`` kept; ``wandb_version``
    (a marker of the config file format, not a setting) left out."""
    out = {}
    for key, entry in raw.items():
        if key == "wandb_version":
            continue
        out[key] = entry["value"] if isinstance(entry, dict) and "value" in entry else entry
    return out


def history_stats(history_keys: Any) -> tuple[int, list[str] | None, int | None]:
    """``(lastStep, history keys, points)`` from ``historyKeys``; points = the sum of the
    keys' type counts (exact on servers that count top-level keys, an estimate where W&B
    flattens nested keys); None when the server gave no counts."""
    doc = _json_field(history_keys)
    if not isinstance(doc, dict):
        return -1, None, None
    last_step = doc.get("lastStep")
    keys = doc.get("keys")
    if not isinstance(keys, dict):
        return (int(last_step) if isinstance(last_step, int) else -1), None, None
    names = sorted(k for k in keys if k not in INTERNAL_KEYS)
    counts = [sum(int(c.get("count") or 0) for c in (keys[k] or {}).get("typeCounts") or []) for k in names]
    points = sum(counts) if all(isinstance(keys[k], dict) and keys[k].get("typeCounts") for k in names) else None
    return (int(last_step) if isinstance(last_step, int) else -1), names, points


def record_from_node(
    ref: RunRef, node: dict[str, Any], *, base_url: str, include_system_metrics: bool
) -> RunRecord:
    """Map one ``RunFragment`` onto a RunRecord (see the package docstring for the rules)."""
    entity, project = ref.namespace.entity, ref.namespace.project
    summary = _json_field(node.get("summaryMetrics"))
    config = unwrap_config(_json_field(node.get("config")))
    start = parse_time(node.get("createdAt"))
    runtime = (summary.get("_wandb") or {}).get("runtime") if isinstance(summary.get("_wandb"), dict) else None
    end: float | None
    if start is not None and isinstance(runtime, (int, float)) and not isinstance(runtime, bool):
        end = start + runtime
    else:
        end = parse_time(node.get("heartbeatAt"))
    last_step, keys, points = history_stats(node.get("historyKeys"))
    if keys is not None and include_system_metrics:
        system = _json_field(node.get("systemMetrics"))
        keys = keys + sorted(SYSTEM_POINT_PREFIX + k[len(SYSTEM_PREFIX):] for k in system if k.startswith(SYSTEM_PREFIX))
    user = node.get("user") or {}
    return RunRecord(
        ref=ref,
        display_name=node.get("displayName"),
        state=STATES.get(str(node.get("state") or "").lower(), RunState.RUNNING),
        start_time=start,
        end_time=end,
        user=user.get("username") or user.get("name"),
        config=config,
        summary=summary,
        labels=list(node.get("tags") or []),
        notes=node.get("notes") or node.get("description"),
        group=node.get("group"),
        job_type=node.get("jobType"),
        git_commit=node.get("commit"),
        source_system="wandb",
        source_uri=base_url,
        metric_keys=keys,
        revision=revision_of(node),
        history_points=points,
        system={
            "source": "wandb",
            "uri": base_url,
            "entity": entity,
            "project": project,
            "run_id": node.get("name"),
            "storage_id": node.get("id"),
            "state": node.get("state"),
            "sweep": node.get("sweepName"),
            "history_line_count": int(node.get("historyLineCount") or 0),
            "events_line_count": int(node.get("eventsLineCount") or 0),
            "log_line_count": int(node.get("logLineCount") or 0),
            "last_step": last_step,
            "heartbeat_at": parse_time(node.get("heartbeatAt")),
        },
    )
