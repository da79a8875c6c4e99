"""The W&B-compatible server keeps its data in a SQLite file across a restart: a migration into
it, the server stopped and started again from the file, and ``wandb.Api`` reads every point back."""

from __future__ import annotations

from pathlib import Path

from engine.config import parse_config
from engine.pipeline import migrate
from tests.servers.wandb import start_wandb_server

from .conftest import KEY_ENV
from .test_pipeline_e2e import check_run_against_source, dest_table, source_points, synthetic_table


async def test_data_survives_a_restart_through_sqlite(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    database = tmp_path / "wandb.sqlite"
    source = synthetic_table(runs=2, steps=120)
    with start_wandb_server(sqlite_path=database) as first:
        monkeypatch.setenv(KEY_ENV, first.api_key)
        config = parse_config({
            "source": source,
            "destination": dest_table(first, "persisted"),
            "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 100},
        })
        assert (await migrate(config)).exit_code == 0
        lines_before = {key: list(run.history) for key, run in first.state.runs.items()}
        files_before = sorted(first.state.blobs)
    assert database.exists()

    with start_wandb_server(sqlite_path=database, keys=first.keys) as second:
        assert {key: list(run.history) for key, run in second.state.runs.items()} == lines_before
        assert sorted(second.state.blobs) == files_before
        for run_id, rows in (await source_points(source)).items():
            check_run_against_source(second, "persisted", run_id, rows)
