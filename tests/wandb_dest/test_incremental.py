"""Incremental re-runs into W&B: an intact destination moves nothing; a damaged run (history
lines gone, a summary value changed, a run file gone) is found by the check and repaired, and
only that run; the findings are in the ledger."""

from __future__ import annotations

import pytest

from engine.config import parse_config
from engine.ledger import Ledger, RunStatus, pair_key
from engine.pipeline import migrate

from .conftest import wandb_api
from .test_pipeline_e2e import check_run_against_source, dest_table, source_points, synthetic_table


def _config(server, project: str, tmp_path) -> object:
    return parse_config({
        "source": synthetic_table(runs=3, artifact_sizes=[]),
        "destination": dest_table(server, project),
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl")},
    })


async def _migrate(config) -> dict[str, int]:
    report = await migrate(config)
    assert report.exit_code == 0, report.progress.totals.failures
    t = report.progress.totals
    return {"done": t.runs_done, "skipped": t.runs_skipped, "points": t.points, "files": t.files}


def _damage(server, project: str, run_id: str, how: str) -> None:
    run = server.state.run(server.entity, project, run_id)
    with server.state.lock:
        if how == "history":
            keep = len(run.history) // 2
            del run.history[keep:], run.history_steps[keep:]
            run.history_version += 1
        elif how == "summary":
            key = next(k for k in run.summary if not k.startswith("_"))
            run.summary[key] = 12345.5
        elif how == "file":
            name = next(n for n in run.files if n != "output.log")
            del run.files[name]


@pytest.mark.parametrize("how", ["history", "summary", "file"])
async def test_a_damaged_run_is_repaired_and_only_that_run(server, project, tmp_path, how) -> None:
    config = _config(server, project, tmp_path)
    first = await _migrate(config)
    assert first["done"] == 3 and first["points"] > 0

    again = await _migrate(config)  # intact: every run checked, nothing moved
    assert again == {"done": 0, "skipped": 3, "points": 0, "files": 0}

    runs = sorted(r.id for r in wandb_api(server).runs(f"{server.entity}/{project}"))
    victim = runs[1]
    _damage(server, project, victim, how)
    repaired = await _migrate(config)
    assert repaired["done"] == 1 and repaired["skipped"] == 2

    points = await source_points(synthetic_table(runs=3, artifact_sizes=[]))
    for run_id, rows in points.items():
        check_run_against_source(server, project, run_id, rows)
    ledger = Ledger.read(config.ledger_path, pair_key(*_describe(config)))
    entry = ledger.get(next(r for r in points if r.endswith(victim) or r == victim))
    assert entry is not None and entry.status is RunStatus.DONE and entry.findings, entry
    assert await _migrate(config) == {"done": 0, "skipped": 3, "points": 0, "files": 0}


def _describe(config) -> tuple[str, str]:
    from engine.pipeline import make_context, open_adapters
    from engine.progress import Progress

    source, destination = open_adapters(config, make_context(config, Progress.quiet()))
    return source.describe(), destination.describe()
