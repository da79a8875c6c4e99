"""Pure rules of the system-metrics split (``_streams``) and the console-log lines (``_console``):
table and property tests against brute-force references, no server."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.wandb._console import LineBatcher, LineSplitter, line_cap
from adapters.wandb._lines import HistoryAssembler
from adapters.wandb._streams import Position, StreamSplit
from core.model import history_batch


def source(n: int, is_event: np.ndarray) -> tuple[list[str], list[int], list[float], list[float]]:
    keys = [f"system/k{i % 3}" if e else f"m{i % 2}" for i, e in enumerate(is_event)]
    return keys, [i // 4 for i in range(n)], [1000.0 + i for i in range(n)], [float(i) for i in range(n)]


def batch(cols, lo: int, hi: int):
    k, s, t, v = cols
    return history_batch(k[lo:hi], s[lo:hi], t[lo:hi], v[lo:hi])


def brute_durable(is_event: np.ndarray, h_ack: int, e_ack: int, received: int) -> Position:
    h = np.concatenate([[0], np.cumsum(~is_event[:received])])
    e = np.concatenate([[0], np.cumsum(is_event[:received])])
    ok = np.flatnonzero((h <= h_ack) & (e <= e_ack))
    p = int(ok[-1])  # prefixes are monotone: the last that fits is the longest
    return Position(p, int(h[p]), int(e[p]))


@pytest.mark.parametrize("seed", range(40))
def test_durable_prefix_is_the_longest_both_streams_cover(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    is_event = rng.random(n) < rng.choice([0.0, 0.2, 0.5, 1.0])
    if seed % 5 == 0:  # key-major runs of one kind, as MLflow yields them
        is_event = np.sort(is_event)[:: 1 if seed % 2 else -1]
    cols = source(n, is_event)
    split = StreamSplit("system/", resume=Position(0, 0, 0), h_points=0, e_points=0)
    received, h_got, e_got, h_ack, e_ack = 0, 0, 0, 0, 0
    while received < n or h_ack < h_got or e_ack < e_got:
        if received < n and rng.random() < 0.5:
            hi = min(n, received + int(rng.integers(1, 40)))
            history, events = split.split(batch(cols, received, hi))
            h_got += history.num_rows
            e_got += 0 if events is None else events.num_rows
            assert history.column("key").to_pylist() == [k for k in cols[0][received:hi] if not k.startswith("system/")]
            if events is not None:
                assert all(k.startswith("system.k") for k in events.column("key").to_pylist())
            received = hi
        else:  # a stream acknowledges some of what it received
            dh = int(rng.integers(0, h_got - h_ack + 1))
            de = int(rng.integers(0, e_got - e_ack + 1))
            h_ack, e_ack = h_ack + dh, e_ack + de
            got = split.acknowledged(history=dh, events=de)
            assert got == brute_durable(is_event, h_ack, e_ack, received)
    assert split.durable == Position(n, int((~is_event).sum()), int(is_event.sum()))
    assert split.pending_segments == 0


@pytest.mark.parametrize("seed", range(30))
def test_a_resumed_split_yields_exactly_what_each_stream_still_needs(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 200))
    is_event = rng.random(n) < 0.4
    cols = source(n, is_event)
    # a crashed session: streams acknowledged some points, the ledger holds the durable prefix
    first = StreamSplit("system/", resume=Position(0, 0, 0), h_points=0, e_points=0)
    first.split(batch(cols, 0, n))
    h_total, e_total = int((~is_event).sum()), int(is_event.sum())
    h_ack, e_ack = int(rng.integers(0, h_total + 1)), int(rng.integers(0, e_total + 1))
    durable = first.acknowledged(history=h_ack, events=e_ack)
    state = first.state()
    resumed = StreamSplit("system/", resume=durable, h_points=state["h_points"], e_points=state["e_points"])
    history_keys, event_values = [], []
    position = durable.points
    while position < n:  # the source restarts at the durable prefix, in other chunk sizes
        hi = min(n, position + int(rng.integers(1, 30)))
        history, events = resumed.split(batch(cols, position, hi))
        history_keys += history.column("value").to_pylist()
        event_values += [] if events is None else events.column("value").to_pylist()
        position = hi
    values = np.array(cols[3])
    assert history_keys == values[~is_event][h_ack:].tolist()
    assert event_values == values[is_event][e_ack:].tolist()


def test_an_empty_prefix_keeps_everything_in_the_history() -> None:
    cols = source(10, np.ones(10, dtype=bool))
    split = StreamSplit("", resume=Position(0, 0, 0), h_points=0, e_points=0)
    history, events = split.split(batch(cols, 0, 10))
    assert events is None and history.num_rows == 10
    assert split.acknowledged(history=10) == Position(10, 10, 0)


def test_system_lines_carry_wandb_flag_timestamp_and_runtime_but_no_step() -> None:
    keys = ["system.cpu", "system.mem", "system.cpu", "system.mem"]
    assembler = HistoryAssembler(start_time=100.0, events=True)
    blocks = assembler.add(history_batch(keys, [0, 0, 1, 1], [101.5, 101.5, 103.0, 103.0], [1.0, 2.0, 3.0, -0.0]))
    blocks += list(assembler.finish())
    lines = [line for block in blocks for line in block.lines]
    assert lines == [
        '{"_wandb":true,"_runtime":1.5,"_timestamp":101.5,"system.cpu":1.0,"system.mem":2.0}',
        '{"_wandb":true,"_runtime":3.0,"_timestamp":103.0,"system.cpu":3.0,"system.mem":-0.0}',
    ]


# -- console log lines ------------------------------------------------------------------------
def reference_lines(data: bytes, cap: int) -> list[str]:
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[i : i + cap] for line in lines for i in range(0, max(len(line), 1), cap)]


@pytest.mark.parametrize("seed", range(25))
def test_console_lines_do_not_depend_on_piece_boundaries(seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = list("ab \t\r\n\n") + ["é", "✓", "\U0001f600"]
    text = "".join(rng.choice(alphabet, int(rng.integers(0, 400))))
    data = text.encode() + (b"\xff\xfe tail" if seed % 4 == 0 else b"")
    cap = int(rng.choice([1024, 7, 3]))
    splitter = LineSplitter(cap)
    got: list[str] = []
    position = 0
    while position < len(data):
        size = int(rng.integers(1, 9))
        got += splitter.feed(data[position : position + size])
        position += size
    got += splitter.finish()
    want = reference_lines(data, cap)
    assert got == want
    pieces_per_line = [max(1, -(-len(line) // cap)) for line in reference_lines(data, 10**9)]
    assert splitter.cuts == sum(p - 1 for p in pieces_per_line)


def test_console_batches_stay_under_the_budget_and_keep_order() -> None:
    batcher = LineBatcher(budget=100)
    lines = [f'line "{i}" é' * (i % 5) for i in range(200)]
    batches = []
    for line in lines:
        if (full := batcher.add(line)) is not None:
            batches.append(full)
    batches.append(batcher.rest())
    assert [line for b in batches for line in b] == lines
    import orjson

    assert all(sum(len(orjson.dumps(x)) + 1 for x in b) <= 100 for b in batches if len(b) > 1)
    assert line_cap(6 * 4096) == 4096 and line_cap(10) == 1024


def test_points_a_resumed_stream_already_holds_are_durable_without_new_lines() -> None:
    # the crash came after both streams acknowledged everything but before the ledger heard it
    is_event = np.array([False, True] * 10)
    cols = source(20, is_event)
    split = StreamSplit("system/", resume=Position(6, 3, 3), h_points=10, e_points=10)
    history, events = split.split(batch(cols, 6, 20))
    assert history.num_rows == 0 and events is None
    assert split.acknowledged() == Position(20, 10, 10)
