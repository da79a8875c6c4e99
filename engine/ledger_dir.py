"""The ledger store on a shared volume: a directory of small files, one writer per file.

Layout (one sub-directory per source -> destination pair, named by a digest of the pair)::

    <root>/<pair digest>/plan-000001.json           generation 1's shards (written once, atomically)
    <root>/<pair digest>/lease-<shard>.json         the shard's lease: epoch, holder, expiry, done
    <root>/<pair digest>/journal/<shard>.e000003.jsonl   lines written under lease epoch 3

Every journal file has exactly one writer (the shard's holder under that epoch), so machines
never interleave appends. Folding reads the files in (generation, shard, epoch) order, so a run's
lines from a re-leased shard follow the ones its dead holder left. Lease changes take an
exclusive ``flock`` on the lease file; each journal append first checks, under a shared lock,
that its epoch is still current (the fence); the lease's TTL covers the moment between the check
and the write. NFS v4 and most shared volumes honour ``flock``; object stores do not (no append).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TextIO

from engine.ledger import Ledger
from engine.ledger_store import Lease, LeaseLost, Plan, Shard, StoreLedger


class DirectoryStore:
    def __init__(self, root: str | os.PathLike[str], *, clock: Any = time.time) -> None:
        self.root = Path(root).expanduser().absolute()
        self._clock = clock
        self._journals: dict[tuple[str, str, int], TextIO] = {}

    def describe(self) -> str:
        return str(self.root)

    def _dir(self, pair: str) -> Path:
        return self.root / hashlib.sha256(pair.encode()).hexdigest()[:16]

    # -- journal -------------------------------------------------------------------------------
    def _journal_files(self, pair: str | None) -> Iterator[Path]:
        dirs = [self._dir(pair)] if pair is not None else sorted(p for p in self.root.glob("*") if p.is_dir())
        for folder in dirs:
            yield from sorted((folder / "journal").glob("*.jsonl"))  # names sort as (shard, epoch)

    def read(self, pair: str | None, runs: Collection[str] | None = None) -> Ledger:
        ledger = Ledger(self.root, pair or "")
        for path in self._journal_files(pair):
            with open(path, "rb") as fh:
                ledger.fold_lines(fh, pair, runs)
        return ledger

    def shard_ledger(self, pair: str, shard: Shard, epoch: int) -> Ledger:
        ledger = StoreLedger(pair, lambda run, line, sync: self._append(pair, shard.key, epoch, line, sync),
                             str(self._journal_path(pair, shard.key, epoch)), clock=self._clock,
                             on_close=lambda: self._close_journal((pair, shard.key, epoch)))
        wanted = shard.runs
        for path in self._journal_files(pair):
            with open(path, "rb") as fh:
                ledger.fold_lines(fh, pair, wanted)
        return ledger

    def _journal_path(self, pair: str, shard: str, epoch: int) -> Path:
        return self._dir(pair) / "journal" / f"{shard}.e{epoch:06d}.jsonl"

    def _append(self, pair: str, shard: str, epoch: int, line: str, sync: bool) -> None:
        with self._lease_lock(pair, shard, exclusive=False) as current:
            if current is None or current.epoch != epoch or current.done:
                raise LeaseLost(f"shard {shard}: lease epoch {epoch} is no longer current")
            fh = self._journals.get((pair, shard, epoch))
            if fh is None:
                path = self._journal_path(pair, shard, epoch)
                path.parent.mkdir(parents=True, exist_ok=True)
                fh = self._journals[(pair, shard, epoch)] = open(path, "a", encoding="utf-8")  # noqa: SIM115
            fh.write(line + "\n")
            fh.flush()
            if sync:
                os.fsync(fh.fileno())

    # -- plan ----------------------------------------------------------------------------------
    def latest_plan(self, pair: str) -> Plan | None:
        plans = sorted(self._dir(pair).glob("plan-*.json"))
        if not plans:
            return None
        data = json.loads(plans[-1].read_text())
        return Plan(int(data["generation"]), tuple(Shard.from_json(s) for s in data["shards"]))

    def save_plan(self, pair: str, plan: Plan) -> None:
        folder = self._dir(pair)
        folder.mkdir(parents=True, exist_ok=True)
        body = {"pair": pair, "generation": plan.generation, "shards": [s.to_json() for s in plan.shards]}
        _write_atomic(folder / f"plan-{plan.generation:06d}.json", json.dumps(body))

    # -- leases --------------------------------------------------------------------------------
    def _lease_path(self, pair: str, shard: str) -> Path:
        return self._dir(pair) / f"lease-{shard}.json"

    @contextlib.contextmanager
    def _lease_lock(self, pair: str, shard: str, *, exclusive: bool) -> Iterator[Lease | None]:
        path = self._lease_path(pair, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            fh.seek(0)
            text = fh.read()
            yield Lease(**json.loads(text)) if text.strip() else None

    def _put_lease(self, pair: str, lease: Lease) -> None:
        """Rewrite the lease file in place (the caller holds its exclusive lock)."""
        with open(self._lease_path(pair, lease.shard), "r+", encoding="utf-8") as fh:
            fh.truncate(0)
            fh.write(json.dumps(lease.__dict__))
            fh.flush()
            os.fsync(fh.fileno())

    def leases(self, pair: str, generation: int) -> dict[str, Lease]:
        out = {}
        for path in self._dir(pair).glob(f"lease-g{generation:06d}-*.json"):
            text = path.read_text()
            if text.strip():
                lease = Lease(**json.loads(text))
                out[lease.shard] = lease
        return out

    def grant(self, pair: str, shard: str, holder: str, ttl: float) -> int | None:
        with self._lease_lock(pair, shard, exclusive=True) as current:
            now = self._clock()
            if current is not None and (current.done or current.expires > now):
                return None
            epoch = (current.epoch if current else 0) + 1
            self._put_lease(pair, Lease(shard, epoch, holder, now + ttl))
            return epoch

    def renew(self, pair: str, shard: str, epoch: int, ttl: float) -> bool:
        with self._lease_lock(pair, shard, exclusive=True) as current:
            if current is None or current.epoch != epoch or current.done:
                return False
            self._put_lease(pair, Lease(shard, epoch, current.holder, self._clock() + ttl))
            return True

    def complete(self, pair: str, shard: str, epoch: int) -> None:
        with self._lease_lock(pair, shard, exclusive=True) as current:
            if current is None or current.epoch != epoch:
                raise LeaseLost(f"shard {shard}: lease epoch {epoch} is no longer current")
            self._put_lease(pair, Lease(shard, epoch, current.holder, current.expires, done=True))

    def release(self, pair: str, shard: str, epoch: int, grace: float) -> None:
        with self._lease_lock(pair, shard, exclusive=True) as current:
            if current is not None and current.epoch == epoch and not current.done:
                self._put_lease(pair, Lease(shard, epoch, current.holder, min(current.expires, self._clock() + grace)))

    def _close_journal(self, key: tuple[str, str, int]) -> None:
        fh = self._journals.pop(key, None)
        if fh is not None:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()

    def close(self) -> None:
        for key in list(self._journals):
            self._close_journal(key)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
