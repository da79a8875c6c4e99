"""Shared ledger stores (a directory, PostgreSQL): plans, leases with epoch fencing, folding."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.protocols import Checkpoint
from engine.ledger import RunStatus
from engine.ledger_dir import DirectoryStore
from engine.ledger_store import LeaseLost, LedgerStore, Plan, Shard
from core.model import Namespace, RunRef

PAIR = "synthetic:seed=1 -> local:/x"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.servers.postgres_server import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("pg") / "postgres").start()
    try:
        yield server
    finally:
        server.stop()


_databases = itertools.count()


@pytest.fixture(params=["directory", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[LedgerStore] = []
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        name = f"ledger{next(_databases)}"
        server.execute(f"CREATE DATABASE {name}")

    def make(clock: Clock) -> LedgerStore:
        if request.param == "directory":
            store: LedgerStore = DirectoryStore(tmp_path / "ledger.d", clock=clock)
        else:
            from engine.ledger_postgres import PostgresStore

            store = PostgresStore(server.uri(name), clock=clock)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def refs(n: int) -> tuple[RunRef, ...]:
    return tuple(RunRef(f"run{i}", Namespace("e", "p"), name=f"r{i}", extra=(("hint", (i, [i])),)) for i in range(n))


def test_a_plan_is_kept_exactly_and_the_latest_generation_wins(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store(Clock())
    assert store.latest_plan(PAIR) is None
    first = Plan(1, (Shard("g000001-s000000", refs(3)), Shard("g000001-s000001", refs(5)[3:])))
    store.save_plan(PAIR, first)
    store.save_plan(PAIR, Plan(2, (Shard("g000002-s000000", refs(1)),)))
    assert store.latest_plan(PAIR) == Plan(2, (Shard("g000002-s000000", refs(1)),))
    assert store.latest_plan("other") is None


def test_leases_expire_renew_and_fence_writes(make_store) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    store = make_store(clock)
    shard = Shard("g000001-s000000", refs(2))
    epoch = store.grant(PAIR, shard.key, "worker-a", ttl=10)
    assert epoch == 1
    assert store.grant(PAIR, shard.key, "worker-b", ttl=10) is None  # held and unexpired
    old = store.shard_ledger(PAIR, shard, epoch)
    old.open_for_append()
    old.start("run0", "r0")
    old.history("run0", Checkpoint(history_points=100))
    old.flush()  # written while the lease is held
    clock.now += 9
    assert store.renew(PAIR, shard.key, epoch, ttl=10)
    clock.now += 11  # the holder stalled: its lease expired
    assert store.grant(PAIR, shard.key, "worker-b", ttl=10) == 2
    old.history("run0", Checkpoint(history_points=200))  # a zombie's write is refused ...
    with pytest.raises(LeaseLost):
        old.flush()  # ... by the store, and the writer thread tells the ledger's caller
    with pytest.raises(LeaseLost):
        old.start("run1", "r1")  # and the zombie's ledger takes no more lines
    assert not store.renew(PAIR, shard.key, epoch, ttl=10)
    new = store.shard_ledger(PAIR, shard, 2)
    assert new.get("run0").checkpoint.history_points == 100  # resumes where the journal says
    new.open_for_append()
    new.history("run0", Checkpoint(history_points=300))
    new.done("run0", {"points": 300})
    new.close()  # the shard's lines are durable before it is marked complete
    with pytest.raises(LeaseLost):
        store.complete(PAIR, shard.key, epoch)
    store.complete(PAIR, shard.key, 2)
    assert store.grant(PAIR, shard.key, "worker-c", ttl=10) is None  # done shards stay done
    assert store.leases(PAIR, 1)[shard.key].done
    folded = store.read(PAIR)
    assert folded.get("run0").status is RunStatus.DONE
    assert folded.get("run0").checkpoint.history_points == 300
    assert folded.get("run1") is None


def test_released_leases_are_granted_again_after_the_grace(make_store) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    store = make_store(clock)
    epoch = store.grant(PAIR, "g000001-s000003", "w", ttl=60)
    store.release(PAIR, "g000001-s000003", epoch, grace=1)
    assert store.grant(PAIR, "g000001-s000003", "w2", ttl=60) is None
    clock.now += 1
    assert store.grant(PAIR, "g000001-s000003", "w2", ttl=60) == epoch + 1
