"""The W&B destination against the loopback W&B-compatible server, read back with wandb.Api."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from core.protocols import Checkpoint
from core.errors import AuthError, ConfigError
from core.model import (
    ArtifactRef,
    FileRef,
    HistoryChunk,
    Namespace,
    RunRecord,
    RunRef,
    RunState,
    history_batch,
)

from .conftest import Events, make_destination, pieces, same_value, wandb_api

NAN, INF = float("nan"), float("inf")


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def record(project: str, run_id: str = "run1", **kw) -> RunRecord:
    kw.setdefault("start_time", 1700000000.0)
    kw.setdefault("end_time", 1700000100.0)
    return RunRecord(ref=RunRef(id=run_id, namespace=Namespace("", project)), **kw)


def step_major(steps: int, keys: list[str], *, t0: float = 1700000000.0) -> tuple[list, list, list, list]:
    rng = np.random.default_rng(7)
    k, s, t, v = [], [], [], []
    for step in range(steps):
        for key in keys:
            k.append(key)
            s.append(step)
            t.append(t0 + step * 0.125 + 0.001)
            v.append(float(rng.normal()))
    for i, special in zip(range(3, len(v), 97), [NAN, INF, -INF, -0.0] * 1000):
        v[i] = special
    return k, s, t, v


def chunks(cols: tuple[list, list, list, list], size: int, start: int = 0) -> list[HistoryChunk]:
    k, s, t, v = cols
    return [HistoryChunk(history_batch(k[i:i + size], s[i:i + size], t[i:i + size], v[i:i + size]), i)
            for i in range(start, len(k), size)]


def expected_rows(cols: tuple[list, list, list, list], t0: float) -> list[dict]:
    rows: dict[int, dict] = {}
    for key, step, ts, value in zip(*cols):
        row = rows.setdefault(step, {"_step": step})
        row[key] = value
        row["_timestamp"] = max(row.get("_timestamp", ts), ts)
    for row in rows.values():
        row["_runtime"] = row["_timestamp"] - t0
    return [rows[s] for s in sorted(rows)]


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w), (g, w)
        for key in w:
            assert same_value(float(g[key]), float(w[key])), (key, g[key], w[key])


async def test_history_config_summary_state_read_back_exactly(server, project) -> None:
    events = Events()
    cols = step_major(400, ["loss", "acc", "lr/group 0"])
    rec = record(project, display_name="first run", config={"lr": "0.001", "nested": {"depth": [1, 2]}},
                 summary={"loss": 0.5, "acc": NAN, "best": INF}, tags={"team": "vision", "mlflow.user": "ann"},
                 labels=["baseline"], notes="some notes", group="g1", job_type="train", git_commit="abc123",
                 host="box", program="train.py", state=RunState.FINISHED)
    async with make_destination(server, events) as dest:
        writer = await dest.open_run(rec, None)
        for chunk in chunks(cols, 250):
            await writer.write_history(chunk)
        await writer.flush_history()
        assert writer.checkpoint().history_points == 1200
        await writer.finish(rec)
        await writer.aclose()

    stored = server.state.run(server.entity, project, "run1")
    assert len(stored.history) == 400
    # bit-exact text on the wire: -0.0 stays -0.0, NaN/Infinity as the SDK writes them
    raw = "\n".join(stored.history)
    values = cols[3]
    assert raw.count(":NaN") == sum(1 for x in values if math.isnan(x))
    assert raw.count(":Infinity") == values.count(INF) and raw.count(":-Infinity") == values.count(-INF)
    assert raw.count(":-0.0,") + raw.count(":-0.0}") == sum(1 for x in values if x == 0 and math.copysign(1, x) < 0)
    run = wandb_api(server).run(f"{server.entity}/{project}/run1")
    assert run.config["lr"] == "0.001" and run.config["nested"] == {"depth": [1, 2]}
    assert run.config["source_tags"] == {"team": "vision", "mlflow.user": "ann"}
    assert run.config["runferry_source"]["run_id"] == "run1"
    assert run.summary["loss"] == 0.5 and math.isnan(run.summary["acc"]) and run.summary["best"] == INF
    assert run.state == "finished"
    assert run.name == "first run" and run.notes == "some notes" and run.group == "g1" and run.job_type == "train"
    assert set(run.tags) == {"baseline", "team:vision"}
    got = list(run.scan_history(page_size=1000))
    assert_rows_equal(got, expected_rows(cols, 1700000000.0))


async def test_key_major_history_with_collisions(server, project) -> None:
    events = Events()
    # MLflow order: one key's whole history, then the next; key "a" logged twice at step 1
    keys = ["a", "a", "a", "a", "b", "b", "b"]
    steps = [0, 1, 1, 2, 0, 1, 2]
    ts = [1.0, 2.0, 2.5, 3.0, 1.0, 2.5, 3.0]
    values = [1.0, 2.0, 2.1, 3.0, -1.0, -2.0, -3.0]
    rec = record(project, start_time=0.0, end_time=5.0)
    async with make_destination(server, events) as dest:
        writer = await dest.open_run(rec, None)
        await writer.write_history(HistoryChunk(history_batch(keys[:4], steps[:4], ts[:4], values[:4]), 0))
        await writer.write_history(HistoryChunk(history_batch(keys[4:], steps[4:], ts[4:], values[4:]), 4))
        assert writer.checkpoint().history_points == 0  # nothing durable before the sorted flush
        await writer.flush_history()
        assert writer.checkpoint().history_points == 7
        await writer.finish(rec)
    lines = [json.loads(x) for x in server.state.run(server.entity, project, "run1").history]
    assert lines == [
        {"_step": 0, "_runtime": 1.0, "_timestamp": 1.0, "a": 1.0, "b": -1.0},
        {"_step": 1, "_runtime": 2.5, "_timestamp": 2.5, "a": 2.0, "b": -2.0},
        {"_step": 1, "_runtime": 2.5, "_timestamp": 2.5, "a": 2.1},
        {"_step": 2, "_runtime": 3.0, "_timestamp": 3.0, "a": 3.0, "b": -3.0},
    ]
    assert sum(e["n"] for e in events.named("collision")) == 1
    assert sum(e["n"] for e in events.named("timestamp_merged")) == 1


async def test_resume_rewrites_the_same_offsets_without_duplicates(server, project) -> None:
    cols = step_major(300, ["x", "y"])
    all_chunks = chunks(cols, 100)
    rec = record(project)
    async with make_destination(server, max_request_bytes=64 * 1024) as dest:
        writer = await dest.open_run(rec, None)
        for chunk in all_chunks[:3]:
            await writer.write_history(chunk)
        ledger_checkpoint = writer.checkpoint()  # what the ledger holds when the process dies
        for chunk in all_chunks[3:5]:
            await writer.write_history(chunk)  # written to the server, never recorded
        # the process is killed here: no flush, no finish
    assert 0 < ledger_checkpoint.history_points < 300
    stored = server.state.run(server.entity, project, "run1")
    assert len(stored.history) > ledger_checkpoint.state["lines"]
    resumed = Checkpoint(history_points=ledger_checkpoint.history_points, state=json.loads(json.dumps(ledger_checkpoint.state)))
    async with make_destination(server) as dest:
        writer = await dest.open_run(rec, resumed)
        assert writer.checkpoint() == resumed
        start = resumed.history_points
        for chunk in chunks(cols, 100, start):
            await writer.write_history(chunk)
        await writer.flush_history()
        await writer.finish(rec)
    stored = server.state.run(server.entity, project, "run1")
    steps = [json.loads(line)["_step"] for line in stored.history]
    assert steps == list(range(300))  # every line exactly once, in order
    run = wandb_api(server).run(f"{server.entity}/{project}/run1")
    assert_rows_equal(list(run.scan_history(page_size=1000)), expected_rows(cols, 1700000000.0))


async def test_a_small_run_is_one_history_request_and_one_finish_within_the_per_run_burst(
    server, project, fake_clock
) -> None:
    """W&B allows 2 file_stream requests per second per run: a small MLflow-shaped run's lines
    and its summary with ``complete`` are those two, so it never waits a second (the bound
    bench many_small_runs reports counts on it)."""
    server.faults.clock = fake_clock.now
    server.faults.filestream_rps_per_run = 2
    k, s, t, v = step_major(100, ["x", "y"])
    order = sorted(range(len(k)), key=lambda i: (k[i], s[i]))  # MLflow's order: one key's history, then the next
    cols = ([k[i] for i in order], [s[i] for i in order], [t[i] for i in order], [v[i] for i in order])
    rec = record(project)
    async with make_destination(server, clock=fake_clock, filestream_rate=2.0) as dest:
        writer = await dest.open_run(rec, None)
        started = fake_clock.now()
        (chunk,) = chunks(cols, 1000)
        await writer.write_history(chunk)
        await writer.flush_history()
        assert writer.checkpoint().history_points == 200
        await writer.finish(rec)
    assert (writer.stream.requests, fake_clock.now() - started) == (2, 0.0)
    assert server.faults.injected.get("ratelimit:filestream", 0) == 0
    stored = server.state.run(server.entity, project, "run1")
    assert [json.loads(x)["_step"] for x in stored.history] == list(range(100))
    run = wandb_api(server).run(f"{server.entity}/{project}/run1")
    assert_rows_equal(list(run.scan_history(page_size=1000)), expected_rows(cols, 1700000000.0))


def filestream_requests(server, run_id: str) -> int:
    """file_stream POSTs the server accepted for runs named ``run_id``."""
    return sum(1 for kind, name in server.state.request_log if kind == "filestream" and name == run_id)


@pytest.mark.parametrize("keys", [["x"], ["x", "y"]], ids=["one-key-step-major", "two-keys-key-major"])
async def test_a_one_chunk_run_is_two_filestream_requests_at_the_server(server, project, fake_clock, keys) -> None:
    """A one-key run's history streams (step-major): its lines come out of ``write_history``
    but the last step's only at ``flush_history``. The writer holds the first write's lines
    back, so lines go in one request and the summary with ``complete`` in a second: both
    within W&B's per-run burst of 2, counted by the server itself."""
    server.faults.clock = fake_clock.now
    server.faults.filestream_rps_per_run = 2
    k, s, t, v = step_major(200 // len(keys), keys)
    order = sorted(range(len(k)), key=lambda i: (k[i], s[i]))  # MLflow's order: one key's history, then the next
    cols = ([k[i] for i in order], [s[i] for i in order], [t[i] for i in order], [v[i] for i in order])
    run_id = f"small-{len(keys)}"
    rec = record(project, run_id, metric_keys=keys)  # one key: the writer streams it step-major
    async with make_destination(server, clock=fake_clock, filestream_rate=2.0) as dest:
        writer = await dest.open_run(rec, None)
        started = fake_clock.now()
        (chunk,) = chunks(cols, 1000)
        await writer.write_history(chunk)
        assert writer.checkpoint().history_points == 0  # held (one-key) or buffered (key-major): not durable yet
        await writer.flush_history()
        assert writer.checkpoint().history_points == 200  # durable once flush_history returns
        assert filestream_requests(server, run_id) == 1
        await writer.finish(rec)
    assert filestream_requests(server, run_id) == 2 and fake_clock.now() - started == 0.0
    assert server.faults.injected.get("ratelimit:filestream", 0) == 0
    stored = server.state.run(server.entity, project, run_id)
    assert [json.loads(x)["_step"] for x in stored.history] == list(range(200 // len(keys)))
    run = wandb_api(server).run(f"{server.entity}/{project}/{run_id}")
    assert_rows_equal(list(run.scan_history(page_size=1000)), expected_rows(cols, 1700000000.0))


async def test_held_lines_of_a_killed_one_key_run_are_written_once_on_resume(server, project) -> None:
    """The newest write's lines are held, so the ledger's checkpoint lags one write; a process
    killed with lines held (and some sent past the ledger) resumes with every line once."""
    cols = step_major(300, ["x"])
    rec = record(project, metric_keys=["x"])  # one key: lines stream from the first write
    async with make_destination(server) as dest:
        writer = await dest.open_run(rec, None)
        for chunk in chunks(cols, 60)[:3]:
            await writer.write_history(chunk)
        ledger_checkpoint = writer.checkpoint()  # what the ledger holds when the process dies
        await writer.write_history(chunks(cols, 60)[3])  # sends the third write's lines, never recorded
        # killed here: the fourth write's lines held, no flush, no finish
    # writes 1 and 2 are out (steps 0-118: each write's last step waits for the next one);
    # the third write's lines (steps 119-178) were held when the ledger was written
    assert ledger_checkpoint.history_points == 119 and ledger_checkpoint.state["lines"] == 119
    stored = server.state.run(server.entity, project, "run1")
    assert len(stored.history) == 179
    resumed = Checkpoint(history_points=119, state=json.loads(json.dumps(ledger_checkpoint.state)))
    async with make_destination(server) as dest:
        writer = await dest.open_run(rec, resumed)
        for chunk in chunks(cols, 70, 119):  # the source restarts in other chunks
            await writer.write_history(chunk)
        await writer.flush_history()
        assert writer.checkpoint().history_points == 300
        await writer.finish(rec)
    steps = [json.loads(line)["_step"] for line in stored.history]
    assert steps == list(range(300))  # every line exactly once, in order
    run = wandb_api(server).run(f"{server.entity}/{project}/run1")
    assert_rows_equal(list(run.scan_history(page_size=1000)), expected_rows(cols, 1700000000.0))


async def migrate_under_faults(server, project, fake_clock, events, *, filestream_rate: float) -> int:
    cols = step_major(200, ["m1", "m2", "m3"])
    rec = record(project, summary={"m1": 1.0})
    async with make_destination(server, events, clock=fake_clock, filestream_rate=filestream_rate,
                                max_request_bytes=64 * 1024) as dest:
        writer = await dest.open_run(rec, None)
        for chunk in chunks(cols, 50):
            await writer.write_history(chunk)
        await writer.flush_history()
        await writer.finish(rec)
    stored = server.state.run(server.entity, project, "run1")
    assert [json.loads(x)["_step"] for x in stored.history] == list(range(200))
    run = wandb_api(server).run(f"{server.entity}/{project}/run1")
    assert_rows_equal(list(run.scan_history(page_size=1000)), expected_rows(cols, 1700000000.0))
    return writer.stream.pacer.throttles


async def test_per_run_filestream_limit_is_kept_from_the_quota_headers(server, project, fake_clock) -> None:
    events = Events()
    server.faults.clock = fake_clock.now  # the server's 1-second window runs on the test's clock
    server.faults.filestream_rps_per_run = 2  # the server also sends RateLimit-Remaining/-Reset
    started = fake_clock.now()
    before = sum(1 for kind, _ in server.state.request_log if kind == "filestream")
    await migrate_under_faults(server, project, fake_clock, events, filestream_rate=20.0)
    requests = sum(1 for kind, _ in server.state.request_log if kind == "filestream") - before
    # we asked for 20/s, the server's quota said 2/s per run: we kept to it without a 429
    assert server.faults.injected.get("ratelimit:filestream", 0) == 0
    assert requests >= 10 and fake_clock.now() - started >= (requests - 2) / 2


async def test_pacing_at_the_documented_rate_never_trips_the_servers_window(server, project, fake_clock) -> None:
    """2 requests/s per run, read as W&B states it (a sliding one-second window): two at once,
    then two a second later, and the server never answers 429."""
    events = Events()
    server.faults.clock = fake_clock.now
    server.faults.filestream_rps_per_run = 2
    started = fake_clock.now()
    before = sum(1 for kind, _ in server.state.request_log if kind == "filestream")
    throttles = await migrate_under_faults(server, project, fake_clock, events, filestream_rate=2.0)
    requests = sum(1 for kind, _ in server.state.request_log if kind == "filestream") - before
    assert throttles == 0 and server.faults.injected.get("ratelimit:filestream", 0) == 0
    assert requests >= 10 and fake_clock.now() - started >= (requests - 2) / 2


def test_filestream_limits_are_per_run_not_per_host(server) -> None:
    from core.protocols import AdapterContext
    from adapters.wandb._filestream import FileStreamClient
    from ratelimit import LimiterRegistry

    shared = LimiterRegistry()
    client = FileStreamClient(base_url=server.base_url, name="fs", context=AdapterContext(limiters=shared))
    one = client.limiter_for(client.url("files/e/p/run1/file_stream"))
    two = client.limiter_for(client.url("files/e/p/run2/file_stream"))
    assert one is not two and one is client.limiter_for(client.url("files/e/p/run1/file_stream"))
    assert shared.statistics() == []  # the host's shared limiter never sees a run's quota
    client.release("files/e/p/run1/file_stream")
    assert client.limiter_for(client.url("files/e/p/run1/file_stream")) is not one


async def test_server_errors_and_dropped_connections_lose_nothing(server, project, fake_clock) -> None:
    events = Events()
    server.faults.clock = fake_clock.now
    server.faults.script("filestream", [429, 500, "drop", 503])
    server.faults.script("graphql", [502])
    server.faults.error_rate = 0.1
    server.faults.error_status = 500
    server.faults.targets = ("graphql", "filestream")
    throttles = await migrate_under_faults(server, project, fake_clock, events, filestream_rate=20.0)
    assert throttles >= 1
    assert {"scripted:filestream:429", "scripted:filestream:500", "scripted:filestream:drop",
            "scripted:graphql:502"} <= set(server.faults.injected)
    assert events.named("retry")


async def test_run_files_and_artifacts_byte_for_byte(server, project, tmp_path) -> None:
    events = Events()
    big = os.urandom(300_000)
    blobs = {
        "README.md": b"# top-level file\n",
        "model/weights.bin": big,
        "model/sub/dir/config.json": b'{"a": 1}',
        "model/empty.txt": b"",
        "data/part-0.csv": b"x,y\n1,2\n",
    }
    rec = record(project, state=RunState.FAILED)
    async with make_destination(server, events, artifact_layout="folders", multipart_threshold=100_000,
                                part_size=64 * 1024, spool_dir=str(tmp_path)) as dest:
        writer = await dest.open_run(rec, None)
        for path, data in blobs.items():
            await writer.write_file(FileRef(path, size=len(data)), pieces(data, 50_000))
        await writer.write_file(FileRef("eval/report.txt", artifact=ArtifactRef(name="evaluation", type="report")),
                                pieces(b"score=1\n"))
        await writer.flush_history()
        await writer.finish(rec)
    api = wandb_api(server)
    run = api.run(f"{server.entity}/{project}/run1")
    assert run.state == "failed"
    files = {f.name: f for f in run.files()}
    assert "README.md" in files
    files["README.md"].download(root=str(tmp_path / "runfiles"), replace=True)
    assert (tmp_path / "runfiles" / "README.md").read_bytes() == blobs["README.md"]
    arts = {a.name.split(":")[0]: a for a in run.logged_artifacts()}
    assert set(arts) == {"model", "data", "evaluation"}
    root = arts["model"].download(root=str(tmp_path / "model"))
    for path in ("weights.bin", "sub/dir/config.json", "empty.txt"):
        assert read_bytes(os.path.join(root, path)) == blobs[f"model/{path}"]
    assert arts["evaluation"].type == "report"
    committed = events.named("artifact_committed")
    assert {c["artifact"] for c in committed} == {"model", "data", "evaluation"}
    assert not (tmp_path / "runferry-wandb-staging").exists()  # staging removed after commit, its root at close

    # the same run again: the server already has identical artifacts -> deduplicated
    events2 = Events()
    async with make_destination(server, events2, artifact_layout="folders", spool_dir=str(tmp_path)) as dest:
        writer = await dest.open_run(rec, None)
        for path, data in blobs.items():
            if path.startswith("model/"):
                await writer.write_file(FileRef(path), pieces(data, 65_536))
        await writer.flush_history()
        await writer.finish(rec)
    assert [d["artifact"] for d in events2.named("artifact_deduplicated")] == ["model"]


async def test_staged_artifact_members_survive_a_crash(server, project, tmp_path) -> None:
    rec = record(project)
    async with make_destination(server, artifact_layout="single", spool_dir=str(tmp_path)) as dest:
        writer = await dest.open_run(rec, None)
        await writer.write_file(FileRef("a/one.txt"), pieces(b"one"))
        # killed before finish: the ledger says a/one.txt is done
    async with make_destination(server, artifact_layout="single", spool_dir=str(tmp_path)) as dest:
        writer = await dest.open_run(rec, Checkpoint(history_points=0, state={"run_id": "run1", "lines": 0}))
        await writer.write_file(FileRef("b/two.txt"), pieces(b"two"))
        await writer.flush_history()
        await writer.finish(rec)
    (art,) = wandb_api(server).run(f"{server.entity}/{project}/run1").logged_artifacts()
    root = art.download(root=str(tmp_path / "dl"))
    assert read_bytes(os.path.join(root, "a/one.txt")) == b"one"
    assert read_bytes(os.path.join(root, "b/two.txt")) == b"two"


@pytest.mark.parametrize(("state", "wandb_state"), [(RunState.KILLED, "killed"), (RunState.RUNNING, "running")])
async def test_final_states(server, project, state, wandb_state) -> None:
    rec = record(project, state=state)
    async with make_destination(server) as dest:
        writer = await dest.open_run(rec, None)
        await writer.flush_history()
        await writer.finish(rec)
    assert wandb_api(server).run(f"{server.entity}/{project}/run1").state == wandb_state


async def test_wrong_key_is_an_auth_error(server, monkeypatch) -> None:
    monkeypatch.setenv("RUNFERRY_BAD_KEY", "0" * 40)
    with pytest.raises(AuthError) as info:
        async with make_destination(server, api_key_env="RUNFERRY_BAD_KEY"):
            pass
    assert "0" * 40 not in str(info.value)


async def test_missing_key_is_a_config_error(server, monkeypatch) -> None:
    monkeypatch.delenv("RUNFERRY_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError):
        async with make_destination(server, api_key_env="RUNFERRY_UNSET_KEY"):
            pass
