"""The local export directory: exact run.json, crash/resume without duplicates, path safety,
run tables that pandas reads."""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.protocols import Checkpoint
from adapters.local import LocalDestination, LocalSource, _layout
from core.errors import ConfigError, FatalError
from core.model import CONSOLE_LOG, ArtifactRef, FileRef, HistoryChunk, Namespace, RunRecord, RunRef, RunState
from tests.adapters.contract import (
    all_refs,
    assert_history_equal,
    assert_records_equal,
    contract_source,
    copy_run,
    read_bytes,
    read_history,
)


def destination(root: Path, **settings: object) -> LocalDestination:
    return LocalDestination(LocalDestination.Config(path=str(root), **settings))  # type: ignore[arg-type]


def reader(root: Path) -> LocalSource:
    return LocalSource(LocalSource.Config(path=str(root)))


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def write_metadata_only(dest: LocalDestination, record: RunRecord):  # type: ignore[no-untyped-def]
    writer = await dest.open_run(record, None)
    await writer.flush_history()
    await writer.finish(record)
    await writer.aclose()
    return writer


def weird_record() -> RunRecord:
    return RunRecord(
        ref=RunRef(id="a/b..c", namespace=Namespace("", "ünï côde/..")),
        display_name="naïve run ✓",
        state=RunState.KILLED,
        start_time=1700000000.123456,
        end_time=None,
        config={"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "nz": -0.0, "big": 2**70,
                "nested": {"list": [1, -0.0, "x", None], "deep": {"a": True}}},  # fmt: skip
        summary={"loss": math.nan, "acc": -0.0, "text": "hi"},
        tags={"mlflow.note": "x"},
        labels=["b", "a"],
        notes="line1\nline2",
        inputs=[{"name": "ds", "digest": "abc"}],
        history_points=0,
        file_bytes=None,
    )


async def test_run_json_round_trips_nan_inf_negative_zero_and_odd_names(tmp_path: Path) -> None:
    record = weird_record()
    async with destination(tmp_path) as dest:
        writer = await write_metadata_only(dest, record)
        await dest.finalize()
    assert writer.dest_id.startswith("runs/_/")
    async with reader(tmp_path) as local:
        (ref,) = await all_refs(local)
        assert_records_equal(await local.get_run(ref), record)
    assert '"nz": -0.0' in (tmp_path / writer.dest_id / "run.json").read_text()


def test_sanitised_names_are_injective_and_never_escape() -> None:
    long = "ü" * 300
    names = ["", "_", "%5F", ".", "..", ".hidden", "a/b", "a%2Fb", "a_b", "ü", "%C3%BC", "CON", "x" * 3, long, long + "x"]
    encoded = [_layout.sanitise(n) for n in names]
    assert len(set(encoded)) == len(names)
    for e in encoded:
        assert "/" not in e and not e.startswith(".") and e not in ("", ".", "..")
        assert len(e.encode()) <= 200


@pytest.mark.parametrize(
    "path", ["../escape.bin", "/etc/passwd", "a/../../b", "", "a//b", "./a", "a/.", "a\\..\\b", "x\x00y"]
)
async def test_file_paths_that_could_escape_are_rejected(tmp_path: Path, path: str) -> None:
    async with destination(tmp_path / "export") as dest:
        writer = await dest.open_run(weird_record(), None)
        with pytest.raises(FatalError):
            await writer.write_file(FileRef(path=path, size=1), pieces(b"x"))
        artifact = ArtifactRef(name="../../up", version="..")
        with pytest.raises(FatalError):
            await writer.write_file(FileRef(path=path, size=1, artifact=artifact), pieces(b"x"))
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "export")]
    assert outside == []


async def test_artifact_names_cannot_climb_out_of_the_run(tmp_path: Path) -> None:
    async with destination(tmp_path) as dest:
        writer = await dest.open_run(weird_record(), None)
        artifact = ArtifactRef(name="../../up", version="..")
        await writer.write_file(FileRef(path="w.bin", artifact=artifact), pieces(b"abc"))
    (stored,) = [p for p in tmp_path.rglob("w.bin")]
    assert stored.is_relative_to(tmp_path / writer.dest_id / "artifacts")
    assert stored.read_bytes() == b"abc"


async def test_failed_file_stream_leaves_the_previous_copy_and_no_temporaries(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("source connection reset")

    async with destination(tmp_path) as dest:
        writer = await dest.open_run(weird_record(), None)
        file = FileRef(path="dir/f.txt")
        await writer.write_file(file, pieces(b"old ", b"bytes"))
        with pytest.raises(OSError):
            await writer.write_file(file, broken())
        await writer.write_file(FileRef(path="empty"), pieces())
    folder = tmp_path / writer.dest_id / "files"
    assert (folder / "dir" / "f.txt").read_bytes() == b"old bytes"
    assert (folder / "empty").read_bytes() == b""
    assert sorted(p.name for p in folder.rglob("*")) == ["dir", "empty", "f.txt"]


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if _layout.TMP_MARK in p.name)


async def test_failed_local_writes_remove_their_temporary_files_at_once(tmp_path: Path) -> None:
    """A file stream that breaks, a file and a history chunk that cannot be renamed into place
    (a directory is in the way): each leaves no temporary file behind, checked right after the
    failure and before the writer closes (nothing else sweeps them in between)."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("source connection reset")

    async with destination(tmp_path) as dest:
        writer = await dest.open_run(weird_record(), None)
        run_dir = tmp_path / writer.dest_id
        with pytest.raises(OSError, match="source connection reset"):
            await writer.write_file(FileRef(path="f.txt"), broken())
        assert temporaries(run_dir) == []

        blocked = _layout.file_target(run_dir, "g.txt", None, None)
        (blocked / "in-the-way").mkdir(parents=True)
        with pytest.raises(FatalError, match="IsADirectoryError"):
            await writer.write_file(FileRef(path="g.txt"), pieces(b"abc"))
        assert temporaries(run_dir) == []

        (run_dir / _layout.HISTORY / "in-the-way").mkdir(parents=True)
        _src, _record, table = await expected_history()
        with pytest.raises(FatalError, match="IsADirectoryError"):
            await writer.write_history(HistoryChunk(table.to_batches()[0], 0))
        assert temporaries(run_dir) == []
        assert writer.checkpoint().history_points == 0
        await writer.aclose()


async def expected_history(**settings: object):  # type: ignore[no-untyped-def]
    src = contract_source(runs=1, **settings)
    record = await src.get_run((await all_refs(src))[0])
    return src, record, (await read_history(src, record))[0]


async def stored_history(root: Path) -> object:
    async with reader(root) as local:
        (ref,) = await all_refs(local)
        return (await read_history(local, await local.get_run(ref)))[0]


async def test_crash_before_the_ledger_caught_up_drops_the_extra_parts(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        writer, checkpoints = await copy_run(src, record, dest, stop_after_chunks=3)
        parts = sorted(os.listdir(tmp_path / writer.dest_id / _layout.PARTS))
        assert parts == ["part-000000000070.parquet", "part-000000000140.parquet"]  # chunk 0: history.parquet
        assert pq.ParquetFile(tmp_path / writer.dest_id / _layout.HISTORY).metadata.num_rows == 70
        assert [c.history_points for c in checkpoints] == [70, 140, 210]
        await copy_run(src, record, dest, resume=checkpoints[0])
    assert not (tmp_path / writer.dest_id / _layout.PARTS).exists()
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


async def test_crash_after_the_merge_truncates_the_merged_file(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        _, checkpoints = await copy_run(src, record, dest)  # merged, but say the ledger saw only 2 chunks
        writer, _ = await copy_run(src, record, dest, resume=checkpoints[1])
    assert pq.ParquetFile(tmp_path / writer.dest_id / _layout.HISTORY).metadata.num_rows == full.num_rows
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


async def test_resume_inside_a_part_keeps_only_its_first_points(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        await copy_run(src, record, dest, stop_after_chunks=2)
        # a ledger written with another chunk size: 100 lies inside the second part
        writer = await dest.open_run(record, Checkpoint(history_points=100))
        assert writer.checkpoint().history_points == 100
        await writer.aclose()
    src_small = contract_source(runs=1, chunk_points=100)
    async with destination(tmp_path) as dest:
        await copy_run(src_small, record, dest, resume=Checkpoint(history_points=100))
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


async def test_merge_interrupted_before_cleanup_does_not_duplicate(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        writer, checkpoints = await copy_run(src, record, dest, stop_after_chunks=5)
    run_dir = tmp_path / writer.dest_id
    saved = {p.name: p.read_bytes() for p in (run_dir / _layout.PARTS).iterdir()}
    async with destination(tmp_path) as dest:
        await copy_run(src, record, dest, resume=checkpoints[-1])  # merges and removes the parts
    (run_dir / _layout.PARTS).mkdir()
    for name, data in saved.items():  # as if the process died between rename and rmtree
        (run_dir / _layout.PARTS / name).write_bytes(data)
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]
    async with destination(tmp_path) as dest:
        await copy_run(src, record, dest, resume=Checkpoint(history_points=full.num_rows))
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]
    assert not (run_dir / _layout.PARTS).exists()


async def test_ledger_ahead_of_the_export_is_a_fatal_error(tmp_path: Path) -> None:
    src, record, _ = await expected_history()
    async with destination(tmp_path) as dest:
        await copy_run(src, record, dest, stop_after_chunks=1)
        with pytest.raises(FatalError, match="only 70 history points"):
            await dest.open_run(record, Checkpoint(history_points=140))


async def test_fresh_open_discards_previous_history(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        await copy_run(src, record, dest, stop_after_chunks=2)
        writer = await dest.open_run(record, None)
        assert writer.checkpoint().history_points == 0
        await writer.aclose()
        await copy_run(src, record, dest)
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


async def test_run_tables_are_readable_by_pandas_with_exact_values(tmp_path: Path) -> None:
    src = contract_source(runs=3)
    records = [await src.get_run(ref) for ref in await all_refs(src)]
    mixed = weird_record()
    mixed.config["batch_size"] = "not a number"  # mixed types become a text column
    async with destination(tmp_path) as dest:
        for record in records:
            await copy_run(src, record, dest, files=False)
        await write_metadata_only(dest, mixed)
        await dest.finalize()
    table = pd.read_parquet(tmp_path / "runs.parquet")
    csv = pd.read_csv(tmp_path / "runs.csv")
    assert len(table) == len(csv) == 4
    by_id = table.set_index("id")
    first = records[0]
    row = by_id.loc[first.ref.id]
    assert row["name"] == first.display_name and row["state"] == first.state.value
    assert row["start_time"] == first.start_time and row["history_points"] == first.history_points
    assert row["start_time_iso"].startswith("2023-11-14T22:")
    assert row["config.model.layers"] == first.config["model"]["layers"]
    assert math.isinf(row["config.clip_norm"]) and math.isnan(row["config.label_smoothing"])
    assert math.copysign(1.0, row["config.min_lr"]) == -1.0
    assert json.loads(row["labels"]) == first.labels
    assert row["tags.team"] == first.tags["team"]
    media = first.summary.pop("media/sample_0")  # dicts are flattened into dotted columns
    assert row["summary.media/sample_0.path"] == media["path"] and row["summary.media/sample_0.width"] == 64
    for key, value in first.summary.items():
        got = row[f"summary.{key}"]
        assert (math.isnan(got) and math.isnan(value)) or got == value
    assert table["config.batch_size"].tolist().count("not a number") == 1
    assert by_id.loc[mixed.ref.id, "config.nested.list"] == "[1, -0.0, \"x\", null]"
    assert list(csv.columns) == list(table.columns)


async def test_history_parquet_is_plain_long_layout_for_pandas(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        writer, _ = await copy_run(src, record, dest, files=False)
    frame = pd.read_parquet(tmp_path / writer.dest_id / _layout.HISTORY)
    assert list(frame.columns) == ["key", "step", "timestamp", "value", "value_json"]
    assert frame["key"].tolist() == full.column("key").to_pylist()
    assert frame["step"].dtype == "int64" and frame["value"].dtype == "float64"


async def test_local_source_filters_projects_and_rejects_non_exports(tmp_path: Path) -> None:
    src = contract_source(runs=4, projects=2, steps=2)
    async with destination(tmp_path) as dest:
        for ref in await all_refs(src):
            await copy_run(src, await src.get_run(ref), dest, files=False)
    only = LocalSource(LocalSource.Config(path=str(tmp_path), projects=["synthetic/*-1"]))
    async with only:
        assert [r.id for r in await all_refs(only)] == ["run000001", "run000003"]
    with pytest.raises(ConfigError):
        async with reader(tmp_path / "missing"):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        async with destination(tmp_path / "file"):
            pass


async def test_an_unfinished_export_reads_back_its_durable_points(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path) as dest:
        await copy_run(src, record, dest, stop_after_chunks=3)
    assert_history_equal(await stored_history(tmp_path), full.slice(0, 210))  # type: ignore[arg-type]
    async with reader(tmp_path) as local:
        run = await local.get_run((await all_refs(local))[0])
        suffix, offsets = await read_history(local, run, 100)
    assert offsets[0] == 100
    assert_history_equal(suffix, full.slice(100, 110))


async def test_fsync_mode_round_trips_too(tmp_path: Path) -> None:
    src, record, full = await expected_history()
    async with destination(tmp_path, fsync=True) as dest:
        await copy_run(src, record, dest)
        await dest.finalize()
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


async def test_history_batches_in_compatible_types_are_stored_in_the_standard_schema(tmp_path: Path) -> None:
    import pyarrow as pa

    from core.model import HISTORY_SCHEMA, HistoryChunk

    batch = pa.RecordBatch.from_arrays(
        [pa.array(["a", "b"]).dictionary_encode(), pa.array([0, 0]), pa.array([1.5, 1.5]),
         pa.array([-0.0, None]), pa.array([None, '{"x": 1}'], pa.large_string())],  # fmt: skip
        names=HISTORY_SCHEMA.names,
    )
    async with destination(tmp_path) as dest:
        writer = await dest.open_run(weird_record(), None)
        await writer.write_history(HistoryChunk(batch=batch, offset=0))
        with pytest.raises(FatalError, match="expected 2"):
            await writer.write_history(HistoryChunk(batch=batch, offset=0))
        with pytest.raises(FatalError, match="HISTORY_SCHEMA"):
            await writer.write_history(HistoryChunk(batch=batch.drop_columns(["value"]), offset=2))
        await writer.flush_history()
        await writer.finish(weird_record())
    stored = await stored_history(tmp_path)
    assert_history_equal(stored, pa.Table.from_batches([batch.cast(HISTORY_SCHEMA)]))  # type: ignore[arg-type]
    assert stored.column("value_json").to_pylist() == [None, '{"x": 1}']  # type: ignore[attr-defined]


@pytest.mark.parametrize(("steps", "groups"), [(10, 1), (60, 5)])
async def test_merged_history_has_one_zstd_row_group_per_chunk(tmp_path: Path, steps: int, groups: int) -> None:
    src, record, full = await expected_history(steps=steps)
    async with destination(tmp_path) as dest:
        writer, _ = await copy_run(src, record, dest, files=False)
    meta = pq.ParquetFile(tmp_path / writer.dest_id / _layout.HISTORY).metadata
    assert meta.num_row_groups == groups
    assert {meta.row_group(g).column(c).compression for g in range(groups) for c in range(5)} == {"ZSTD"}
    assert not (tmp_path / writer.dest_id / _layout.PARTS).exists()
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
async def test_repeated_crashes_at_random_points_never_duplicate_or_lose_points(tmp_path: Path, seed: int) -> None:
    import random

    rnd = random.Random(seed)
    src, record, full = await expected_history(steps=90, chunk_points=rnd.choice([7, 33, 64]))
    ledger: Checkpoint | None = None
    async with destination(tmp_path) as dest:
        for _ in range(4):  # each attempt dies after a few chunks; the ledger lags behind
            _, checkpoints = await copy_run(src, record, dest, resume=ledger, stop_after_chunks=rnd.randint(0, 5))
            if checkpoints:
                ledger = rnd.choice([ledger, *checkpoints]) or checkpoints[0]
        await copy_run(src, record, dest, resume=ledger, files=False)
    assert_history_equal(await stored_history(tmp_path), full)  # type: ignore[arg-type]


async def test_disk_errors_become_transfer_errors(tmp_path: Path) -> None:
    from core.errors import NotFoundError

    src, record, _ = await expected_history()
    async with destination(tmp_path) as dest:
        writer, _ = await copy_run(src, record, dest, files=False)
        (tmp_path / writer.dest_id / "files").write_bytes(b"a file where a folder should be")
        writer = await dest.open_run(record, Checkpoint(history_points=record.history_points or 0))
        with pytest.raises(FatalError) as caught:
            await writer.write_file(FileRef(path="x/y.bin"), pieces(b"1"))
        assert isinstance(caught.value.__cause__, OSError)
    (tmp_path / writer.dest_id / _layout.HISTORY).write_bytes(b"PAR1 not really parquet")
    async with reader(tmp_path) as local:
        run = await local.get_run((await all_refs(local))[0])
        with pytest.raises(FatalError):
            await read_history(local, run)
        with pytest.raises(NotFoundError):
            await read_bytes(local, run, FileRef(path="never/written.bin"))


def test_the_adapters_never_import_pandas(tmp_path: Path) -> None:
    """pandas costs seconds of CPU and ~50 MB of RSS per process; the engine never needs it."""
    import subprocess
    import sys

    script = f"""
import sys, anyio
from tests.adapters.contract import all_refs, contract_source, copy_run, read_history
from adapters.local import LocalDestination, LocalSource

async def main():
    async with contract_source(runs=2) as src, LocalDestination(LocalDestination.Config(path={str(tmp_path)!r})) as d:
        for ref in await all_refs(src):
            await copy_run(src, await src.get_run(ref), d)
        await d.finalize()
    async with LocalSource(LocalSource.Config(path={str(tmp_path)!r})) as local:
        for ref in await all_refs(local):
            await read_history(local, await local.get_run(ref))

anyio.run(main)
print(sorted(m for m in sys.modules if m == "pandas" or m.startswith("pandas.")))
"""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "runs.csv").is_file()


async def test_concurrent_runs_and_files_into_one_export(tmp_path: Path) -> None:
    import contextlib

    import anyio

    from tests.adapters.contract import all_files

    src = contract_source(runs=4, projects=1, file_sizes=[1, 2000, 70_000], artifact_sizes=[10, 20, 30])
    records = [await src.get_run(ref) for ref in await all_refs(src)]

    async def one_run(dest: LocalDestination, record: RunRecord) -> None:
        writer = await dest.open_run(record, None)
        async with anyio.create_task_group() as tg:
            for file in await all_files(src, record):

                async def move(file: FileRef = file) -> None:
                    async with contextlib.aclosing(src.read_file(record, file)) as stream:
                        await writer.write_file(file, stream)

                tg.start_soon(move)
            async for chunk in src.iter_history(record):
                await writer.write_history(chunk)
            await writer.flush_history()
        await writer.finish(record)
        await writer.aclose()

    async with destination(tmp_path) as dest:
        async with anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(one_run, dest, record)
        await dest.finalize()
    async with reader(tmp_path) as local:
        refs = await all_refs(local)
        assert [r.id for r in refs] == [r.ref.id for r in records]
        for ref, record in zip(refs, records, strict=True):
            back = await local.get_run(ref)
            assert_records_equal(back, record)
            assert_history_equal((await read_history(local, back))[0], (await read_history(src, record))[0])
            got = {f.key: await read_bytes(local, back, f) for f in await all_files(local, back)}
            want = {f.key: await read_bytes(src, record, f) for f in await all_files(src, record)}
            assert got == want


async def test_a_console_log_is_stored_under_console_and_read_back_with_its_role(tmp_path: Path) -> None:
    record = RunRecord(ref=RunRef(id="r1", namespace=Namespace("e", "p")))
    async with destination(tmp_path) as dest:
        writer = await dest.open_run(record, None)
        await writer.write_file(FileRef(path="output.log", role=CONSOLE_LOG), pieces(b"line 1\n", b"line 2\r\nlast"))
        await writer.write_file(FileRef(path="output.log"), pieces(b"a plain run file of the same name"))
        await writer.flush_history()
        await writer.finish(record)
    run_dir = tmp_path / _layout.run_rel_dir(record.ref.namespace, "r1")
    assert (run_dir / "console" / "output.log").read_bytes() == b"line 1\nline 2\r\nlast"
    async with reader(tmp_path) as src:
        back = await src.get_run((await all_refs(src))[0])
        files = {f.key: f async for f in src.list_files(back)}
        assert sorted(files) == ["console:output.log", "output.log"]
        assert files["console:output.log"].role == CONSOLE_LOG
        assert await read_bytes(src, back, files["console:output.log"]) == b"line 1\nline 2\r\nlast"
    with pytest.raises(FatalError, match="role"):
        _layout.file_target(run_dir, "x.log", None, "stderr")
