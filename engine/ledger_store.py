"""Ledger stores many machines can share, and the one way commands read a ledger.

A local migration keeps today's single JSONL file. A scaled-out one (``[transfer] executor =
"ray"``) needs a journal every worker can append to and every command can fold, plus the two
things only a cluster needs: the *plan* (shards, i.e. fixed lists of run refs, written down before
any work starts, so a re-lease means exactly the same runs) and a *lease table* (which worker
holds which shard, under which epoch, until when). Two stores implement it:

- ``DirectoryStore`` (``engine.ledger_dir``): a directory on a shared volume, one JSONL file per
  (shard, lease epoch); appends are never interleaved between machines.
- ``PostgresStore`` (``engine.ledger_postgres``): an events table and a lease table; every write
  is fenced in SQL (refused unless its epoch is the shard's current one).

A write under a stale lease raises ``LeaseLost``: the worker stops, whatever it was doing, so a
zombie (partitioned, or re-leased while it stalled) never adds to the journal after the shard moved
on. An object store is not a ledger store: it cannot append.
"""

from __future__ import annotations

import base64
import pickle
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine.ledger import Ledger
from engine.ledger_writer import Line

if TYPE_CHECKING:
    from engine.config import Config
    from core.model import RunRef


class LeaseLost(Exception):
    """The shard's lease moved on (expired and re-leased): this holder must stop writing."""


@dataclass(frozen=True)
class Shard:
    """A fixed list of run refs, leased as one unit. ``key`` orders shards and names files."""

    key: str
    refs: tuple[RunRef, ...]

    @property
    def runs(self) -> frozenset[str]:
        return frozenset(ref.id for ref in self.refs)

    def to_json(self) -> dict[str, Any]:
        """Run ids readable by people; the refs themselves exactly (adapter hints of any type)."""
        return {"key": self.key, "runs": [ref.id for ref in self.refs],
                "refs": base64.b64encode(pickle.dumps(self.refs)).decode("ascii")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        return cls(data["key"], tuple(pickle.loads(base64.b64decode(data["refs"]))))


@dataclass(frozen=True)
class Plan:
    """One generation of shards for a pair; a re-run after it completed plans generation + 1."""

    generation: int
    shards: tuple[Shard, ...]


@dataclass(frozen=True)
class Lease:
    shard: str
    epoch: int
    holder: str
    expires: float
    done: bool = False


class LedgerStore(Protocol):
    """What the Ray driver and workers need from a shared ledger (see the module docstring)."""

    def describe(self) -> str: ...

    def read(self, pair: str | None, runs: Collection[str] | None = None) -> Ledger:
        """The folded journal (``pair=None``: every pair), optionally only ``runs``."""
        ...

    def shard_ledger(self, pair: str, shard: Shard, epoch: int) -> Ledger:
        """The shard's runs folded, appending under ``epoch`` (fenced: ``LeaseLost``)."""
        ...

    def latest_plan(self, pair: str) -> Plan | None: ...

    def save_plan(self, pair: str, plan: Plan) -> None: ...

    def leases(self, pair: str, generation: int) -> dict[str, Lease]: ...

    def grant(self, pair: str, shard: str, holder: str, ttl: float) -> int | None:
        """A new lease (epoch + 1) when the shard is free, or its lease expired; else None."""
        ...

    def renew(self, pair: str, shard: str, epoch: int, ttl: float) -> bool:
        """Extend a held lease; False when it moved on (the holder must stop)."""
        ...

    def complete(self, pair: str, shard: str, epoch: int) -> None:
        """The shard is finished (raises ``LeaseLost`` when ``epoch`` is stale)."""
        ...

    def release(self, pair: str, shard: str, epoch: int, grace: float) -> None:
        """The holder is gone for sure: let the lease end ``grace`` seconds from now."""
        ...

    def close(self) -> None: ...


class StoreLedger(Ledger):
    """A ``Ledger`` whose lines go to a store under one shard lease, not to a local file."""

    def __init__(self, pair: str, append: Callable[[str, str, bool], None], where: str,
                 *, clock: Any = time.time, on_close: Callable[[], None] | None = None) -> None:
        from pathlib import Path

        super().__init__(Path(where), pair, clock=clock)
        self._append_line = append
        self._on_close = on_close
        self._open = False

    def open_for_append(self) -> None:
        self._open = True

    def writable(self) -> bool:
        return self._open

    def close(self) -> None:
        self._open = False
        try:
            super().close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def _write_batch(self, batch: list[Line]) -> None:
        for run, line, sync in batch:
            self._append_line(run, line, sync)


def open_store(config: Config) -> LedgerStore:
    """The ``[ray] ledger`` store: a ``postgresql://`` URI or a (shared) directory."""
    location = config.ray.ledger
    if location.startswith(("postgresql://", "postgres://")):
        from engine.ledger_postgres import PostgresStore

        return PostgresStore(location, password_env=config.ray.ledger_password_env)
    from engine.ledger_dir import DirectoryStore

    return DirectoryStore(location)


def read_ledger(config: Config, pair: str | None) -> Ledger:
    """What ``status``, ``plan``, ``verify`` and incremental re-runs read: the configured store."""
    if config.transfer.executor != "ray":
        return Ledger.read(config.ledger_path, pair)
    store = open_store(config)
    try:
        return store.read(pair)
    finally:
        store.close()


def ledger_location(config: Config) -> str:
    return config.ray.ledger if config.transfer.executor == "ray" else str(config.ledger_path)
