"""log-batch packing within every server limit (pure, no server)."""

from __future__ import annotations

import orjson
import pytest

from adapters.mlflow._batching import (
    Packed,
    clean_entries,
    pack_metrics,
    pack_params_and_tags,
)
from adapters.mlflow._client import decode_value, encode_value, proxied_artifact_path


def entries(prefix: str, n: int, value: str = "v") -> list[dict[str, str]]:
    return [{"key": f"{prefix}{i}", "value": value} for i in range(n)]


@pytest.mark.parametrize(
    ("params", "tags", "sizes"),
    [
        (0, 0, []),
        (1, 1, [(1, 1)]),
        (100, 100, [(100, 100)]),
        (150, 30, [(100, 30), (50, 0)]),
        (250, 250, [(100, 100), (100, 100), (50, 50)]),
    ],
)
def test_params_and_tags_counts(params: int, tags: int, sizes: list[tuple[int, int]]) -> None:
    bodies = list(pack_params_and_tags(entries("p", params), entries("t", tags)))
    assert [(len(b.get("params", [])), len(b.get("tags", []))) for b in bodies] == sizes


def test_params_and_tags_stay_under_one_megabyte() -> None:
    big = "é" * 6000  # 12 kB of UTF-8 each
    bodies = list(pack_params_and_tags(entries("p", 100, big), entries("t", 100, big)))
    assert sum(len(b.get("params", [])) for b in bodies) == 100
    assert sum(len(b.get("tags", [])) for b in bodies) == 100
    assert all(len(orjson.dumps({"run_id": "x" * 32, **b})) < 1_000_000 for b in bodies)
    assert len(bodies) == 3


def test_long_values_cut_and_long_keys_dropped() -> None:
    packed = Packed()
    out = clean_entries([("a", "x" * 6001), ("k" * 251, "v"), ("ok", "y" * 6000)], max_value=6000, packed=packed)
    assert out == [{"key": "a", "value": "x" * 6000}, {"key": "ok", "value": "y" * 6000}]
    assert packed.truncated == ["a"] and packed.dropped == ["k" * 251]


@pytest.mark.parametrize(("n", "key_bytes", "slices"), [(0, 5, []), (1000, 5, [1000]), (2500, 5, [1000, 1000, 500]), (3000, 1002, [807] * 3 + [579])])
def test_metric_slices(n: int, key_bytes: int, slices: list[int]) -> None:
    metrics = [{"key": "k", "value": 1.0, "timestamp": 1, "step": i} for i in range(n)]
    assert [len(s) for s in pack_metrics(metrics, key_bytes=key_bytes)] == slices


def test_special_values_round_trip_as_protobuf_json() -> None:
    assert [encode_value(v) for v in (float("nan"), float("inf"), float("-inf"), -0.0, 1.5)] == [
        "NaN", "Infinity", "-Infinity", -0.0, 1.5
    ]
    decoded = [decode_value(v) for v in ("NaN", "Infinity", "-Infinity", -0.0, 2, None)]
    assert decoded[0] != decoded[0] and decoded[1:3] == [float("inf"), float("-inf")]
    assert str(decoded[3]) == "-0.0" and decoded[4:] == [2.0, 0.0]
    assert orjson.dumps({"v": -0.0}) == b'{"v":-0.0}'


def test_proxied_artifact_urls() -> None:
    assert proxied_artifact_path("mlflow-artifacts:/1/abc/artifacts", "dir with space/ü.txt") == (
        "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/dir%20with%20space/%C3%BC.txt"
    )
    assert proxied_artifact_path("mlflow-artifacts://host:5000/1/abc/artifacts", "a") == (
        "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/a"
    )
    assert proxied_artifact_path("s3://bucket/1/abc/artifacts", "a") is None
