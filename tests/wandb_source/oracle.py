"""Reading a whole W&B source into plain Python, and the official SDK's view of the same runs.

Why: every oracle test compares the two, so the rebuild rules (points -> history rows, system
points -> events lines) live in one place.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

from adapters.wandb import WandbSource
from core.model import RunRecord


def dump(value: Any) -> str:
    """Canonical text: NaN/inf kept, -0.0 vs 0.0 and 1 vs 1.0 distinguished."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def point_value(point: dict[str, Any]) -> Any:
    return json.loads(point["value_json"]) if point["value_json"] is not None else point["value"]


def rows_from_points(points: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """History rows (``_step``, ``_timestamp``, values) and system lines (``_timestamp`` and
    ``system.<name>`` values, by line index) rebuilt from a run's points in order."""
    rows: list[dict] = []
    system: dict[int, dict] = {}
    for p in points:
        if p["key"].startswith("system/"):
            line = system.setdefault(p["step"], {"_timestamp": p["timestamp"]})
            line["system." + p["key"][len("system/"):]] = point_value(p)
            continue
        if not rows or (rows[-1]["_step"], rows[-1]["_timestamp"]) != (p["step"], p["timestamp"]):
            rows.append({"_step": p["step"], "_timestamp": p["timestamp"]})
        rows[-1][p["key"]] = point_value(p)
    return rows, [system[i] for i in sorted(system)]


async def read_run(source: WandbSource, ref) -> dict[str, Any]:
    record = await source.get_run(ref)
    points: list[dict] = []
    offsets = []
    async for chunk in source.iter_history(record):
        offsets.append((chunk.offset, len(chunk)))
        points.extend(chunk.batch.to_pylist())
    files = {}
    roles = {}
    async for f in source.list_files(record):
        files[f.path] = b"".join([piece async for piece in source.read_file(record, f)])
        roles[f.path] = f
    return {"record": record, "points": points, "offsets": offsets, "files": files, "refs": roles}


def sdk_view(api, path: str) -> dict[str, Any]:
    """What ``wandb.Api()`` reads of one run: rows (``scan_history``, ``_runtime`` left out),
    system lines, config (``rawconfig``), summary, metadata, file bytes."""
    run = api.run(path)
    rows = [{k: v for k, v in row.items() if k != "_runtime"} for row in run.scan_history()]
    system = [
        {k: v for k, v in line.items() if k == "_timestamp" or k.startswith("system.")}
        for line in run.history(stream="system", samples=1_000_000, pandas=False)
    ]
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for f in run.files():
            f.download(root=tmp, replace=True)
            files[f.name] = (Path(tmp) / f.name).read_bytes()
    created = dt.datetime.fromisoformat(run.created_at.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    return {
        "rows": rows, "system": system, "config": run.rawconfig, "summary": dict(run.summary_metrics),
        "tags": list(run.tags), "notes": run.notes, "group": run.group, "job_type": run.job_type,
        "state": run.state, "created": created.timestamp(), "name": run.name, "files": files,
    }


def record_view(record: RunRecord) -> dict[str, Any]:
    return {
        "config": record.config, "summary": record.summary, "tags": record.labels, "notes": record.notes,
        "group": record.group, "job_type": record.job_type, "state": record.state.value,
        "created": record.start_time, "name": record.display_name,
    }
