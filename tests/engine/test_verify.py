"""The history digest: order-independent, exact to the bit, NaN-canonical, millisecond-aware."""

from __future__ import annotations

import numpy as np

from core.model import history_batch
from engine.verify import HistoryDigest

KEYS = ["a", "b", "a", "c"]
STEPS = [0, 0, 1, 1]
STAMPS = [1.7e9 + 0.0001, 1.7e9 + 0.0002, 1.7e9 + 1.0, 1.7e9 + 1.5]
VALUES = [1.0, float("nan"), float("inf"), -0.0]


def digest(*batches) -> HistoryDigest:  # type: ignore[no-untyped-def]
    d = HistoryDigest()
    for b in batches:
        d.add(b)
    return d


def test_order_and_chunking_do_not_matter() -> None:
    whole = history_batch(KEYS, STEPS, STAMPS, VALUES)
    order = [3, 1, 0, 2]
    shuffled = history_batch([KEYS[i] for i in order], [STEPS[i] for i in order], [STAMPS[i] for i in order], [VALUES[i] for i in order])
    assert digest(whole) == digest(shuffled.slice(0, 1), shuffled.slice(1))


def test_every_bit_counts_but_nan_payloads_do_not() -> None:
    base = digest(history_batch(KEYS, STEPS, STAMPS, VALUES))
    zero = digest(history_batch(KEYS, STEPS, STAMPS, [1.0, float("nan"), float("inf"), 0.0]))
    assert zero.exact != base.exact
    other_nan = np.frombuffer(np.array([0x7FF8000000000123], dtype=np.uint64).tobytes(), dtype=np.float64)[0]
    assert digest(history_batch(KEYS, STEPS, STAMPS, [1.0, other_nan, float("inf"), -0.0])) == base
    as_json = digest(history_batch(KEYS, STEPS, STAMPS, [1.0, None, float("inf"), -0.0], [None, '"x"', None, None]))
    assert as_json.exact != base.exact


def test_millisecond_rounding_is_told_apart() -> None:
    base = digest(history_batch(KEYS, STEPS, STAMPS, VALUES))
    rounded = digest(history_batch(KEYS, STEPS, [round(t * 1000) / 1000 for t in STAMPS], VALUES))
    assert rounded.exact != base.exact
    assert rounded.millis == base.millis
    moved = digest(history_batch(KEYS, [0, 0, 1, 2], STAMPS, VALUES))
    assert moved.millis != base.millis


def test_system_metrics_in_a_stream_without_steps_are_told_apart() -> None:
    keys = ["loss", "system/cpu", "system/mem", "system/cpu"]
    source = digest(history_batch(keys, [0, 5, 5, 9], STAMPS, [0.5, 12.0, 40.0, 13.0]))
    # W&B keeps system metrics in its own stream: one line per source step, numbered by position
    restepped = digest(history_batch(keys, [0, 0, 0, 1], [STAMPS[0], STAMPS[2], STAMPS[2], STAMPS[3]],
                                     [0.5, 12.0, 40.0, 13.0]))
    assert (restepped.exact, restepped.millis) != (source.exact, source.millis)
    assert restepped.system_loose == source.system_loose
    changed = digest(history_batch(keys, [0, 0, 0, 1], STAMPS, [0.5, 12.0, 41.0, 13.0]))
    assert changed.system_loose != source.system_loose
    moved = digest(history_batch(keys, [1, 5, 5, 9], STAMPS, [0.5, 12.0, 40.0, 13.0]))
    assert moved.system_loose != source.system_loose  # other keys keep their steps


def test_the_destinations_number_form_is_told_apart_and_nothing_else() -> None:
    from adapters.mlflow._readback import stored_floats

    def formed(values: list[float]) -> HistoryDigest:
        d = HistoryDigest(stored_floats)
        d.add(history_batch(KEYS, STEPS, STAMPS, values))
        return d

    base = formed(VALUES)
    held = formed([1.0, float("nan"), 1.7976931348623157e308, 0.0])  # what the SQL store gives back
    assert held.millis != base.millis
    assert held.stored == base.stored
    assert formed([1.0, float("nan"), 1.7976931348623157e308, 0.5]).stored != base.stored
    assert formed([1.0, float("nan"), -1.7976931348623157e308, 0.0]).stored != base.stored  # the sign of inf stays
