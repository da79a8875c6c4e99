"""The pipeline against in-memory adapters: exact transfer, failure isolation, resume, cancel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import numpy as np
import pyarrow as pa
import pytest

from engine.config import Config, TransferConfig
from engine.ledger import Ledger, RunStatus, pair_key
from engine.pipeline import migrate
from engine.progress import Progress
from tests.engine.fakes import FakeDestination, FakeSource, FakeWriter


def make_config(tmp_path: Path, **transfer: object) -> Config:
    options = {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 128, **transfer}
    return Config(
        path="test.toml",
        source_type="fake",
        source=None,
        destination_type="fake",
        destination=None,
        transfer=TransferConfig(**options),  # type: ignore[arg-type]
    )


def quiet() -> Progress:
    return Progress.quiet()


def assert_same_batches(actual: pa.Table, expected: pa.RecordBatch) -> None:
    expected_t = pa.Table.from_batches([expected])
    assert actual.num_rows == expected_t.num_rows
    for name in ("key", "step", "value_json"):
        assert actual.column(name).to_pylist() == expected_t.column(name).to_pylist()
    for name in ("timestamp", "value"):  # bit patterns: NaN, inf and -0.0 included
        a = actual.column(name).to_numpy(zero_copy_only=False).view(np.int64)
        b = expected_t.column(name).to_numpy(zero_copy_only=False).view(np.int64)
        assert np.array_equal(a, b)


async def run(config: Config, source: FakeSource, dest: FakeDestination) -> object:
    source.context = dataclasses.replace(source.context, chunk_points=config.transfer.chunk_points)
    with anyio.fail_after(30):
        return await migrate(config, progress=quiet(), adapters=(source, dest))


async def test_every_run_moves_exactly(tmp_path: Path) -> None:
    source, dest = FakeSource(runs=6, points=1000), FakeDestination()
    report = await run(make_config(tmp_path), source, dest)
    assert report.exit_code == 0
    assert report.progress.totals.runs_done == 6
    assert report.progress.totals.points == 6000
    for i in range(6):
        assert_same_batches(dest.store.table(f"run{i}"), source.full_history(f"run{i}"))
        assert dest.store.files[f"run{i}"] == source.files
    assert dest.finalized == 1
    assert all(w.closed for w in dest.writers)
    ledger = Ledger.read(tmp_path / "ledger.jsonl", pair_key(source.describe(), dest.describe()))
    assert {e.status for e in ledger.entries.values()} == {RunStatus.DONE}
    assert ledger.entries["run3"].checkpoint.history_points == 1000
    assert ledger.entries["run3"].totals["files"] == 2


async def test_one_failing_run_does_not_stop_the_others(tmp_path: Path) -> None:
    source = FakeSource(runs=5, points=300, fail_runs={"run2"})
    dest = FakeDestination(fail_files=set())
    report = await run(make_config(tmp_path), source, dest)
    assert report.exit_code == 1
    totals = report.progress.totals
    assert (totals.runs_done, totals.runs_failed) == (4, 1)
    assert totals.failures == [("run2", "FatalError: cannot read run2")]
    ledger = Ledger.read(tmp_path / "ledger.jsonl", pair_key(source.describe(), dest.describe()))
    assert ledger.entries["run2"].status is RunStatus.FAILED
    assert ledger.entries["run2"].reason == "FatalError: cannot read run2"
    assert sorted(dest.store.finished) == ["run0", "run1", "run3", "run4"]


async def test_a_failing_file_fails_only_its_run(tmp_path: Path) -> None:
    source = FakeSource(runs=3, points=100, files={"ok.txt": b"x" * 1000, "bad.txt": b"y"})
    dest = FakeDestination(fail_files={"bad.txt"})
    report = await run(make_config(tmp_path), source, dest)
    assert report.progress.totals.runs_failed == 3
    assert report.progress.totals.failures[0][1] == "FatalError: refusing bad.txt"
    assert dest.store.finished == {}


async def test_failed_history_resumes_from_the_ledger_cursor_without_duplicates(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    source = FakeSource(runs=2, points=1000, fail_history_at={"run1": 512})
    dest = FakeDestination()
    first = await run(config, source, dest)
    assert first.progress.totals.runs_failed == 1
    ledger = Ledger.read(tmp_path / "ledger.jsonl", pair_key(source.describe(), dest.describe()))
    assert ledger.entries["run1"].checkpoint.history_points == 512
    assert ledger.entries["run1"].checkpoint.state == {"lines": 512}

    source.fail_history_at.clear()
    source.history_calls.clear()
    second = await run(config, source, FakeDestination(store=dest.store))
    assert second.exit_code == 0
    assert second.progress.totals.runs_skipped == 1  # run0 was done
    assert source.history_calls == [("run1", 512)]
    assert_same_batches(dest.store.table("run1"), source.full_history("run1"))


async def test_resumed_run_does_not_copy_again_the_files_the_ledger_records_as_done(tmp_path: Path) -> None:
    """One file is copied, the next fails the run; the resumed run copies only the missing one.
    (file_workers=1 moves files one at a time in listing order, so the first is done for sure.)"""
    config = make_config(tmp_path, file_workers=1)
    files = {"a-ok.txt": b"x" * 300, "z-bad.txt": b"y" * 7}
    source = FakeSource(runs=1, points=100, files=files)
    dest = FakeDestination(fail_files={"z-bad.txt"})
    first = await run(config, source, dest)
    assert first.progress.totals.runs_failed == 1
    ledger = Ledger.read(tmp_path / "ledger.jsonl", pair_key(source.describe(), dest.describe()))
    assert ledger.entries["run0"].files == {"a-ok.txt": 300}

    source.file_reads.clear()
    second = await run(config, source, FakeDestination(store=dest.store))
    assert second.exit_code == 0
    assert source.file_reads == [("run0", "z-bad.txt")]
    assert dest.store.files["run0"] == files


async def test_incremental_false_redoes_everything(tmp_path: Path) -> None:
    source, dest = FakeSource(runs=2, points=200), FakeDestination()
    await run(make_config(tmp_path), source, dest)
    source.history_calls.clear()
    report = await run(make_config(tmp_path, incremental=False), source, FakeDestination(store=dest.store))
    assert report.progress.totals.runs_done == 2
    assert sorted(source.history_calls) == [("run0", 0), ("run1", 0)]
    assert_same_batches(dest.store.table("run0"), source.full_history("run0"))


async def test_max_runs_limits_the_selection(tmp_path: Path) -> None:
    source, dest = FakeSource(runs=10, points=10), FakeDestination()
    report = await run(make_config(tmp_path, max_runs=3, runs_concurrency=1), source, dest)
    assert report.progress.totals.runs_done == 3


class BlockingWriter(FakeWriter):
    """Stops after ``limit`` points so a test can cancel the migration mid-history."""

    limit = 0
    reached: anyio.Event

    async def write_history(self, chunk):  # type: ignore[no-untyped-def]
        if self.points >= self.limit:
            self.reached.set()
            await anyio.sleep_forever()
        await super().write_history(chunk)


async def test_cancellation_leaves_a_resumable_ledger(tmp_path: Path) -> None:
    config = make_config(tmp_path, runs_concurrency=1)
    source = FakeSource(runs=3, points=1000)
    dest = FakeDestination()
    reached = anyio.Event()

    async def open_blocking(run, resume):  # type: ignore[no-untyped-def]
        writer = BlockingWriter(dest.store, run, resume, set())
        writer.limit, writer.reached = (384 if run.ref.id == "run1" else 10**9), reached
        dest.writers.append(writer)
        return writer

    dest.open_run = open_blocking  # type: ignore[method-assign]
    source.context = dataclasses.replace(source.context, chunk_points=config.transfer.chunk_points)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: migrate(config, progress=quiet(), adapters=(source, dest)))
            await reached.wait()
            tg.cancel_scope.cancel()
    assert all(w.closed for w in dest.writers)
    ledger = Ledger.read(tmp_path / "ledger.jsonl", pair_key(source.describe(), dest.describe()))
    assert ledger.entries["run0"].status is RunStatus.DONE
    assert ledger.entries["run1"].status is RunStatus.IN_PROGRESS
    assert ledger.entries["run1"].checkpoint.history_points == 384

    source.history_calls.clear()
    report = await run(config, source, FakeDestination(store=dest.store))
    assert report.exit_code == 0
    assert ("run1", 384) in source.history_calls
    for i in range(3):
        assert_same_batches(dest.store.table(f"run{i}"), source.full_history(f"run{i}"))


@pytest.mark.parametrize("points", [0, 1, 128, 129])
async def test_edge_sizes(tmp_path: Path, points: int) -> None:
    source, dest = FakeSource(runs=1, points=points, files={}), FakeDestination()
    report = await run(make_config(tmp_path), source, dest)
    assert report.exit_code == 0
    assert dest.store.table("run0").num_rows == points
