"""Reading one key of many runs per request (``get-history-bulk``): batching of concurrent
asks, answers cut at the point cap, servers without the endpoint, failures and cancellation.

The coalescer is driven by a scripted fetch first (every branch, deterministic: asks wait on
events, never on time), then against the real server, where its answers must equal the paged
``get-history`` reading point for point.
"""

from __future__ import annotations

from typing import Any

import anyio
import pyarrow as pa
import pytest

from adapters.mlflow import MlflowSource
from adapters.mlflow._bulk import BulkHistory
from core.errors import FatalError, NotFoundError
from tests.adapters.contract import all_refs, assert_history_equal, read_history
from tests.mlflow.fault_proxy import Answer, FaultProxy
from tests.mlflow.helpers import context, source_config
from tests.mlflow.seed import Seeded
from tests.servers.mlflow_server import MlflowServer


class ScriptedServer:
    """``fetch`` over in-memory histories, answering as MLflow does: runs sorted by id, cut
    at ``max_points``; ``errors`` are raised by the next calls; ``gate`` holds a call open."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.histories = {run: [{"run_id": run, "step": i, "value": float(i)} for i in range(n)] for run, n in counts.items()}
        self.calls: list[list[str]] = []
        self.errors: list[BaseException] = []
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()

    async def fetch(self, key: str, run_ids: list[str], max_points: int) -> list[dict[str, Any]]:
        assert run_ids == sorted(run_ids)
        self.calls.append(run_ids)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        points = [p for run in run_ids for p in self.histories.get(run, [])]
        return points[:max_points]


class Asker:
    """Asks ``bulk`` for runs' histories of key "k" and keeps each answer under its run."""

    def __init__(self, bulk: BulkHistory) -> None:
        self.bulk = bulk
        self.got: dict[str, Any] = {}

    async def ask(self, run: str) -> None:
        try:
            self.got[run] = await self.bulk.history(run, "k")
        except FatalError as exc:  # kept as the run's answer: tests check who got the error
            self.got[run] = exc


async def ask_all(bulk: BulkHistory, runs: list[str]) -> dict[str, Any]:
    asker = Asker(bulk)
    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(asker.ask, run)
    return asker.got


async def test_asks_made_together_share_one_request() -> None:
    server = ScriptedServer({"a": 3, "b": 0, "c": 2})
    bulk = BulkHistory(server.fetch)
    got = await ask_all(bulk, ["c", "a", "b"])
    assert server.calls == [["a", "b", "c"]]
    assert got == {run: server.histories[run] for run in "abc"}


async def test_asks_arriving_during_a_request_go_in_the_next_one() -> None:
    server = ScriptedServer({"a": 1, "b": 1, "c": 1})
    server.gate = anyio.Event()
    bulk = BulkHistory(server.fetch)
    asker = Asker(bulk)
    got, one = asker.got, asker.ask

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        await server.entered.wait()
        tg.start_soon(one, "b")
        tg.start_soon(one, "c")
        await anyio.wait_all_tasks_blocked()
        server.gate.set()
    assert server.calls == [["a"], ["b", "c"]]
    assert got == server.histories


async def test_cut_answers_are_completed_and_a_run_that_fills_one_alone_is_paged() -> None:
    server = ScriptedServer({"a": 3, "b": 4, "c": 2, "d": 9, "e": 1})
    bulk = BulkHistory(server.fetch, max_points=5)
    got = await ask_all(bulk, ["a", "b", "c", "d", "e"])
    # a+b cut in b -> a done; b+c cut in c -> b done; c+d cut in d -> c done; d alone fills it
    assert server.calls == [["a", "b", "c", "d", "e"], ["b", "c", "d", "e"], ["c", "d", "e"], ["d", "e"], ["e"]]
    assert got == {**{run: server.histories[run] for run in "abce"}, "d": None}
    assert bulk.requests == 5


async def test_exactly_max_points_counts_as_cut() -> None:
    server = ScriptedServer({"a": 5})
    bulk = BulkHistory(server.fetch, max_points=5)
    assert await bulk.history("a", "k") is None  # 5 of 5: maybe more, so page it


async def test_batches_are_capped_by_max_runs() -> None:
    runs = [f"r{i}" for i in range(7)]
    server = ScriptedServer({run: 1 for run in runs})
    bulk = BulkHistory(server.fetch, max_runs=3)
    got = await ask_all(bulk, runs)
    assert [len(call) for call in server.calls] == [3, 3, 1]
    assert got == server.histories


async def test_a_server_without_the_endpoint_switches_bulk_off() -> None:
    server = ScriptedServer({"a": 1, "b": 1})
    server.errors = [NotFoundError("404")]
    bulk = BulkHistory(server.fetch)
    assert await ask_all(bulk, ["a", "b"]) == {"a": None, "b": None}
    assert await bulk.history("c", "k") is None
    assert not bulk.enabled and len(server.calls) == 1


async def test_too_many_run_ids_shrinks_the_batch() -> None:
    server = ScriptedServer({"a": 1, "b": 2, "c": 3, "d": 4})
    server.errors = [FatalError("400: INVALID_PARAMETER_VALUE: cannot specify more than 2 run_ids", status=400,
                               code="INVALID_PARAMETER_VALUE")]
    bulk = BulkHistory(server.fetch)
    got = await ask_all(bulk, ["a", "b", "c", "d"])
    assert server.calls == [["a", "b", "c", "d"], ["a", "b"], ["c", "d"]]
    assert got == server.histories and bulk.max_runs == 2


async def test_a_final_error_reaches_the_leader_and_the_others_carry_on() -> None:
    server = ScriptedServer({"a": 1, "b": 2})
    server.errors = [FatalError("500: boom")]
    bulk = BulkHistory(server.fetch)
    asker = Asker(bulk)
    got = asker.got

    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.ask, "a")
        tg.start_soon(asker.ask, "b")
    assert isinstance(got["a"], FatalError)
    assert got["b"] == server.histories["b"]
    assert server.calls == [["a", "b"], ["b"]]


async def test_a_cancelled_leader_hands_its_batch_on() -> None:
    server = ScriptedServer({"a": 1, "b": 2, "c": 3})
    server.gate = anyio.Event()
    bulk = BulkHistory(server.fetch)
    asker = Asker(bulk)
    got, one = asker.got, asker.ask

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await one("a")

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await server.entered.wait()  # "a" is being fetched, alone
        tg.start_soon(one, "b")
        tg.start_soon(one, "c")
        await anyio.wait_all_tasks_blocked()
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        server.gate.set()
    assert "a" not in got
    assert got == {"b": server.histories["b"], "c": server.histories["c"]}
    assert server.calls == [["a"], ["b", "c"]]


async def test_a_waiter_cancelled_as_it_is_handed_the_lead_passes_it_on() -> None:
    server = ScriptedServer({"a": 1, "b": 2, "c": 3})
    server.gate = anyio.Event()
    bulk = BulkHistory(server.fetch, max_requests=1)  # one lane: b waits for a's answer
    got: dict[str, Any] = {}
    b_scope = anyio.CancelScope()

    async def first() -> None:
        got["a"] = await bulk.history("a", "k")
        b_scope.cancel()  # "b" was just handed the lead and has not run yet

    async def second() -> None:
        with b_scope:
            got["b"] = await bulk.history("b", "k")

    async def third() -> None:
        got["c"] = await bulk.history("c", "k")

    with anyio.fail_after(30):  # a guard against a hang, not a timing assertion
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await server.entered.wait()
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            server.gate.set()
    assert got == {"a": server.histories["a"], "c": server.histories["c"]}
    assert server.calls == [["a"], ["c"]]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    server = ScriptedServer({"a": 1, "b": 2, "c": 3})
    server.gate = anyio.Event()
    bulk = BulkHistory(server.fetch, max_requests=1)  # one lane: b and c wait
    asker = Asker(bulk)
    got, one = asker.got, asker.ask
    b_scope = anyio.CancelScope()

    async def second() -> None:
        with b_scope:
            await one("b")

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        await server.entered.wait()
        tg.start_soon(second)
        tg.start_soon(one, "c")
        await anyio.wait_all_tasks_blocked()
        b_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        server.gate.set()
    assert got == {"a": server.histories["a"], "c": server.histories["c"]}
    assert server.calls == [["a"], ["c"]]


async def test_a_second_request_goes_out_while_the_first_is_in_flight() -> None:
    server = ScriptedServer({run: 1 for run in "abcdefg"})
    server.gate = anyio.Event()
    bulk = BulkHistory(server.fetch, max_runs=4, max_requests=2)
    asker = Asker(bulk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.ask, "a")
        await anyio.wait_all_tasks_blocked()  # "a" is out, alone
        tg.start_soon(asker.ask, "b")
        await anyio.wait_all_tasks_blocked()
        assert server.calls == [["a"]]  # one ask waiting is less than half a batch: no second lane
        tg.start_soon(asker.ask, "c")
        await anyio.wait_all_tasks_blocked()  # two are half a batch: "b" and "c" go out in a second lane
        for run in "defg":
            tg.start_soon(asker.ask, run)
        await anyio.wait_all_tasks_blocked()
        assert server.calls == [["a"], ["b", "c"]]  # both lanes busy: the rest wait
        server.gate.set()
    # each lane, once answered, takes the waiting asks: one of them takes them all
    assert server.calls == [["a"], ["b", "c"], ["d", "e", "f", "g"]]
    assert asker.got == server.histories
    assert bulk._leaders == {} and bulk._queues == {} and bulk._gathering == {}


async def test_lanes_share_the_key_and_never_ask_for_a_run_twice() -> None:
    runs = [f"r{i:02d}" for i in range(40)]
    server = ScriptedServer({run: 2 for run in runs})
    bulk = BulkHistory(server.fetch, max_runs=4, max_requests=3)
    in_flight: list[int] = []
    asker = Asker(bulk)

    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(asker.ask, run)
        while len(asker.got) < len(runs):  # let the requests out lane by lane, one round at a time
            server.gate = anyio.Event()
            await anyio.wait_all_tasks_blocked()
            in_flight.append(len(server.calls) - sum(in_flight))
            server.gate.set()
            await anyio.wait_all_tasks_blocked()
    assert asker.got == server.histories
    asked = [run for call in server.calls for run in call]
    assert sorted(asked) == runs  # every run once
    assert max(in_flight) == 3 and all(len(call) == 4 for call in server.calls)


# -- read-ahead: expected runs ride along in spare places ---------------------------------------
async def test_expected_runs_ride_along_and_ask_for_nothing_later() -> None:
    server = ScriptedServer({run: 2 for run in "abcde"})
    bulk = BulkHistory(server.fetch, max_runs=3)
    for run in "abcde":
        bulk.expect(run, ["k", "other"])
    got = {run: await bulk.history(run, "k") for run in "abcde"}  # one at a time: no group commit
    assert got == server.histories
    assert server.calls == [["a", "b", "c"], ["d", "e"]]  # d asked alone, e rode along
    assert bulk.ahead_answers == 3 and bulk._ahead_points == 0
    assert bulk._expected == {"k": {}, "other": {r: None for r in "abcde"}}


async def test_an_ask_for_a_run_whose_read_ahead_is_in_flight_waits_for_it() -> None:
    server = ScriptedServer({"a": 1, "b": 3})
    server.gate = anyio.Event()
    bulk = BulkHistory(server.fetch)
    bulk.expect("b", ["k"])
    asker = Asker(bulk)
    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.ask, "a")
        await server.entered.wait()  # ["a", "b"] is out
        tg.start_soon(asker.ask, "b")
        await anyio.wait_all_tasks_blocked()
        server.gate.set()
    assert server.calls == [["a", "b"]] and asker.got == server.histories


async def test_riders_cut_off_an_answer_ask_for_themselves() -> None:
    server = ScriptedServer({"a": 2, "b": 2, "c": 2, "d": 2})
    bulk = BulkHistory(server.fetch, max_points=5)
    for run in "bcd":
        bulk.expect(run, ["k"])
    assert await bulk.history("a", "k") == server.histories["a"]
    # a+b+c(1 of 2) cut in c: a and b done, c and d forgotten (never retried on a's behalf)
    assert server.calls == [["a", "b", "c", "d"]]
    got = {run: await bulk.history(run, "k") for run in "bcd"}
    assert got == {run: server.histories[run] for run in "bcd"}
    assert server.calls == [["a", "b", "c", "d"], ["c"], ["d"]] and bulk.ahead_answers == 1


async def test_a_leader_cut_short_retries_without_riders() -> None:
    server = ScriptedServer({"a": 1, "b": 3, "x": 3})
    bulk = BulkHistory(server.fetch, max_points=4)
    bulk.expect("a", ["k"])
    bulk.expect("b", ["k"])
    assert await bulk.history("x", "k") == server.histories["x"]
    # a and b fill the 4-point answer (cut in b): a is held, b forgotten, x asks again alone
    assert server.calls == [["a", "b", "x"], ["x"]]
    assert await bulk.history("a", "k") == server.histories["a"]
    assert await bulk.history("b", "k") == server.histories["b"]
    assert server.calls == [["a", "b", "x"], ["x"], ["b"]] and bulk.ahead_answers == 1


async def test_held_answers_stay_under_the_point_budget_oldest_forgotten_first() -> None:
    server = ScriptedServer({run: 3 for run in "abcdef"})
    bulk = BulkHistory(server.fetch, max_ahead_points=7)
    for run in "bcdef":
        bulk.expect(run, ["k"])
    await bulk.history("a", "k")  # b..f answered: 15 points, only the newest 2 runs (6) are kept
    assert server.calls == [list("abcdef")] and bulk._ahead_points == 6
    got = {run: await bulk.history(run, "k") for run in "bcdef"}
    assert got == {run: server.histories[run] for run in "bcdef"}
    assert server.calls == [list("abcdef"), ["b"], ["c"], ["d"]] and bulk._ahead_points == 0
    # full budget: no riders until it frees
    bulk.expect("g", ["k"])
    server.histories["g"] = server.histories["h"] = [{"run_id": "g", "step": 0, "value": 0.0}]
    bulk._ahead_points = 7
    await bulk.history("h", "k")
    assert server.calls[-1] == ["h"]


async def test_a_failed_request_drops_its_riders_and_they_ask_for_themselves() -> None:
    server = ScriptedServer({"a": 1, "b": 2})
    server.gate = anyio.Event()
    server.errors = [FatalError("500: boom")]
    bulk = BulkHistory(server.fetch)
    bulk.expect("b", ["k"])
    asker = Asker(bulk)
    got = asker.got

    async with anyio.create_task_group() as tg:
        tg.start_soon(asker.ask, "a")
        await server.entered.wait()
        tg.start_soon(asker.ask, "b")  # waits on the read-ahead, then asks itself
        await anyio.wait_all_tasks_blocked()
        server.gate.set()
    assert isinstance(got["a"], FatalError) and got["b"] == server.histories["b"]
    assert server.calls == [["a", "b"], ["b"]] and bulk._ahead == {"k": {}}


async def test_an_expected_run_never_asks_on_its_own() -> None:
    server = ScriptedServer({"a": 1})
    bulk = BulkHistory(server.fetch)
    for i in range(500):
        bulk.expect(f"r{i:03d}", ["k"])
    assert server.calls == []
    assert list(bulk._expected["k"]) == [f"r{i:03d}" for i in range(300, 500)]  # the newest 4 x max_runs


# -- against the real server ----------------------------------------------------------------
async def read_all_at_once(source: MlflowSource) -> dict[str, pa.Table]:
    records = [await source.get_run(ref) for ref in await all_refs(source)]
    tables: dict[str, pa.Table] = {}

    async def one(record: Any) -> None:
        tables[record.ref.id], _ = await read_history(source, record)

    async with anyio.create_task_group() as tg:
        for record in records:
            tg.start_soon(one, record)
    return tables


@pytest.mark.parametrize("max_points", [10_000, 12, 3])
async def test_bulk_reading_equals_paged_reading(source_server: MlflowServer, seeded: Seeded, max_points: int) -> None:
    paged_cfg = source_config(source_server.url, experiments=[seeded.many_name], bulk_history=False)
    async with MlflowSource(paged_cfg, context()) as source:
        expected = await read_all_at_once(source)
    bulk_cfg = source_config(source_server.url, experiments=[seeded.many_name])
    async with MlflowSource(bulk_cfg, context()) as source:
        assert source._bulk is not None
        source._bulk.max_points = max_points  # runs hold 5 points: 3 pages every run, 12 cuts batches
        got = await read_all_at_once(source)
        requests = source._bulk.requests
    assert sorted(got) == sorted(expected) == sorted(seeded.many_runs)
    for run_id, table in expected.items():
        assert table.num_rows == 5
        assert_history_equal(got[run_id], table)
    if max_points == 10_000:
        assert requests < len(seeded.many_runs) // 2  # runs read together share requests
    if max_points == 3:
        assert requests == len(seeded.many_runs)  # one per run, each cut at once: all paged


async def test_runs_read_one_by_one_share_requests_through_read_ahead(
    source_server: MlflowServer, seeded: Seeded
) -> None:
    """The engine's order (a run is read when the destination frees a place) is the worst for
    group commit: told which runs come next, the source still reads 23 runs in one request."""
    async with MlflowSource(source_config(source_server.url, experiments=[seeded.many_name], bulk_history=False),
                            context()) as direct:
        expected = await read_all_at_once(direct)
    proxy = FaultProxy(source_server.url).start()
    try:
        async with MlflowSource(source_config(proxy.url, experiments=[seeded.many_name]), context()) as source:
            refs = await all_refs(source)
            for ref in refs:
                source.expect(ref)
            got = {}
            for ref in refs:
                got[ref.id], _ = await read_history(source, await source.get_run(ref))
            assert source._bulk is not None and source._bulk.ahead_answers == len(refs) - 1
        assert proxy.count("get-history-bulk") == 1 and proxy.count("metrics/get-history?") == 0
    finally:
        proxy.stop()
    assert sorted(got) == sorted(expected)
    for run_id, table in expected.items():
        assert_history_equal(got[run_id], table)


async def test_server_without_bulk_endpoint_is_read_page_by_page(
    source_server: MlflowServer, seeded: Seeded
) -> None:
    proxy = FaultProxy(source_server.url).start()
    try:
        proxy.fail("get-history-bulk", Answer(404, b'{"error_code": "ENDPOINT_NOT_FOUND"}'))
        async with MlflowSource(source_config(proxy.url, experiments=[seeded.many_name]), context()) as source:
            got = await read_all_at_once(source)
            assert source._bulk is not None and not source._bulk.enabled
        assert proxy.count("get-history-bulk") == 1
        assert proxy.count("metrics/get-history") - 1 == len(seeded.many_runs)
    finally:
        proxy.stop()
    async with MlflowSource(source_config(source_server.url, experiments=[seeded.many_name], bulk_history=False), context()) as direct:
        expected = await read_all_at_once(direct)
    for run_id, table in expected.items():
        assert_history_equal(got[run_id], table)
