"""Is a run an earlier migration finished still intact at the W&B destination?

Used by incremental re-runs (``engine/incremental.py``): one GraphQL query per run (plus pages
of its file list) compares the server's own counters and metadata with what the ledger says the
writer left there, never the whole history:

- the run exists; history and system-metrics line counts equal the acknowledged offsets; the
  last history line has the ``_step`` and ``_timestamp`` the writer sent last (a tail digest);
- display name, notes, tags, config and summary equal what the mapping writes for the source run
  (so a summary value changed by hand at the destination is found);
- every run file the ledger counts is listed with the same size (the console log as
  ``output.log``).
"""

from __future__ import annotations

import json
from typing import Any

from adapters.http import HttpClient
from core.protocols import FinishedRun
from core.model import CONSOLE_LOG, RunRecord

from . import _gql
from ._config import WandbDestinationConfig
from ._console import CONSOLE_FILE
from ._mapping import summary_for, upsert_variables

RUN_STATE = """
query RunCheck($project: String!, $entity: String!, $name: String!, $cursor: String) {
  project(name: $project, entityName: $entity) {
    run(name: $name) {
      id name displayName notes tags config summaryMetrics historyLineCount eventsLineCount historyTail
      files(after: $cursor, first: 1000) {
        edges { node { name sizeBytes } }
        pageInfo { endCursor hasNextPage }
      }
    }
  }
}"""


async def check_run(
    api: HttpClient, config: WandbDestinationConfig, record: RunRecord, finished: FinishedRun
) -> list[str]:
    entity, project, name = finished.dest_id.split("/", 2)
    state = finished.checkpoint.state
    files: dict[str, int] = {}
    cursor: str | None = None
    run: dict[str, Any] | None = None
    while True:
        data = await _gql.call(api, RUN_STATE, {"entity": entity, "project": project, "name": name,
                                                "cursor": cursor}, name="RunCheck")
        page = ((data.get("project") or {}).get("run")) or None
        if page is None:
            return [f"run {finished.dest_id} is missing at the destination"]
        run = run or page
        connection = page.get("files") or {}
        for edge in connection.get("edges") or ():
            node = edge.get("node") or {}
            files[str(node.get("name"))] = int(node.get("sizeBytes") or 0)
        info = connection.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            break
        cursor = info.get("endCursor")
    assert run is not None
    problems = _history_problems(run, state)
    problems += _metadata_problems(run, record, config, entity, project, name, state)
    problems += _file_problems(files, finished.files, config)
    return problems


def _history_problems(run: dict[str, Any], state: dict[str, Any]) -> list[str]:
    problems = []
    for field, key, what in (("historyLineCount", "lines", "history"), ("eventsLineCount", "events_lines",
                                                                         "system-metrics")):
        have, wrote = int(run.get(field) or 0), int(state.get(key) or 0)
        if have != wrote:
            problems.append(f"{what} has {have} lines at the destination, {wrote} were written")
    last = state.get("last")
    if not problems and isinstance(last, dict) and int(state.get("lines") or 0):
        tail = _loads(run.get("historyTail") or "[]")
        line = _loads(tail[-1]) if isinstance(tail, list) and tail else {}
        for key in ("_step", "_timestamp"):
            if key in last and (not isinstance(line, dict) or _canon(line.get(key)) != _canon(last[key])):
                problems.append(f"the last history line's {key} differs from the one written")
                break
    return problems


def _metadata_problems(
    run: dict[str, Any], record: RunRecord, config: WandbDestinationConfig, entity: str, project: str, name: str,
    state: dict[str, Any],
) -> list[str]:
    wanted = upsert_variables(record, entity=entity, project=project, run_id=name, group=None)
    problems = []
    if (run.get("displayName") or None) != (wanted["displayName"] or None):
        problems.append("display name differs")
    if (run.get("notes") or None) != (wanted["notes"] or None):
        problems.append("notes differ")
    if sorted(run.get("tags") or []) != sorted(wanted["tags"]):
        problems.append("tags differ")
    have_config = _loads(run.get("config") or "{}")
    want_config = _loads(wanted["config"])
    if _visible(have_config) != _visible(want_config):
        problems.append("config differs")
    expected = summary_for(record, state.get("last"), system_prefix=config.system_metrics_prefix)
    have = _loads(run.get("summaryMetrics") or "{}")
    if _canon(_without_internal(have)) != _canon(_without_internal(expected)):
        problems.append("summary differs")
    return problems


def _file_problems(files: dict[str, int], written: dict[str, int], config: WandbDestinationConfig) -> list[str]:
    """Run files the ledger counts (artifact members are checked by their artifact)."""
    if config.artifact_layout != "files":
        return []
    missing = []
    for key, size in written.items():
        if key.startswith("artifact:"):
            continue
        path = CONSOLE_FILE if key.startswith(f"{CONSOLE_LOG}:") else key
        if files.get(path) != size:
            missing.append(path)
    if not missing:
        return []
    shown = ", ".join(sorted(missing)[:5])
    return [f"{len(missing)} run file(s) missing or of another size at the destination ({shown})"]


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def _visible(config: Any) -> dict[str, Any]:
    """Config as ``run.config`` shows it: values unwrapped, W&B-internal keys left out."""
    if not isinstance(config, dict):
        return {}
    return {k: _canon(v.get("value") if isinstance(v, dict) else v) for k, v in config.items() if not k.startswith("_")}


def _without_internal(summary: Any) -> Any:
    """W&B's own bookkeeping in the summary (``_wandb``) is the server's to keep."""
    return {k: v for k, v in summary.items() if k != "_wandb"} if isinstance(summary, dict) else summary


def _canon(value: Any) -> str:
    """One text per JSON value (NaN and infinities included), for exact comparisons."""
    return json.dumps(value, sort_keys=True, allow_nan=True, separators=(",", ":"), default=str)
