"""Failures between us and a real MLflow server: throttles, 5xx, resets, truncated bodies,
lost answers, servers that ignore paging, rejected credentials."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow import MlflowDestination, MlflowSource
from adapters.http import Classification
from adapters.mlflow._client import classify_mlflow
from core.errors import AuthError
from tests.adapters.contract import all_refs, assert_history_equal
from tests.mlflow.fault_proxy import (
    BAD_JSON,
    LOST_ANSWER,
    RESET,
    TRUNCATE,
    Answer,
    FaultProxy,
)
from tests.mlflow.helpers import (
    Events,
    assert_same_run,
    context,
    copy_all,
    dest_config,
    dest_run_for,
    quick_recovery,
    source_config,
)
from tests.mlflow.seed import EDGE_POINTS, Seeded
from tests.servers.mlflow_server import MlflowServer

THROTTLE = Answer(429, headers={"Retry-After": "0.05"})
OVERLOADED = Answer(503)
BROKEN = Answer(500)
# what an MLflow server with a SQL store answers when its database connections ran out
POOL_TIMEOUT = Answer(400, b'{"error_code": "BAD_REQUEST", "message": "QueuePool limit of size 5 overflow 10 reached, '
                           b'connection timed out, timeout 30.00"}')
SQLITE_LOCKED = Answer(500, b'{"error_code": "INTERNAL_ERROR", "message": "(sqlite3.OperationalError) database is locked"}')


@pytest.fixture(scope="module")
def source_proxy(source_server: MlflowServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(source_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def dest_proxy(dest_server: MlflowServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(dest_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxies(source_proxy: FaultProxy, dest_proxy: FaultProxy) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    source_proxy.reset()
    dest_proxy.reset()
    yield source_proxy, dest_proxy
    source_proxy.reset()
    dest_proxy.reset()


async def read_history(source: MlflowSource, run_id: str) -> pa.Table:
    async with contextlib.aclosing(source.list_runs()) as refs:
        async for ref in refs:
            if ref.id == run_id:
                record = await source.get_run(ref)
                break
        else:
            raise AssertionError(f"run {run_id} not listed")
    async with contextlib.aclosing(source.iter_history(record)) as chunks:
        return pa.Table.from_batches([c.batch async for c in chunks])


@pytest.mark.parametrize("bulk", [True, False], ids=["get-history-bulk", "get-history-paged"])
async def test_source_rides_out_faults(source_server: MlflowServer, seeded: Seeded, proxies: Any, bulk: bool) -> None:
    proxy, _ = proxies
    direct_cfg = source_config(source_server.url, experiments=[seeded.edge_name], history_page_size=400)
    async with MlflowSource(direct_cfg, context()) as direct:
        expected = await read_history(direct, seeded.runs["edge"])
    proxy.fail("experiments/search", THROTTLE, RESET)
    proxy.fail("runs/search", OVERLOADED, BAD_JSON)
    proxy.fail("metrics/get-history", TRUNCATE, THROTTLE, BROKEN, RESET, BAD_JSON)  # either endpoint
    events = Events()
    cfg = source_config(proxy.url, experiments=[seeded.edge_name], history_page_size=400, bulk_history=bulk)
    async with MlflowSource(cfg, context(700, events, limiters=quick_recovery())) as source:
        got = await read_history(source, seeded.runs["edge"])
    assert proxy.pending() == 0
    assert_history_equal(got, expected)
    assert got.num_rows == 2500 + 300 + len(EDGE_POINTS)
    assert (proxy.count("get-history-bulk") > 0) is bulk
    throttles = sorted((e["status"], e["retry_after"] or 0.0) for e in events.named("throttle"))
    assert throttles == [(429, 0.05), (429, 0.05), (503, 0.0)]
    errors = [e["error"] for e in events.named("retry")]
    # every injected failure was retried (a reset of a reused connection may instead be retried
    # inside aiohttp, which re-sends idempotent requests once on its own)
    for sign in ("-> 429", "-> 503", "-> 500", "invalid JSON body"):
        assert any(sign in e for e in errors), (sign, errors)
    assert any("get-history" in e and ("Payload" in e or "invalid JSON" in e) for e in errors), errors


async def test_server_that_ignores_paging(source_server: MlflowServer, seeded: Seeded, proxies: Any) -> None:
    proxy, _ = proxies
    async with MlflowSource(source_config(source_server.url, experiments=[seeded.edge_name], history_page_size=100), context()) as direct:
        expected = await read_history(direct, seeded.runs["edge"])
    assert expected.num_rows == 2500 + 300 + len(EDGE_POINTS)
    proxy.ignore_paging = True
    paged = source_config(proxy.url, experiments=[seeded.edge_name], history_page_size=100, bulk_history=False)
    async with MlflowSource(paged, context()) as source:
        got = await read_history(source, seeded.runs["edge"])
    assert_history_equal(got, expected)
    assert proxy.count("metrics/get-history") == 3  # one answer per key, no page loop


async def test_destination_rides_out_faults_without_duplicates(
    source_server: MlflowServer, seeded: Seeded, proxies: Any, source_client: MlflowClient, dest_client: MlflowClient
) -> None:
    _, proxy = proxies
    # a lost answer to runs/create: the run exists; the retry must find it, not make a second one
    proxy.fail("runs/create", LOST_ANSWER, OVERLOADED, POOL_TIMEOUT)
    proxy.fail("runs/log-batch", THROTTLE, LOST_ANSWER, OVERLOADED, RESET, LOST_ANSWER, BROKEN, POOL_TIMEOUT)
    proxy.fail("runs/update", RESET, SQLITE_LOCKED)
    proxy.fail("mlflow-artifacts/artifacts/", OVERLOADED, LOST_ANSWER)
    cfg_src = source_config(source_server.url, experiments=[seeded.edge_name], include_deleted=True)
    cfg_dst = dest_config(proxy.url, experiment=f"faults-{seeded.suffix}{{experiment}}")
    async with MlflowSource(cfg_src, context()) as src, MlflowDestination(cfg_dst, context(limiters=quick_recovery())) as dst:
        mapping = await copy_all(src, dst)
    assert proxy.pending() == 0
    for src_id, dst_id in mapping.items():
        assert len(dest_run_for(dest_client, f"faults-{seeded.suffix}{seeded.edge_name}", src_id)) == 1
        assert_same_run(source_client, dest_client, src_id, dst_id, parent_map=mapping)


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_credentials_fail_before_any_work(
    seeded: Seeded, proxies: Any, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, _ = proxies
    monkeypatch.setenv("RF_TEST_USER", "someone")
    monkeypatch.setenv("RF_TEST_PASSWORD", "s3cret-password")
    proxy.fail("experiments/search", Answer(status, b'{"error_code": "UNAUTHENTICATED", "message": "bad user"}'))
    cfg = source_config(proxy.url, username_env="RF_TEST_USER", password_env="RF_TEST_PASSWORD")
    with pytest.raises(AuthError) as caught:
        async with MlflowSource(cfg, context()):
            pass
    message = str(caught.value)
    assert str(status) in message and "bad user" in message
    assert "s3cret" not in message
    assert proxy.count("runs/search") == 0


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, POOL_TIMEOUT.body, Classification.THROTTLE),
        (500, SQLITE_LOCKED.body, Classification.THROTTLE),
        (400, b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "bad key"}', Classification.FATAL),
        (429, b'{"error_code": "REQUEST_LIMIT_EXCEEDED"}', Classification.THROTTLE),
        (400, b'{"error_code": "REQUEST_LIMIT_EXCEEDED"}', Classification.THROTTLE),
        (400, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', Classification.TRANSIENT),
        (500, b'{"error_code": "INTERNAL_ERROR"}', Classification.TRANSIENT),
        (501, b"", Classification.FATAL),
    ],
)
def test_mlflow_answers_are_classified(status: int, body: bytes, expected: Classification) -> None:
    assert classify_mlflow(status, {}, body) is expected


async def test_requests_in_flight_stay_within_max_in_flight(
    source_server: MlflowServer, seeded: Seeded, proxies: Any, dest_client: MlflowClient
) -> None:
    """A one-worker server with a SQL store jams when more requests than its connection pool
    wait inside it; the client keeps the rest waiting on its side instead."""
    source_proxy, dest_proxy = proxies
    # held until two overlap, so the lower bounds below hold on any machine
    source_proxy.gather, source_proxy.gather_path = 2, "metrics/get-history"
    dest_proxy.gather, dest_proxy.gather_path = 2, "runs/log-batch"
    cfg_src = source_config(source_proxy.url, experiments=[seeded.many_name], max_in_flight=3, bulk_history=False)
    cfg_dst = dest_config(dest_proxy.url, experiment=f"in-flight-{seeded.suffix}{{experiment}}", max_in_flight=4)
    mapping: dict[str, str] = {}

    async def copy_run(src: MlflowSource, dst: MlflowDestination, ref: Any) -> None:
        record = await src.get_run(ref)
        writer = await dst.open_run(record, None)
        try:
            async with contextlib.aclosing(src.iter_history(record)) as chunks:
                async for chunk in chunks:
                    await writer.write_history(chunk)
            await writer.flush_history()
            await writer.finish(record)
        finally:
            await writer.aclose()
        mapping[ref.id] = writer.dest_id

    async with MlflowSource(cfg_src, context()) as src, MlflowDestination(cfg_dst, context()) as dst:
        async with anyio.create_task_group() as tg:  # every run at once
            for ref in await all_refs(src):
                tg.start_soon(copy_run, src, dst, ref)
    assert sorted(mapping) == sorted(seeded.many_runs)
    assert 1 < source_proxy.most_in_flight <= 3
    assert 1 < dest_proxy.most_in_flight <= 4
