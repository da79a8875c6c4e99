"""Run admission by memory budget and endpoint headroom, and the file stage as streams: the
pipeline against in-memory adapters, driven by events and a fake clock (no sleeps)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.admission import (
    BYTES_PER_POINT,
    ENDPOINT_BACKLOG_SECONDS,
    RUN_OVERHEAD_BYTES,
    MemoryBudget,
    endpoint_blocker,
    run_seat_bytes,
)
from engine.ledger import Ledger, pair_key
from core.model import FileRef, RunRecord
from engine.pipeline import migrate
from engine.progress import Progress
from ratelimit import FakeClock, LimiterRegistry, LimiterStatistics
from tests.engine.fakes import FakeDestination, FakeSource, FakeWriter
from tests.engine.test_pipeline import assert_same_batches, make_config


class RecordingProgress(Progress):
    """Progress that remembers every event with the budget in use at that moment, and lets a
    test wait for an event."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__(mode="quiet", stream=io.StringIO())
        self.now = clock or (lambda: 0.0)
        self.log: list[tuple[str, dict[str, Any], int, float]] = []
        self._waiters: list[tuple[Callable[[str, dict[str, Any]], bool], anyio.Event]] = []

    def event(self, name: str, **fields: Any) -> None:
        super().event(name, **fields)
        used = self.admission.budget.used if self.admission is not None else 0
        self.log.append((name, fields, used, self.now()))
        for match, seen in self._waiters:
            if match(name, fields):
                seen.set()

    def seen(self, match: Callable[[str, dict[str, Any]], bool]) -> anyio.Event:
        event = anyio.Event()
        if any(match(name, fields) for name, fields, _, _ in self.log):
            event.set()
        self._waiters.append((match, event))
        return event

    def names(self, name: str) -> list[str]:
        return [str(f.get("run")) for n, f, _, _ in self.log if n == name]


def started(run: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda name, fields: name == "run_started" and fields.get("run") == run


def admission_waits(kind: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda name, fields: name == "admission_wait" and str(fields.get("reason")).startswith(kind)


async def run1_waits(progress: RecordingProgress, kind: str) -> None:
    """Until run0 is in flight and admission of run1 waits on ``kind``, and all is quiet."""
    await progress.seen(admission_waits(kind)).wait()
    await progress.seen(started("run0")).wait()
    await anyio.wait_all_tasks_blocked()


class GatedWriter(FakeWriter):
    """Waits for ``history_gate`` before its first chunk and ``finish_gate`` before finishing."""

    history_gate: anyio.Event | None = None
    finish_gate: anyio.Event | None = None

    async def write_history(self, chunk):  # type: ignore[no-untyped-def]
        if self.history_gate is not None:
            await self.history_gate.wait()
        await super().write_history(chunk)

    async def finish(self, run: RunRecord) -> None:
        if self.finish_gate is not None:
            await self.finish_gate.wait()
        await super().finish(run)


def gate_run0(dest: FakeDestination, *, history: anyio.Event | None, finish: anyio.Event | None) -> None:
    async def open_gated(run, resume):  # type: ignore[no-untyped-def]
        dest.store.opened.append((run.ref.id, resume))
        writer = GatedWriter(dest.store, run, resume, set())
        if run.ref.id == "run0":
            writer.history_gate, writer.finish_gate = history, finish
        dest.writers.append(writer)
        return writer

    dest.open_run = open_gated  # type: ignore[method-assign]


def ledger_of(tmp_path: Path, source: FakeSource, dest: FakeDestination) -> Ledger:
    return Ledger.read(tmp_path / "ledger.jsonl", pair_key(source.describe(), dest.describe()))


# -- the budget and the headroom rule, alone -------------------------------------------------------


async def test_budget_waiters_are_served_in_order_and_an_overdraft_never_waits() -> None:
    budget = MemoryBudget(100)
    await budget.take(60)
    order: list[str] = []

    async def take(name: str, nbytes: int) -> None:
        await budget.take(nbytes)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "big", 80)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, "small", 10)  # fits, but must not overtake the waiting big one
        await anyio.wait_all_tasks_blocked()
        assert order == [] and budget.waiting == 2
        await budget.take(500, overdraft=True)  # a run holding nothing else always progresses
        assert budget.used == 560
        budget.give(500)
        budget.give(60)
    assert order == ["big", "small"]
    assert budget.used == 90


async def test_a_budget_waiter_cancelled_leaves_nothing_taken() -> None:
    budget = MemoryBudget(100)
    await budget.take(100)
    with anyio.move_on_after(0) as scope:  # cancelled while it waits
        await budget.take(50)
    assert scope.cancelled_caught
    assert (budget.used, budget.waiting) == (100, 0)


def stats(endpoint: str, **figures: Any) -> LimiterStatistics:
    base = dict(endpoint=endpoint, time=0.0, concurrency_limit=4, in_flight=0, waiting=0, rate_limit=None,
                accepted_rate=0.0, attempt_rate=0.0, paused_for=0.0, successes=0, throttles=0, failures=0,
                retries=0, retries_refused=0, budget=500.0)
    return LimiterStatistics(**{**base, **figures})  # type: ignore[arg-type]


def test_endpoint_headroom_rule() -> None:
    assert endpoint_blocker([stats("a"), stats("b", in_flight=4, waiting=3)]) is None
    assert endpoint_blocker([stats("a"), stats("b", paused_for=2.0)]) == "b paused"
    assert endpoint_blocker([stats("a", rate_limit=2.0, waiting=1)]) == "a throttled"
    assert endpoint_blocker([stats("a", rate_limit=2.0, in_flight=1)]) is None  # paced, nothing queued
    assert endpoint_blocker([stats("a", waiting=4)]) == "a saturated"


def test_a_paced_endpoint_whose_queue_clears_before_the_next_look_has_headroom() -> None:
    # paced at 40/s after a 429: a queue the pace clears in ENDPOINT_BACKLOG_SECONDS (0.3 s, 12
    # requests) is no backlog: it keeps the turns until admission looks again, and a new run's
    # way to the endpoint, from going unused; thirteen waiting are a backlog
    assert ENDPOINT_BACKLOG_SECONDS == 0.3
    assert endpoint_blocker([stats("a", concurrency_limit=16, rate_limit=40.0, waiting=1)]) is None
    assert endpoint_blocker([stats("a", concurrency_limit=16, rate_limit=40.0, waiting=12)]) is None
    assert endpoint_blocker([stats("a", concurrency_limit=16, rate_limit=40.0, waiting=13)]) == "a throttled"
    # at 80/s the concurrency window (16) fills before 0.3 s of pace (24) is queued
    assert endpoint_blocker([stats("a", concurrency_limit=16, rate_limit=80.0, waiting=16)]) == "a saturated"


# -- admission in the pipeline ----------------------------------------------------------------------


async def test_admission_waits_on_memory_and_resumes_when_it_frees(tmp_path: Path) -> None:
    seat = run_seat_bytes(128)
    # room for one finished-history run (its overhead) plus one seat, not for two seats
    config = make_config(tmp_path, memory_budget=RUN_OVERHEAD_BYTES + seat)
    source, dest = FakeSource(runs=2, points=300, files={}), FakeDestination()
    source.context = dataclasses.replace(source.context, chunk_points=128)
    history, finish = anyio.Event(), anyio.Event()
    gate_run0(dest, history=history, finish=finish)
    progress = RecordingProgress()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: migrate(config, progress=progress, adapters=(source, dest)))
            await run1_waits(progress, "memory")
            assert progress.names("run_started") == ["run0"]
            assert [run for run, _ in dest.store.opened] == ["run0"]
            assert progress.admission.figures()["admission_waits_on"] == "memory"
            history.set()  # run0's chunks are written and released; it stays in flight
            await progress.seen(started("run1")).wait()
            assert "run0" not in dest.store.finished  # admitted beside run0, not after it
            finish.set()
    assert sorted(progress.names("run_done")) == ["run0", "run1"]
    for i in range(2):
        assert_same_batches(dest.store.table(f"run{i}"), source.full_history(f"run{i}"))
    assert progress.admission.budget.used == 0
    assert progress.totals.admission_waits["memory"] >= 1


async def test_admission_waits_on_a_throttled_endpoint_and_resumes_when_it_frees(tmp_path: Path) -> None:
    clock = FakeClock()
    limiters = LimiterRegistry(clock=clock)
    endpoint = limiters.get("http://127.0.0.1:9")
    async with endpoint.slot() as ticket:
        ticket.throttled(retry_after=30.0)  # the server asked for 30 s of quiet
    config = make_config(tmp_path)
    source, dest = FakeSource(runs=2, points=300, files={}), FakeDestination()
    source.context = dataclasses.replace(source.context, chunk_points=128)
    finish = anyio.Event()
    gate_run0(dest, history=None, finish=finish)
    progress = RecordingProgress(clock.now)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: migrate(config, progress=progress, adapters=(source, dest), limiters=limiters))
            await progress.seen(admission_waits("endpoint")).wait()
            await progress.seen(started("run0")).wait()
            assert progress.names("run_started") == ["run0"]
            await progress.seen(started("run1")).wait()
            finish.set()
    waits = [f["reason"] for n, f, _, _ in progress.log if n == "admission_wait"]
    assert waits == ["endpoint http://127.0.0.1:9 paused"]
    started_at = {f["run"]: t for n, f, _, t in progress.log if n == "run_started"}
    assert started_at["run0"] == 0.0
    assert started_at["run1"] >= 30.0  # not before the pause ended
    assert sorted(dest.store.finished) == ["run0", "run1"]


async def test_an_explicit_cap_still_bounds_runs_in_flight(tmp_path: Path) -> None:
    config = make_config(tmp_path, runs_concurrency=1)
    source, dest = FakeSource(runs=3, points=10, files={}), FakeDestination()
    progress = RecordingProgress()
    source.context = dataclasses.replace(source.context, chunk_points=128)
    with anyio.fail_after(30):
        await migrate(config, progress=progress, adapters=(source, dest))
    lifecycle = [(n, f["run"]) for n, f, _, _ in progress.log if n in ("run_started", "run_done")]
    assert lifecycle == [(kind, f"run{i}") for i in range(3) for kind in ("run_started", "run_done")]
    assert progress.totals.admission_waits["cap"] >= 1


async def test_cancelled_while_waiting_for_admission_nothing_is_half_started(tmp_path: Path) -> None:
    config = make_config(tmp_path, memory_budget=1)
    source, dest = FakeSource(runs=2, points=300, files={}), FakeDestination()
    source.context = dataclasses.replace(source.context, chunk_points=128)
    gate_run0(dest, history=anyio.Event(), finish=None)  # run0 never gets further
    read: list[str] = []
    get_run = source.get_run

    async def recording_get_run(ref):  # type: ignore[no-untyped-def]
        read.append(ref.id)
        return await get_run(ref)

    source.get_run = recording_get_run  # type: ignore[method-assign]
    progress = RecordingProgress()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: migrate(config, progress=progress, adapters=(source, dest)))
            await run1_waits(progress, "memory")
            tg.cancel_scope.cancel()
    ledger = ledger_of(tmp_path, source, dest)
    assert sorted(ledger.entries) == ["run0"]
    assert [run for run, _ in dest.store.opened] == ["run0"]
    assert read == ["run0"]
    assert progress.names("run_started") == ["run0"]
    assert all(w.closed for w in dest.writers)


async def test_a_small_run_reserves_for_its_points_not_for_a_full_chunk(tmp_path: Path) -> None:
    config = make_config(tmp_path, chunk_points=100_000)
    source, dest = FakeSource(runs=1, points=200, files={}), FakeDestination()
    source.context = dataclasses.replace(source.context, chunk_points=100_000)
    progress = RecordingProgress()
    with anyio.fail_after(30):
        await migrate(config, progress=progress, adapters=(source, dest))
    used = {name: u for name, _, u, _ in progress.log}
    assert used["run_started"] == RUN_OVERHEAD_BYTES + 200 * BYTES_PER_POINT
    chunk_bytes = source.full_history("run0").nbytes
    assert max(u for _, _, u, _ in progress.log) <= RUN_OVERHEAD_BYTES + 200 * BYTES_PER_POINT + chunk_bytes
    assert used["run_done"] == RUN_OVERHEAD_BYTES  # its history done, the run still holds its overhead
    assert progress.admission.budget.used == 0
    assert_same_batches(dest.store.table("run0"), source.full_history("run0"))


# -- the file stage ---------------------------------------------------------------------------------


class CountingSource(FakeSource):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads: list[tuple[str, str]] = []

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncIterator[bytes]:
        self.reads.append((run.ref.id, file.path))
        async for piece in super().read_file(run, file):
            yield piece


async def test_a_resumed_run_does_not_copy_again_files_the_ledger_records_as_done(tmp_path: Path) -> None:
    files = {"a.txt": b"a" * 450, "b.txt": b"b" * 120, "c.txt": b"c" * 7}
    source = CountingSource(runs=1, points=50, files=files)
    dest = FakeDestination(fail_files={"b.txt"})
    config = make_config(tmp_path, file_workers=1)  # one file at a time: a.txt is done before b.txt fails
    source.context = dataclasses.replace(source.context, chunk_points=128)
    first = await migrate(config, progress=Progress.quiet(), adapters=(source, dest))
    assert first.progress.totals.failures == [("run0", "FatalError: refusing b.txt")]
    assert set(ledger_of(tmp_path, source, dest).entries["run0"].files) == {"a.txt"}
    assert first.progress.admission.budget.used == 0  # a failed run holds nothing

    source.reads.clear()
    second = await migrate(config, progress=Progress.quiet(), adapters=(source, FakeDestination(store=dest.store)))
    assert second.exit_code == 0
    assert sorted(source.reads) == [("run0", "b.txt"), ("run0", "c.txt")]
    assert dest.store.files["run0"] == files


async def test_files_wait_for_the_shared_file_worker_slots(tmp_path: Path) -> None:
    files = {f"f{i}.bin": bytes([i]) * (1000 + i) for i in range(6)}
    source, dest = FakeSource(runs=3, points=20, files=files), FakeDestination()
    in_flight, peak = 0, 0
    write_file = FakeWriter.write_file

    async def counting_write_file(self, file, data):  # type: ignore[no-untyped-def]
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await anyio.wait_all_tasks_blocked()
            await write_file(self, file, data)
        finally:
            in_flight -= 1

    config = make_config(tmp_path, file_workers=2)
    source.context = dataclasses.replace(source.context, chunk_points=128)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FakeWriter, "write_file", counting_write_file)
        report = await migrate(config, progress=Progress.quiet(), adapters=(source, dest))
    assert report.exit_code == 0
    assert peak == 2
    assert all(dest.store.files[f"run{i}"] == files for i in range(3))


async def test_runs_whose_seats_outgrew_the_budget_still_get_their_next_chunk() -> None:
    # seats trued up past the limit (a run's chunks were bigger than estimated): every run holds
    # a chunk in its writer and waits for the next; as each writer finishes, that run's waiting
    # reservation must go through (it holds nothing else), or they all wait for each other
    budget = MemoryBudget(100)
    from engine.admission import RunAccount

    accounts = []
    for _ in range(3):
        budget.used += 30  # admitted seat
        accounts.append(RunAccount(budget, 30))
    for account in accounts:
        account.resize_seat(45)  # trued up: 135 used of 100
        await account.reserve(10)  # its first chunk: overdraft (it held nothing)
    got: list[int] = []

    async def next_chunk(i: int) -> None:
        await accounts[i].reserve(10)
        got.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(next_chunk, i)
        await anyio.wait_all_tasks_blocked()
        assert got == [] and budget.waiting == 3  # nothing fits: 165 used of 100
        accounts[1].release(10)  # run 1's writer is done with its first chunk
        await anyio.wait_all_tasks_blocked()
        assert got == [1] and budget.waiting == 2  # run 1 overdraws (it holds nothing else)
        accounts[2].release(10)
        accounts[0].release(10)
    assert sorted(got) == [0, 1, 2]
    assert budget.used == 3 * 45 + 3 * 10
    for account in accounts:
        account.close()
    assert budget.used == 0


async def test_one_overdraft_at_a_time_per_run() -> None:
    budget = MemoryBudget(10)
    from engine.admission import RunAccount

    budget.used += 10
    account = RunAccount(budget, 10)
    await account.reserve(5)  # overdraft: held nothing
    got: list[str] = []

    async def reserve(name: str) -> None:
        await account.reserve(5)
        got.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reserve, "history")
        tg.start_soon(reserve, "file piece")
        await anyio.wait_all_tasks_blocked()
        account.release(5)  # holds nothing: one waiter may overdraw, not both
        await anyio.wait_all_tasks_blocked()
        assert len(got) == 1 and budget.waiting == 1
        account.release(5)
    assert len(got) == 2
