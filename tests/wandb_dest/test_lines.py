"""History points -> W&B lines: the encoding and grouping rules, table-driven (no I/O)."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from adapters.wandb._lines import (
    AssemblyStats,
    HistoryAssembler,
    Order,
    encode_lines,
    format_float,
    iter_request_slices,
)
from core.model import history_batch

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (100.0, "100.0"),
        (NAN, "NaN"),
        (INF, "Infinity"),
        (-INF, "-Infinity"),
        (1e300, "1e+300"),
        (1 / 3, "0.3333333333333333"),
        (5e-324, "5e-324"),
        (1700000000.123, "1700000000.123"),
    ],
)
def test_float_text_round_trips_like_the_sdk(value: float, text: str) -> None:
    assert format_float(value) == text
    parsed = json.loads(text)  # Python's json reads NaN/Infinity like the SDK writes them
    assert (math.isnan(parsed) and math.isnan(value)) or (
        parsed == value and math.copysign(1, parsed) == math.copysign(1, value)
    )
    assert isinstance(parsed, float)


def test_one_line_per_step_with_original_timestamp_and_runtime() -> None:
    batch = history_batch(["a", "b", "a", "b"], [0, 0, 1, 1], [10.5, 10.5, 11.25, 11.25], [1.0, NAN, -0.0, INF])
    lines = encode_lines(batch, 10.0, AssemblyStats())
    assert lines == [
        '{"_step":0,"_runtime":0.5,"_timestamp":10.5,"a":1.0,"b":NaN}',
        '{"_step":1,"_runtime":1.25,"_timestamp":11.25,"a":-0.0,"b":Infinity}',
    ]


def test_collisions_become_extra_lines_at_the_same_step_and_are_counted() -> None:
    stats = AssemblyStats()
    batch = history_batch(["a", "a", "b", "a"], [3, 3, 3, 3], [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 5.0, 3.0])
    lines = [json.loads(x) for x in encode_lines(batch, 0.0, stats)]
    assert lines == [
        {"_step": 3, "_runtime": 2.0, "_timestamp": 2.0, "a": 1.0, "b": 5.0},
        {"_step": 3, "_runtime": 2.0, "_timestamp": 2.0, "a": 2.0},
        {"_step": 3, "_runtime": 3.0, "_timestamp": 3.0, "a": 3.0},
    ]
    assert stats.collisions == 2
    assert stats.timestamp_merged == 1  # a=1.0 logged at 1.0 shares a line stamped 2.0


def test_non_numeric_values_keep_their_json() -> None:
    batch = history_batch(["t", "n"], [0, 0], [1.0, 1.0], [None, 2.0], ['{"x": [1, "y"]}', None])
    assert encode_lines(batch, 0.0, AssemblyStats()) == ['{"_step":0,"_runtime":1.0,"_timestamp":1.0,"t":{"x": [1, "y"]},"n":2.0}']


def test_step_major_source_streams_complete_steps_as_prefixes() -> None:
    assembler = HistoryAssembler(start_time=0.0)
    first = assembler.add(history_batch(["a", "b", "a", "b", "a"], [0, 0, 1, 1, 2], [1.0] * 5, [1.0] * 5))
    assert assembler.order is Order.STREAM
    assert [(b.points, b.steps, len(b.lines)) for b in first] == [(4, (0, 1), 2)]
    second = assembler.add(history_batch(["b", "a"], [2, 3], [1.0, 1.0], [2.0, 3.0]))
    assert [(b.points, b.steps) for b in second] == [(2, (2, 2))]  # step 2 straddled the boundary
    last = list(assembler.finish())
    assert [(b.points, b.steps) for b in last] == [(1, (3, 3))]


def test_key_major_source_is_buffered_and_sorted_by_step() -> None:
    assembler = HistoryAssembler(start_time=0.0)
    assert assembler.add(history_batch(["a"] * 3, [0, 1, 2], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])) == []
    assert assembler.add(history_batch(["b"] * 3, [0, 1, 2], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])) == []
    assert assembler.order is Order.BUFFER
    (block,) = assembler.finish()
    assert block.points == 6  # nothing counts as durable before the whole sorted history is sent
    assert [json.loads(x) for x in block.lines] == [
        {"_step": s, "_runtime": float(s + 1), "_timestamp": float(s + 1), "a": float(s + 1), "b": float(s + 4)}
        for s in range(3)
    ]


def test_single_key_runs_stream_from_the_first_chunk() -> None:
    assembler = HistoryAssembler(start_time=0.0, single_key=True)
    blocks = assembler.add(history_batch(["a"] * 3, [0, 1, 2], [1.0] * 3, [1.0] * 3))
    assert [(b.points, b.steps) for b in blocks] == [(2, (0, 1))]


def test_lines_do_not_depend_on_chunking() -> None:
    keys = ["a", "b", "c"] * 40
    steps = [i // 3 for i in range(120)]
    ts = [100.0 + s * 0.25 for s in steps]
    values = [float(i) for i in range(120)]
    whole = HistoryAssembler(start_time=100.0)
    expected = [line for b in whole.add(history_batch(keys, steps, ts, values)) + list(whole.finish()) for line in b.lines]
    for size in (1, 2, 5, 7, 50):
        assembler = HistoryAssembler(start_time=100.0)
        got: list[str] = []
        points = 0
        for i in range(0, 120, size):
            for block in assembler.add(history_batch(keys[i:i + size], steps[i:i + size], ts[i:i + size], values[i:i + size])):
                got += block.lines
                points += block.points
        for block in assembler.finish():
            got += block.lines
            points += block.points
        assert got == expected, size
        assert points == 120


def test_request_slices_respect_the_byte_budget() -> None:
    lines = [f'{{"_step":{i},"k":"{"x" * (i % 50)}"}}' for i in range(1000)]
    windows = list(iter_request_slices(lines, 4096))
    assert windows[0][0] == 0 and windows[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    for start, end in windows:
        body = json.dumps(lines[start:end])
        assert len(body) <= 4096 or end - start == 1


def test_buffered_history_is_released_in_step_windows_without_splitting_steps() -> None:
    assembler = HistoryAssembler(start_time=0.0, window_points=5)
    for key in ("a", "b", "c"):  # key-major, 4 steps each
        assembler.add(history_batch([key] * 4, [0, 1, 2, 3], [1.0] * 4, [1.0] * 4))
    blocks = list(assembler.finish())
    assert [(b.points, b.steps, len(b.lines)) for b in blocks] == [(0, (0, 1), 2), (12, (2, 3), 2)]
    assert all(line.count('"a"') == 1 and line.count('"c"') == 1 for b in blocks for line in b.lines)
