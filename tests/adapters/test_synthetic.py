"""The synthetic source: deterministic, resumable, realistic where it matters to destinations."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from core.protocols import AdapterContext
from adapters.synthetic import BLOCK_POINTS, FILE_PIECE, SyntheticConfig, SyntheticSource, key_names
from core.errors import NotFoundError
from core.model import CONSOLE_LOG, Namespace, RunRef, RunState
from tests.adapters.contract import (
    all_files,
    all_refs,
    assert_history_equal,
    assert_records_equal,
    float_bits,
    read_bytes,
    read_history,
    same_value,
)


def source(chunk_points: int = 100_000, **settings: object) -> SyntheticSource:
    return SyntheticSource(SyntheticConfig(**settings), AdapterContext(chunk_points=chunk_points))  # type: ignore[arg-type]


async def first_run(src: SyntheticSource):  # type: ignore[no-untyped-def]
    return await src.get_run((await all_refs(src))[0])


async def test_same_config_gives_identical_runs_and_points() -> None:
    a, b = source(runs=3, steps=300, keys=4), source(runs=3, steps=300, keys=4)
    for ref_a, ref_b in zip(await all_refs(a), await all_refs(b), strict=True):
        rec_a, rec_b = await a.get_run(ref_a), await b.get_run(ref_b)
        assert_records_equal(rec_a, rec_b)
        assert_history_equal((await read_history(a, rec_a))[0], (await read_history(b, rec_b))[0])


async def test_another_seed_gives_other_values() -> None:
    a, b = source(seed=1, runs=1, steps=50, keys=3), source(seed=2, runs=1, steps=50, keys=3)
    va = (await read_history(a, await first_run(a)))[0].column("value").to_pylist()
    vb = (await read_history(b, await first_run(b)))[0].column("value").to_pylist()
    assert va != vb


@pytest.mark.parametrize("keys", [1, 7])
async def test_resume_from_any_point_equals_the_full_iteration(keys: int) -> None:
    # two blocks and a bit, so starts fall on, before and after block boundaries
    steps = 2 * (BLOCK_POINTS // keys) + 13
    src = source(runs=1, steps=steps, keys=keys, chunk_points=BLOCK_POINTS)
    run = await first_run(src)
    full, offsets = await read_history(src, run)
    assert full.num_rows == run.history_points == steps * keys
    block = (BLOCK_POINTS // keys) * keys
    assert offsets == list(range(0, full.num_rows, block)), "chunks align to blocks"
    for start in [1, keys - 1, block - 1, block, block + 1, block + keys + 3, full.num_rows - 1, full.num_rows]:
        suffix, suffix_offsets = await read_history(src, run, start)
        assert_history_equal(suffix, full.slice(start))
        if start < full.num_rows:
            assert suffix_offsets[0] == start


async def test_values_do_not_depend_on_chunk_size() -> None:
    settings = dict(runs=1, steps=900, keys=6, special_fraction=0.05)
    big, small = source(**settings), source(chunk_points=37, **settings)
    full = (await read_history(big, await first_run(big)))[0]
    chunked, offsets = await read_history(small, await first_run(small))
    assert offsets == list(range(0, 5400, 37))
    assert_history_equal(chunked, full)


async def test_points_are_step_major_with_keys_in_fixed_order_and_increasing_timestamps() -> None:
    src = source(runs=1, steps=500, keys=4, step_stride=3)
    table = (await read_history(src, await first_run(src)))[0]
    assert table.column("key").to_pylist() == key_names(4) * 500
    assert table.column("step").to_pylist() == [s * 3 for s in range(500) for _ in range(4)]
    stamps = table.column("timestamp").to_numpy().reshape(500, 4)
    assert (stamps == stamps[:, :1]).all(), "one timestamp per step"
    assert (np.diff(stamps[:, 0]) > 0).all(), "strictly increasing"
    millis = stamps[:, 0] * 1000
    assert (millis != np.round(millis)).mean() > 0.9, "sub-millisecond parts like W&B's float _timestamp"
    assert table.column("value_json").null_count == table.num_rows


async def test_special_values_are_sprinkled_at_the_configured_fraction() -> None:
    src = source(runs=1, steps=5000, keys=10, special_fraction=0.02)
    values = (await read_history(src, await first_run(src)))[0].column("value")
    _, bits = float_bits(values)
    data = values.to_numpy()
    nan, pinf, ninf = np.isnan(data).sum(), (data == np.inf).sum(), (data == -np.inf).sum()
    neg_zero = (bits == np.float64(-0.0).view(np.int64)).sum()
    assert min(nan, pinf, ninf, neg_zero) > 100
    assert 0.015 < (nan + pinf + ninf + neg_zero) / len(data) < 0.025
    clean = source(runs=1, steps=200, keys=10, special_fraction=0.0)
    assert np.isfinite((await read_history(clean, await first_run(clean)))[0].column("value").to_numpy()).all()


async def test_summary_is_the_last_value_of_every_key() -> None:
    src = source(runs=4, steps=120, keys=5, special_fraction=0.3)
    for ref in await all_refs(src):
        run = await src.get_run(ref)
        tail = (await read_history(src, run, run.history_points - 5))[0]
        expected = dict(zip(tail.column("key").to_pylist(), tail.column("value").to_pylist(), strict=True))
        assert same_value(run.summary, expected)


async def test_runs_spread_over_projects_with_mixed_states_and_exact_special_config() -> None:
    src = source(runs=200, projects=3, steps=1, keys=1, entity="acme")
    refs = await all_refs(src)
    assert [r.id for r in refs] == [f"run{i:06d}" for i in range(200)]
    assert {r.namespace for r in refs} == {Namespace("acme", f"project-{i}") for i in range(3)}
    runs = [await src.get_run(r) for r in refs]
    states = {r.state for r in runs}
    assert {RunState.FINISHED, RunState.FAILED, RunState.KILLED, RunState.RUNNING} <= states
    for run in runs:
        assert (run.end_time is None) == (run.state is RunState.RUNNING)
        assert run.start_time is not None and len(run.config) == 20
        assert same_value(run.config["min_lr"], -0.0) and same_value(run.config["label_smoothing"], float("nan"))
    starts = [r.start_time for r in runs]
    assert starts == sorted(starts)


async def test_files_are_deterministic_streamed_in_pieces_and_sized_up_front() -> None:
    sizes = [0, 10, FILE_PIECE + 1]
    src = source(runs=2, steps=1, keys=1, file_sizes=sizes, artifact_sizes=[FILE_PIECE])
    run = await first_run(src)
    files = await all_files(src, run)
    assert [f.size for f in files] == [*sizes, FILE_PIECE]
    assert run.file_bytes == sum(sizes) + FILE_PIECE
    assert files[-1].artifact is not None and files[-1].artifact.version == "v0"
    pieces = [len(p) async for p in src.read_file(run, files[2])]
    assert pieces == [FILE_PIECE, 1]
    digests = [hashlib.md5(await read_bytes(src, run, f)).hexdigest() for f in files]
    again = source(runs=2, steps=1, keys=1, file_sizes=sizes, artifact_sizes=[FILE_PIECE])
    assert digests == [hashlib.md5(await read_bytes(again, run, f)).hexdigest() for f in files]
    other = await again.get_run((await all_refs(again))[1])
    assert await read_bytes(again, other, files[1]) != await read_bytes(src, run, files[1])


async def test_unknown_runs_and_files_are_not_found() -> None:
    src = source(runs=2, steps=1, keys=1)
    with pytest.raises(NotFoundError):
        await src.get_run(RunRef(id="run000002", namespace=Namespace("synthetic", "project-0")))
    with pytest.raises(NotFoundError):
        await src.get_run(RunRef(id="nope", namespace=Namespace("synthetic", "project-0")))
    run = await first_run(src)
    from core.model import FileRef

    with pytest.raises(NotFoundError):
        async for _ in src.read_file(run, FileRef(path="missing.bin")):
            pass


def test_bad_settings_are_rejected() -> None:
    for bad in [dict(runs=0), dict(keys=0), dict(special_fraction=1.5), dict(file_sizes=[-1]), dict(steps=-1)]:
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)  # type: ignore[arg-type]


async def test_batches_follow_the_history_schema_exactly() -> None:
    from core.model import HISTORY_SCHEMA

    src = source(runs=1, steps=10, keys=3, chunk_points=4)
    async for chunk in src.iter_history(await first_run(src)):
        assert chunk.batch.schema.equals(HISTORY_SCHEMA)
        assert isinstance(chunk.batch.column(0), pa.StringArray)


async def test_json_keys_log_media_references_instead_of_numbers() -> None:
    src = source(runs=1, steps=4, keys=3, json_keys=1, chunk_points=5)
    run = await first_run(src)
    table = (await read_history(src, run))[0]
    assert table.column("key").to_pylist()[:3] == ["train/loss", "train/accuracy", "media/sample_0"]
    texts, values = table.column("value_json").to_pylist(), table.column("value").to_pylist()
    assert [t is None for t in texts] == [False if i % 3 == 2 else True for i in range(12)]
    assert all(v is None for v in values[2::3]) and all(v is not None for v in values[0::3])
    assert json.loads(texts[-1]) == run.summary["media/sample_0"]
    assert run.summary["media/sample_0"]["path"] == "media/images/sample_0_3.png"


async def test_console_log_and_system_keys_are_off_by_default_and_deterministic_when_on() -> None:
    plain = source(runs=1, steps=5, keys=4)
    assert "console" not in plain.describe() and "system_keys" not in plain.describe()
    assert not [f for f in await all_files(plain, await first_run(plain)) if f.role is not None]
    assert not [k for k in key_names(4) if k.startswith("system/")]

    on = source(runs=1, steps=5, keys=4, json_keys=1, system_keys=2, console_lines=10_000)
    record = await first_run(on)
    (console,) = [f for f in await all_files(on, record) if f.role == CONSOLE_LOG]
    assert console.path == "output.log" and console.key == "console:output.log" and console.artifact is None
    data = await read_bytes(on, record, console)
    assert data == await read_bytes(source(runs=1, steps=5, keys=4, json_keys=1, system_keys=2, console_lines=10_000),
                                    record, console)
    lines = data.decode().split("\n")
    assert len(lines) == 10_001 and lines[-1] == ""  # every line ends in a newline
    assert "" in lines[:-1] and any(line.endswith("\r") for line in lines) and any("ü" in line for line in lines)
    assert key_names(4, 1, 2) == ["train/loss", "system/cpu_utilization_percentage",
                                  "system/system_memory_usage_megabytes", "media/sample_0"]
    table, _ = await read_history(on, record)
    assert sorted(set(table.column("key").to_pylist())) == sorted(key_names(4, 1, 2))
    with pytest.raises(ValueError, match="json_keys"):
        SyntheticConfig(keys=3, json_keys=2, system_keys=2)


async def test_long_runs_among_short_ones_have_their_own_length() -> None:
    mixed = source(runs=4, steps=30, keys=3, long_runs=2, long_steps=500)
    lengths = []
    for ref in await all_refs(mixed):
        run = await mixed.get_run(ref)
        history = (await read_history(mixed, run))[0]
        steps = history.column("step").to_numpy()
        lengths.append((run.history_points, history.num_rows, int(steps.max()) + 1))
        assert (np.diff(steps) >= 0).all()
    assert lengths == [(1500, 1500, 500), (1500, 1500, 500), (90, 90, 30), (90, 90, 30)]
    assert "long_runs=2,long_steps=500" in mixed.describe()
