"""Through the engine: ``engine.pipeline.migrate`` MLflow -> MLflow (paging, nesting, an
incremental re-run), the CLI MLflow -> local (exact against the MLflow source), and the CLI's
exit code 2 when credentials are rejected."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from adapters.local import LocalSource
from adapters.mlflow import MlflowSource
from engine.config import parse_config
from engine.pipeline import migrate
from engine.progress import Progress
from tests.adapters.contract import (
    all_files,
    all_refs,
    assert_history_equal,
    read_bytes,
    read_history,
)
from tests.mlflow.fault_proxy import Answer, FaultProxy
from tests.mlflow.helpers import assert_same_run, context, dest_run_for, source_config
from tests.mlflow.seed import ARTIFACT_FILES, Seeded
from tests.servers.mlflow_server import MlflowServer

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_pipeline_mlflow_to_mlflow_and_incremental_rerun(
    source_server: MlflowServer,
    dest_server: MlflowServer,
    seeded: Seeded,
    source_client: MlflowClient,
    dest_client: MlflowClient,
    tmp_path: Path,
) -> None:
    config = parse_config(
        {
            "source": {
                "type": "mlflow",
                "tracking_uri": source_server.url,
                "experiments": [seeded.many_name, seeded.edge_name],
                "page_size": 4,
            },
            "destination": {"type": "mlflow", "tracking_uri": dest_server.url, "experiment": "engine-{experiment}"},
            "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "runs_concurrency": 3, "chunk_points": 500},
        },
        "test",
    )
    report = await migrate(config, progress=Progress(mode="none"))
    assert report.exit_code == 0
    totals = report.progress.totals
    assert totals.runs_done == 23 + 5 and totals.runs_failed == 0
    mapping = {}
    for name, ids in ((seeded.many_name, seeded.many_runs), (seeded.edge_name, [r for k, r in seeded.runs.items() if k != "deleted"])):
        for src_id in ids:
            found = dest_run_for(dest_client, f"engine-{name}", src_id)
            assert len(found) == 1
            mapping[src_id] = found[0].info.run_id
    for src_id, dst_id in mapping.items():
        assert_same_run(source_client, dest_client, src_id, dst_id, parent_map=mapping)

    again = await migrate(config, progress=Progress(mode="none"))
    assert again.exit_code == 0
    assert again.progress.totals.runs_done == 0 and again.progress.totals.runs_skipped == 28
    assert len(dest_client.search_runs([dest_client.get_experiment_by_name(f"engine-{seeded.many_name}").experiment_id])) == 23


@pytest.mark.parametrize("straight_from_database", [False, True], ids=["through-api", "history-database"])
async def test_cli_mlflow_to_local_is_exact(
    source_server: MlflowServer, seeded: Seeded, tmp_path: Path, straight_from_database: bool
) -> None:
    export = tmp_path / "export"
    database = f'history_database = "{source_server.database_uri}"' if straight_from_database else ""
    config = write_toml(
        tmp_path / "to-local.toml",
        f"""
[source]
type = "mlflow"
tracking_uri = "{source_server.url}"
experiments = ["{seeded.edge_name}"]
include_deleted = true
{database}

[destination]
type = "local"
path = "{export}"

[transfer]
ledger = "{tmp_path / 'ledger.jsonl'}"
chunk_points = 1000
""",
    )
    done = cli("migrate", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    paged = source_config(source_server.url, experiments=[seeded.edge_name], include_deleted=True, bulk_history=False)
    async with MlflowSource(paged, context(1000)) as mlflow_source:
        expected = {}
        for ref in await all_refs(mlflow_source):
            record = await mlflow_source.get_run(ref)
            expected[ref.id] = (record, (await read_history(mlflow_source, record))[0])
        async with LocalSource(LocalSource.Config(path=str(export))) as local:
            refs = await all_refs(local)
            assert {r.id for r in refs} == set(expected)
            for ref in refs:
                record = await local.get_run(ref)
                want_record, want_history = expected[ref.id]
                assert_history_equal((await read_history(local, record))[0], want_history)
                for name in ("display_name", "state", "start_time", "end_time", "user", "config", "tags", "notes",
                             "git_commit", "program", "parent_id"):
                    assert getattr(record, name) == getattr(want_record, name), name
                files = {f.path: await read_bytes(local, record, f) for f in await all_files(local, record)}
                assert files == (ARTIFACT_FILES if ref.id == seeded.runs["edge"] else {})


@pytest.fixture
def refusing_proxy(source_server: MlflowServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(source_server.url).start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("status", [401, 403])
def test_cli_exits_2_when_credentials_are_rejected(
    refusing_proxy: FaultProxy, dest_server: MlflowServer, tmp_path: Path, status: int
) -> None:
    refusing_proxy.fail("experiments/search", Answer(status, b'{"error_code": "PERMISSION_DENIED", "message": "who are you"}'))
    config = write_toml(
        tmp_path / "auth.toml",
        f"""
[source]
type = "mlflow"
tracking_uri = "{refusing_proxy.url}"
username_env = "RF_USER"
password_env = "RF_PASSWORD"

[destination]
type = "mlflow"
tracking_uri = "{dest_server.url}"

[transfer]
ledger = "{tmp_path / 'ledger.jsonl'}"
""",
    )
    done = cli("migrate", str(config), cwd=tmp_path, env={"RF_USER": "bob", "RF_PASSWORD": "hunter2-secret"})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(status) in done.stderr and "who are you" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert refusing_proxy.count("runs/search") == 0


async def test_runs_admitted_one_at_a_time_are_read_ahead_but_never_runs_already_done(
    source_server: MlflowServer, seeded: Seeded, tmp_path: Path
) -> None:
    """The pipeline tells the source which runs it queued (not the ones the ledger has done):
    one run at a time, 23 runs of one key still cost one ``get-history-bulk`` request, and a
    re-run reads ahead only the runs left to do."""
    proxy = FaultProxy(source_server.url).start()
    try:
        def config(max_runs: int) -> Any:
            return parse_config(
                {
                    "source": {"type": "mlflow", "tracking_uri": proxy.url, "experiments": [seeded.many_name]},
                    "destination": {"type": "local", "path": str(tmp_path / "export")},
                    "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "runs_concurrency": 1, "max_runs": max_runs},
                },
                "test",
            )

        first = await migrate(config(8), progress=Progress(mode="none"))
        assert first.exit_code == 0 and first.progress.totals.runs_done == 8
        assert proxy.count("get-history-bulk") == 1
        done = proxy_run_ids(proxy)
        assert len(done) == 8  # only runs queued were read ahead
        proxy.reset()
        rest = await migrate(config(0), progress=Progress(mode="none"))
        assert rest.exit_code == 0 and rest.progress.totals.runs_done == 15
        asked = proxy_run_ids(proxy)
        assert proxy.count("get-history-bulk") == 1 and proxy.count("metrics/get-history?") == 0
        assert len(asked) == 15 and not asked & done
    finally:
        proxy.stop()
    paged = source_config(source_server.url, experiments=[seeded.many_name], bulk_history=False)
    async with MlflowSource(paged, context()) as mlflow_source, \
            LocalSource(LocalSource.Config(path=str(tmp_path / "export"))) as local:
        local_refs = {ref.id: ref for ref in await all_refs(local)}
        assert sorted(local_refs) == sorted(seeded.many_runs)
        for ref in await all_refs(mlflow_source):
            want, _ = await read_history(mlflow_source, await mlflow_source.get_run(ref))
            got, _ = await read_history(local, await local.get_run(local_refs[ref.id]))
            assert_history_equal(got, want)


def proxy_run_ids(proxy: FaultProxy) -> set[str]:
    """The run ids named by the ``get-history-bulk`` requests the proxy forwarded."""
    return {value for path, query in proxy.queries if "get-history-bulk" in path
            for name, value in query if name == "run_id"}
