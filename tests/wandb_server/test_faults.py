"""Limits and injected faults answer like W&B and S3 do (429 + Retry-After, 5xx, drops, SlowDown)."""

from __future__ import annotations

import json
import sys

import aiohttp
import pytest

from tests.wandb_server import dataset
from tests.wandb_server.conftest import run_sdk_writer
from tests.wandb_server.wire import FakeClock, file_stream, gql, upsert_run


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def faults(wandb_server, clock):
    """The session server's fault knobs on a fake clock; always reset afterwards."""
    wandb_server.faults.reset()
    wandb_server.faults.clock = clock
    yield wandb_server.faults
    wandb_server.faults.reset()


async def test_file_stream_limit_per_run_is_429_with_retry_after(session, wandb_server, faults, clock):
    await upsert_run(session, wandb_server, "limited", project="faults")
    await upsert_run(session, wandb_server, "other", project="faults")
    faults.filestream_rps_per_run = 2
    line = {"files": {"wandb-history.jsonl": {"offset": 0, "content": [json.dumps({"_step": 0})]}}}
    answers = [await file_stream(session, wandb_server, "limited", line, project="faults") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert [(h["RateLimit-Remaining"], h["RateLimit-Reset"]) for _, _, h in answers] == [("500", "1"), ("0", "1"), ("0", "1")]
    status, body, headers = await file_stream(session, wandb_server, "limited", line, project="faults")
    assert (status, headers["Retry-After"]) == (429, "1")
    assert "rate limit" in body["error"].lower()
    assert (await file_stream(session, wandb_server, "other", line, project="faults"))[0] == 200  # per run
    clock.advance(1.0)
    assert (await file_stream(session, wandb_server, "limited", line, project="faults"))[0] == 200
    assert faults.injected["ratelimit:filestream"] == 2


async def test_run_creation_limit_per_project(session, wandb_server, faults, clock):
    faults.run_creation_rps_per_project = 1
    assert (await upsert_run(session, wandb_server, "c1", project="creation"))[0] == 200
    status, body, headers = await upsert_run(session, wandb_server, "c2", project="creation")
    assert (status, headers["Retry-After"]) == (429, "1")
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert (await upsert_run(session, wandb_server, "c1", project="creation"))[0] == 200  # updates are free
    assert (await upsert_run(session, wandb_server, "c2", project="creation-b"))[0] == 200  # per project
    clock.advance(1.0)
    assert (await upsert_run(session, wandb_server, "c2", project="creation"))[0] == 200


async def test_scripted_statuses_then_recovery(session, wandb_server, faults):
    faults.script("graphql", [500, 502, 429])
    statuses = []
    for _ in range(4):
        status, _, headers = await gql(session, wandb_server, "{ viewer { username } }")
        statuses.append(status)
    assert statuses == [500, 502, 429, 200]
    with pytest.raises(ValueError):
        faults.script("nowhere", [500])


async def test_connection_drop(session, wandb_server, faults):
    faults.script("graphql", ["drop"])
    with pytest.raises(aiohttp.ClientError):
        await gql(session, wandb_server, "{ viewer { username } }")
    assert (await gql(session, wandb_server, "{ viewer { username } }"))[0] == 200


async def test_random_errors_follow_rate_and_targets(session, wandb_server, faults):
    faults.error_rate = 1.0
    faults.error_status = 503
    faults.targets = ("filestream",)
    assert (await gql(session, wandb_server, "{ viewer { username } }"))[0] == 200
    await upsert_run(session, wandb_server, "flaky", project="faults")
    status, _, _ = await file_stream(session, wandb_server, "flaky", {"files": {}}, project="faults")
    assert status == 503
    faults.error_rate = 0.0
    assert (await file_stream(session, wandb_server, "flaky", {"files": {}}, project="faults"))[0] == 200


async def test_storage_slowdown_above_rate(session, wandb_server, faults, clock):
    await upsert_run(session, wandb_server, "store", project="faults")
    mutation = """mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, $files: [String!]!) {
      createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) { files { name uploadUrl } } }"""
    _, body, _ = await gql(session, wandb_server, mutation, {"entity": "runferry", "project": "faults", "run": "store", "files": ["f.bin"]})
    url = body["data"]["createRunFiles"]["files"][0]["uploadUrl"]
    faults.storage_slowdown_rps = 1
    async with session.put(url, data=b"one") as response:
        assert response.status == 200
    async with session.put(url, data=b"two") as response:
        assert response.status == 503
        text = await response.text()
        assert "<Code>SlowDown</Code>" in text
    clock.advance(1.0)
    async with session.put(url, data=b"three") as response:
        assert response.status == 200
    faults.storage_slowdown_rps = None
    async with session.get(url) as response:
        assert await response.read() == b"three"


def test_official_sdk_rides_out_injected_faults(wandb_server, faults, tmp_path):
    """5xx on GraphQL and file_stream plus a 429: the SDK retries and nothing is lost."""
    faults.script("graphql", [503])
    faults.script("filestream", [500, 429])
    write = run_sdk_writer(wandb_server, sys.executable, "faulty", "small", tmp_path)
    run = wandb_server.state.run(wandb_server.entity, "faulty", dataset.HISTORY_RUN)
    assert [json.loads(line)["_step"] for line in run.history] == list(range(dataset.STEPS))
    assert (run.state, run.exitcode) == ("finished", 0)
    assert faults.injected == {"scripted:graphql:503": 1, "scripted:filestream:500": 1, "scripted:filestream:429": 1}
    assert "WROTE" in write.stdout


async def test_latency_is_applied_to_targets_only(session, wandb_server, faults):
    faults.latency_s = 0.01
    faults.targets = ("graphql",)
    assert (await gql(session, wandb_server, "{ viewer { username } }"))[0] == 200
    async with session.get(f"{wandb_server.base_url}/healthz") as response:
        assert response.status == 200
    assert faults.injected == {"latency:graphql": 1}
