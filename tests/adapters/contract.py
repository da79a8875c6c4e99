"""The contract every Source and Destination passes, as mixin classes to subclass.

Use it for a new adapter in your own test directory (fixtures resolve there)::

    from tests.adapters.contract import DestinationCase, DestinationContract, SourceCase, SourceContract

    class TestMlflowSource(SourceContract):
        @pytest.fixture
        async def source_case(self, mlflow_server):        # any fixtures you need
            async with MlflowSource(MlflowSource.Config(...)) as source:
                yield SourceCase(source=source)

    class TestMlflowDestination(DestinationContract):
        @pytest.fixture
        async def destination_case(self, mlflow_server):
            async with MlflowDestination(...) as destination:
                yield DestinationCase(
                    destination=destination,
                    open_reader=lambda: MlflowSource(...),   # reads back what was written
                    find_run=find_by_tag,                    # written RunRecord -> reader's RunRef
                    normalise_history=millisecond_timestamps, # what the system cannot keep exactly
                    exact_record=False,
                )

Destination tests feed ``contract_source()`` (a small synthetic source with NaN, ±inf, -0.0,
a JSON-valued key (``value_json``), empty and multi-piece files, an artifact) and compare what the reader gives back, exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.protocols import AdapterContext, Checkpoint, Destination, RunWriter, Source
from adapters.synthetic import SyntheticConfig, SyntheticSource
from core.model import HISTORY_SCHEMA, FileRef, RunRecord, RunRef


# -- comparison helpers ---------------------------------------------------------------------------
def float_bits(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(validity mask, int64 bit patterns with nulls as 0): NaN == NaN, -0.0 != 0.0."""
    valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    bits = pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False).astype(np.float64).view(np.int64)
    return valid, np.where(valid, bits, 0)


def assert_history_equal(actual: pa.Table, expected: pa.Table) -> None:
    """Exact equality of two history tables: keys, steps, float bit patterns, JSON values."""
    assert actual.num_rows == expected.num_rows, f"{actual.num_rows} points, expected {expected.num_rows}"
    for name in ("key", "step", "value_json"):
        if actual.column(name).equals(expected.column(name)):
            continue
        got, want = actual.column(name).to_pylist(), expected.column(name).to_pylist()
        if got != want:
            first = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            raise AssertionError(f"{name} differs first at point {first}: {got[first]!r} != {want[first]!r}")
    for name in ("timestamp", "value"):
        (gv, gb), (wv, wb) = float_bits(actual.column(name)), float_bits(expected.column(name))
        np.testing.assert_array_equal(gv, wv, err_msg=f"{name} nulls differ")
        if not np.array_equal(gb, wb):
            first = int(np.flatnonzero(gb != wb)[0])
            raise AssertionError(
                f"{name} differs first at point {first}: "
                f"{actual.column(name)[first].as_py()!r} != {expected.column(name)[first].as_py()!r}"
            )


def same_value(a: Any, b: Any) -> bool:
    """Deep equality where floats compare by bit pattern (NaN == NaN, -0.0 != 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).view(np.int64) == np.float64(b).view(np.int64) or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def assert_records_equal(actual: RunRecord, expected: RunRecord) -> None:
    """Every RunRecord field but ``ref.extra`` (adapter-private hints) is identical."""
    assert actual.ref.id == expected.ref.id
    assert actual.ref.namespace == expected.ref.namespace
    assert actual.ref.name == expected.ref.name
    for f in fields(RunRecord):
        if f.name != "ref":
            got, want = getattr(actual, f.name), getattr(expected, f.name)
            assert same_value(got, want), f"{f.name}: {got!r} != {want!r}"


async def read_history(source: Source, record: RunRecord, start: int = 0) -> tuple[pa.Table, list[int]]:
    """The whole history from ``start`` as one table, plus the chunk offsets seen."""
    batches, offsets = [], []
    position = start
    async with contextlib.aclosing(source.iter_history(record, start)) as chunks:
        async for chunk in chunks:
            assert chunk.batch.schema.equals(HISTORY_SCHEMA), chunk.batch.schema
            assert chunk.offset == position, f"chunk at {chunk.offset}, expected {position} (contiguous)"
            position = chunk.end
            offsets.append(chunk.offset)
            batches.append(chunk.batch)
    return pa.Table.from_batches(batches, schema=HISTORY_SCHEMA), offsets


async def read_bytes(source: Source, record: RunRecord, file: FileRef) -> bytes:
    """A file's bytes (test sizes only: tests may hold them in memory)."""
    pieces = []
    async with contextlib.aclosing(source.read_file(record, file)) as stream:
        async for piece in stream:
            assert isinstance(piece, bytes) and piece, "pieces are non-empty bytes"
            pieces.append(piece)
    return b"".join(pieces)


async def all_refs(source: Source) -> list[RunRef]:
    async with contextlib.aclosing(source.list_runs()) as refs:
        return [ref async for ref in refs]


async def all_files(source: Source, record: RunRecord) -> list[FileRef]:
    async with contextlib.aclosing(source.list_files(record)) as listing:
        return [f async for f in listing]


async def copy_run(
    source: Source,
    record: RunRecord,
    destination: Destination,
    *,
    resume: Checkpoint | None = None,
    stop_after_chunks: int | None = None,
    files: bool = True,
) -> tuple[RunWriter, list[Checkpoint]]:
    """Drive one run through a destination as the engine does; returns the writer (closed) and
    the checkpoint after each chunk. ``stop_after_chunks`` simulates a crash: the writer is
    dropped after that many chunks, without flush or finish."""
    writer = await destination.open_run(record, resume)
    checkpoints: list[Checkpoint] = []
    try:
        start = writer.checkpoint().history_points
        async with contextlib.aclosing(source.iter_history(record, start)) as chunks:
            async for chunk in chunks:
                if stop_after_chunks is not None and len(checkpoints) >= stop_after_chunks:
                    return writer, checkpoints
                await writer.write_history(chunk)
                checkpoints.append(writer.checkpoint())
        if stop_after_chunks is not None and len(checkpoints) >= stop_after_chunks:
            return writer, checkpoints
        await writer.flush_history()
        if files:
            for file in await all_files(source, record):
                async with contextlib.aclosing(source.read_file(record, file)) as stream:
                    await writer.write_file(file, stream)
        await writer.finish(record)
    finally:
        await writer.aclose()
    return writer, checkpoints


def contract_source(**overrides: Any) -> SyntheticSource:
    """Small synthetic runs that exercise every edge a destination must keep."""
    settings: dict[str, Any] = dict(
        seed=7,
        runs=2,
        projects=2,
        steps=60,
        keys=5,
        json_keys=1,
        special_fraction=0.05,
        file_sizes=[0, 3000, (1 << 20) + 5],
        artifact_sizes=[1234],
        chunk_points=70,
    )
    settings.update(overrides)
    return SyntheticSource(SyntheticConfig(**settings), AdapterContext())


async def find_by_id(reader: Source, written: RunRecord, dest_id: str) -> RunRef:
    """Default ``find_run``: the reader lists the run under the same id."""
    matches = [ref for ref in await all_refs(reader) if ref.id == written.ref.id]
    assert len(matches) == 1, f"expected one run {written.ref.id}, found {len(matches)}"
    return matches[0]


# -- the contracts --------------------------------------------------------------------------------
@dataclass
class SourceCase:
    """An entered source with at least one run that has history (and ideally files)."""

    source: Source
    max_runs: int = 3
    """How many runs the history/file checks look at."""


@dataclass
class DestinationCase:
    """An entered destination plus a way to read back what it wrote."""

    destination: Destination
    open_reader: Callable[[], AbstractAsyncContextManager[Source]]
    find_run: Callable[[Source, RunRecord, str], Awaitable[RunRef]] = find_by_id
    normalise_history: Callable[[pa.Table], pa.Table] = field(default=lambda table: table)
    exact_record: bool = True
    """Compare every RunRecord field after the round trip (false: only id and history)."""
    check_files: bool = True
    """Move and compare run files and artifact members."""
    expected_file_key: Callable[[FileRef], str] = field(default=lambda file: file.key)
    """The key under which the reader lists a written file (when the destination stores, say,
    artifact members as plain files under ``<artifact name>/``)."""
    source_settings: dict[str, Any] = field(default_factory=dict)
    """Overrides for ``contract_source`` (e.g. ``special_fraction=0.0`` where a system cannot
    store NaN at all; say so in the adapter's docs when you need this)."""


class SourceContract:
    """Subclass and provide an async ``source_case`` fixture yielding a ``SourceCase``."""

    @pytest.fixture
    async def source_case(self) -> AsyncIterator[SourceCase]:
        raise NotImplementedError("subclasses provide the source_case fixture")
        yield  # pragma: no cover

    async def test_describe_is_a_stable_string(self, source_case: SourceCase) -> None:
        first = source_case.source.describe()
        assert isinstance(first, str) and first
        assert source_case.source.describe() == first

    async def test_list_runs_is_deterministic_and_unique(self, source_case: SourceCase) -> None:
        first = await all_refs(source_case.source)
        again = await all_refs(source_case.source)
        assert first, "the case must have runs"
        assert [r.id for r in first] == [r.id for r in again]
        assert len({r.id for r in first}) == len(first)

    async def test_get_run_describes_the_listed_run(self, source_case: SourceCase) -> None:
        for ref in (await all_refs(source_case.source))[: source_case.max_runs]:
            record = await source_case.source.get_run(ref)
            assert record.ref.id == ref.id
            assert record.ref.namespace == ref.namespace

    async def test_history_is_contiguous_and_resumes_exactly(self, source_case: SourceCase) -> None:
        source = source_case.source
        for ref in (await all_refs(source))[: source_case.max_runs]:
            record = await source.get_run(ref)
            full, offsets = await read_history(source, record)
            if record.history_points is not None:
                assert full.num_rows == record.history_points
            n = full.num_rows
            for start in sorted({0, 1, n // 3, n // 2 + 1, max(n - 1, 0), n}):
                suffix, _ = await read_history(source, record, start)  # offsets checked inside
                assert_history_equal(suffix, full.slice(start))

    async def test_files_stream_their_declared_bytes(self, source_case: SourceCase) -> None:
        source = source_case.source
        for ref in (await all_refs(source))[: source_case.max_runs]:
            record = await source.get_run(ref)
            files = await all_files(source, record)
            assert len({f.key for f in files}) == len(files), "file keys are unique within a run"
            for file in files:
                data = await read_bytes(source, record, file)
                if file.size is not None:
                    assert len(data) == file.size, file.key
                if file.md5 is not None:
                    assert hashlib.md5(data).hexdigest() == file.md5, file.key
                assert data == await read_bytes(source, record, file), "reads are repeatable"


class DestinationContract:
    """Subclass and provide an async ``destination_case`` fixture yielding a ``DestinationCase``."""

    @pytest.fixture
    async def destination_case(self) -> AsyncIterator[DestinationCase]:
        raise NotImplementedError("subclasses provide the destination_case fixture")
        yield  # pragma: no cover

    async def _check_round_trip(self, case: DestinationCase, source: Source, record: RunRecord, dest_id: str) -> None:
        expected, _ = await read_history(source, record)
        async with case.open_reader() as reader:
            ref = await case.find_run(reader, record, dest_id)
            back = await reader.get_run(ref)
            if case.exact_record:
                assert_records_equal(back, record)
            got, _ = await read_history(reader, back)
            assert_history_equal(case.normalise_history(got), case.normalise_history(expected))
            if not case.check_files:
                return
            want_files = {case.expected_file_key(f): f for f in await all_files(source, record)}
            got_files = {f.key: f for f in await all_files(reader, back)}
            assert sorted(got_files) == sorted(want_files)
            for key, file in got_files.items():
                assert await read_bytes(reader, back, file) == await read_bytes(source, record, want_files[key]), key

    async def test_round_trip_is_exact(self, destination_case: DestinationCase) -> None:
        async with contract_source(**destination_case.source_settings) as source:
            for ref in await all_refs(source):
                record = await source.get_run(ref)
                writer, checkpoints = await copy_run(
                    source, record, destination_case.destination, files=destination_case.check_files
                )
                assert checkpoints[-1].history_points == record.history_points
                assert writer.checkpoint().history_points == record.history_points
                await destination_case.destination.finalize()
                await self._check_round_trip(destination_case, source, record, writer.dest_id)

    async def test_resume_after_crash_stores_no_point_twice(self, destination_case: DestinationCase) -> None:
        async with contract_source(**{**destination_case.source_settings, "runs": 1}) as source:
            record = await source.get_run((await all_refs(source))[0])
            # crash after 4 chunks while the ledger only recorded the second checkpoint
            _, checkpoints = await copy_run(source, record, destination_case.destination, stop_after_chunks=4)
            ledger = checkpoints[1]
            assert 0 < ledger.history_points < record.history_points
            writer, _ = await copy_run(
                source, record, destination_case.destination, resume=ledger, files=destination_case.check_files
            )
            await destination_case.destination.finalize()
            await self._check_round_trip(destination_case, source, record, writer.dest_id)

    async def test_writing_a_run_again_from_scratch_replaces_it(self, destination_case: DestinationCase) -> None:
        async with contract_source(**{**destination_case.source_settings, "runs": 1}) as source:
            record = await source.get_run((await all_refs(source))[0])
            files = destination_case.check_files
            await copy_run(source, record, destination_case.destination, files=files)
            writer, _ = await copy_run(source, record, destination_case.destination, files=files)
            await destination_case.destination.finalize()
            await self._check_round_trip(destination_case, source, record, writer.dest_id)
