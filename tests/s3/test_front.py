"""The throttling front's own pieces: its token bucket and its in-process (thread) mode."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from adapters.s3 import S3Config
from tests.servers.s3front import FrontSettings, S3Front, TokenBucket


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0, 0.0, 0.0], [True, True, False]),  # capacity 2, nothing refilled
        ([0.0, 0.0, 0.1], [True, True, True]),  # 10/s: one token back after 0.1 s
        ([0.0, 0.0, 0.05, 0.1], [True, True, False, True]),  # a rejected request takes no token
        ([0.0, 10.0, 10.0, 10.0], [True, True, True, False]),  # refill stops at capacity
    ],
)
def test_token_bucket(times: list[float], expected: list[bool]) -> None:
    bucket = TokenBucket(rate=10.0, capacity=2.0, now=0.0)
    assert [bucket.take(t) for t in times] == expected


def test_in_process_front_throttles_and_reports() -> None:
    front = S3Front("sink", FrontSettings(write_rate=0.001, burst_seconds=0.0)).start()
    try:
        def put(path: str) -> int:
            request = urllib.request.Request(front.url + path, data=b"x", method="PUT")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                body = exc.read()
                assert b"<Code>SlowDown</Code>" in body
                return int(exc.code)

        assert [put("/bkt/runs/a"), put("/bkt/runs/b"), put("/bkt/other/c")] == [200, 503, 200]
        with urllib.request.urlopen(front.url + "/__front__/stats", timeout=30) as response:
            stats = response.read()
        assert b'"bkt/runs":{"accepted":1,"throttled":1' in stats
    finally:
        front.stop()


def test_s3_config_from_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    config = S3Config.from_mlflow_env(part_concurrency=4)
    assert (config.endpoint_url, config.region, config.part_concurrency) == ("http://127.0.0.1:9000", "eu-west-1", 4)
