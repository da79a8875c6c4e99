"""The fault soak in reduced form (``python -m bench fault_soak`` is the long one): MLflow -> W&B
and W&B -> W&B side by side, each through seeded storm fronts before its source and its
destination (resets, 5xx, 429 with Retry-After, 503 SlowDown, timeouts, truncated and slow
bodies), a few hundred faults in all. The migrations end exact (``python -m engine verify``
through the calmed fronts: every run identical), and the client's throttle and retry counts
equal what each front injected, per front and in each report's totals."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios.fault_soak import Shape, soak

pytestmark = [pytest.mark.soak, pytest.mark.timeout(600)]

# many small reads (where every kind of fault may strike), few writes (W&B paces file_stream at
# 2 requests/s per run, so small chunks would only make the test wait)
SHAPE = Shape(runs=2, steps=1500, keys=3, rate=0.18, seed=7, history_page=10, wandb_history_rows=10, chunk_points=5000,
              files=(3000, 0, 20000), artifacts=(9000, 2))


def test_a_fault_storm_ends_exact_and_every_fault_is_counted(tmp_path: Path) -> None:
    outcome = soak(tmp_path, SHAPE, log=lambda _: None)

    assert outcome.faults >= 150, outcome.rows
    for leg in outcome.legs:
        text = outcome.verified[leg.name]
        assert f"runs identical:      {SHAPE.runs}" in text and "runs different:      0" in text, text
    for row in outcome.rows:
        assert row["throttles reported"] == row["throttles injected"], row
        assert row["retries reported"] == row["retries caused"], row
    for leg in outcome.legs:
        assert leg.totals == {
            "throttles": leg.source.throttles() + leg.destination.throttles(),
            "retries": leg.source.retries_caused() + leg.destination.retries_caused(),
        }, leg.name
    injected = {kind: sum(row[f"injected {kind}"] for row in outcome.rows) for kind in ("reset", "5xx", "truncate", "slow")}
    assert min(injected.values()) > 0, injected  # the common kinds all met (throttles are rare on purpose)
