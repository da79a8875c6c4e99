"""``verify``: compare every migrated run at the destination with its source, streaming.

For each selected source run the ledger says is done, the destination is read back (through the
reader its adapter registers in ``adapters.registry.READERS``) and compared:

- metadata: display name, state, start and end time;
- history: point count and an order-independent digest of every point (key, step, timestamp
  bits, value bits, JSON value) — a multiset hash summed over chunks, so neither side is ever
  held in memory and servers that return points in another order still match. When the exact
  digests differ, a second digest with timestamps rounded to milliseconds tells whether the
  only difference is MLflow's millisecond clock; a third one with both sides' values also in
  the destination's own number form (``registry.STORED_FLOATS``: MLflow keeps ``±inf`` as
  ``±DBL_MAX``, ``-0.0`` as ``0.0``) whether the rest is only that documented form; and a
  fourth, which ignores the step and time of ``system/...`` points, whether the only difference
  is a destination that keeps system metrics in a stream of its own (W&B's system stream has no
  step: one line per source step, numbered by position, stamped with the step's latest time);
- files: the multiset of (size, md5) of every file's bytes, streamed (paths may be re-laid out by
  the destination, contents may not change).

Nothing is written anywhere. Exit code 0 when every run matches, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters import registry
from core.protocols import Source
from engine.config import Config
from core.errors import ConfigError
from engine.ledger import RunStatus, pair_key
from engine.ledger_store import read_ledger
from core.model import RunRecord, RunRef, same_float
from engine.pipeline import describe_error, for_each_run, make_context, open_adapters, tell_read_ahead
from engine.progress import Progress

MILLIS_ONLY = "history timestamps rounded to milliseconds by the destination"
STORED_FORM_ONLY = "history numbers in the destination's own form (MLflow: ±inf as ±DBL_MAX, -0.0 as 0.0; milliseconds)"
SYSTEM_RESTEPPED = "system metrics re-stepped by the destination (a system stream without steps)"
NOTES = (MILLIS_ONLY, STORED_FORM_ONLY, SYSTEM_RESTEPPED)
"""Findings that describe how the destination stores, not a loss of data."""
SYSTEM_PREFIX = "system/"
StoredFloats = Callable[[np.ndarray], np.ndarray]
_CANONICAL_NAN = np.array([np.nan], dtype=np.float64).view(np.uint64)[0]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


def _string_hashes(column: pa.Array) -> np.ndarray:
    """A 64-bit hash per string (nulls hash to 0), hashing each distinct string once."""
    encoded = pc.dictionary_encode(column)
    words = np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in encoded.dictionary.to_pylist()]
        or [0],
        dtype=np.uint64,
    )
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return np.where(indices >= 0, words[np.maximum(indices, 0)], np.uint64(0))


def _float_bits(column: pa.Array, *, round_ms: bool = False, form: StoredFloats | None = None) -> np.ndarray:
    values = column.fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    if round_ms:
        values = np.round(values * 1000.0)
    if form is not None:
        values = form(values)
    bits: np.ndarray = values.view(np.uint64).copy()
    bits[np.isnan(values)] = _CANONICAL_NAN
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    bits[nulls] = np.uint64(0x7FF0DEADBEEF0001)  # "no number" differs from every float
    return bits


def _sum(hashes: np.ndarray) -> int:
    return int(hashes.sum(dtype=np.uint64))


@dataclass
class HistoryDigest:
    """Multiset hashes of a run's points (sums of per-point hashes, so order and chunking do
    not matter): ``exact`` to the bit; ``millis`` with timestamps rounded to milliseconds;
    ``stored`` like ``millis`` with the values also in ``form`` (the destination's number
    form); ``system_loose`` like ``millis`` with ``system/...`` points hashed without step
    and time."""

    form: StoredFloats | None = None
    points: int = 0
    exact: int = 0
    millis: int = 0
    stored: int = 0
    system_loose: int = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        key_column = batch.column("key")
        keys = _string_hashes(key_column)
        steps = batch.column("step").to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
        payload = _mix(_string_hashes(batch.column("value_json")))
        values = _mix(_float_bits(batch.column("value")) ^ payload)
        base = _mix(keys ^ _mix(steps ^ values))
        exact = _mix(base ^ _mix(_float_bits(batch.column("timestamp"))))
        stamps_ms = _mix(_float_bits(batch.column("timestamp"), round_ms=True))
        millis = _mix(base ^ stamps_ms)
        stored = millis  # without a number form of its own, the destination stores what it got
        if self.form is not None:
            stored_values = _mix(_float_bits(batch.column("value"), form=self.form) ^ payload)
            stored = _mix(_mix(keys ^ _mix(steps ^ stored_values)) ^ stamps_ms)
        system = pc.starts_with(key_column, SYSTEM_PREFIX).fill_null(False).to_numpy(zero_copy_only=False)
        loose = np.where(system, _mix(keys ^ values), millis)
        for name, hashes in (("exact", exact), ("millis", millis), ("stored", stored), ("system_loose", loose)):
            setattr(self, name, (getattr(self, name) + _sum(hashes)) & 0xFFFFFFFFFFFFFFFF)
        self.points += batch.num_rows


async def history_digest(source: Source, record: RunRecord, form: StoredFloats | None = None) -> HistoryDigest:
    digest = HistoryDigest(form)
    async with contextlib.aclosing(source.iter_history(record, 0)) as chunks:
        async for chunk in chunks:
            digest.add(chunk.batch)
    return digest


async def file_digests(source: Source, record: RunRecord) -> Counter[tuple[int, str]]:
    found: Counter[tuple[int, str]] = Counter()
    async with contextlib.aclosing(source.list_files(record)) as listing:
        async for file in listing:
            md5, size = hashlib.md5(), 0
            async with contextlib.aclosing(source.read_file(record, file)) as pieces:
                async for piece in pieces:
                    md5.update(piece)
                    size += len(piece)
            found[(size, md5.hexdigest())] += 1
    return found


@dataclass
class VerifyReport:
    matched: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)
    mismatched: list[tuple[str, str]] = field(default_factory=list)
    not_migrated: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if not self.mismatched and not self.not_migrated else 1


def compare_metadata(src: RunRecord, dst: RunRecord) -> list[str]:
    problems = []
    if (src.display_name or None) != (dst.display_name or None):
        problems.append(f"name {src.display_name!r} != {dst.display_name!r}")
    if src.state != dst.state:
        problems.append(f"state {src.state.value} != {dst.state.value}")
    for name in ("start_time", "end_time"):
        a, b = getattr(src, name), getattr(dst, name)
        if not same_float(a, b) and not (a is not None and b is not None and round(a * 1000) == round(b * 1000)):
            problems.append(f"{name} {a} != {b}")
    return problems


async def verify(config: Config, out: TextIO, *, workers: int = 4) -> VerifyReport:
    context = make_context(config, Progress.quiet())
    source, destination = open_adapters(config, context)
    spec = registry.READERS.get(config.destination_type)
    if spec is None:
        raise ConfigError(
            f"{config.path}: verify cannot read back a '{config.destination_type}' destination yet"
            f" (readable: {', '.join(sorted(registry.READERS))})"
        )
    reader, ref_for = registry.load(spec)(config.destination, context)
    form_spec = registry.STORED_FLOATS.get(config.destination_type)
    form: StoredFloats | None = registry.load(form_spec) if form_spec else None
    ledger = read_ledger(config, pair_key(source.describe(), destination.describe()))
    report = VerifyReport()

    async def check(ref: RunRef) -> None:
        entry = ledger.get(ref.id)
        if entry is None or entry.status is not RunStatus.DONE or not entry.dest_id:
            report.not_migrated.append(ref.id)
            return
        try:
            problems = await compare_run(source, reader, ref, ref_for(entry.dest_id, ref), config.transfer.artifacts, form)
        except Exception as exc:
            problems = [f"cannot read: {describe_error(exc)}"]
        if problems and set(problems) <= set(NOTES):  # how the destination stores, not a loss of data
            report.notes.extend((ref.id, note) for note in problems)
            problems = []
        if problems:
            report.mismatched.append((ref.id, "; ".join(problems)))
        else:
            report.matched += 1

    async with source, reader:
        await for_each_run(source, check, workers=workers, buffer=workers * 2, keep=tell_read_ahead(source))
    out.write(f"verify {source.describe()} -> {destination.describe()}\n")
    out.write(f"  runs identical:      {report.matched:,}\n")
    out.write(f"  runs different:      {len(report.mismatched):,}\n")
    for note in NOTES:
        noted = sum(1 for _, why in report.notes if why == note)
        if noted:
            out.write(f"  ({noted:,} identical runs had their {note})\n")
    out.write(f"  runs not migrated:   {len(report.not_migrated):,}\n")
    for run, why in sorted(report.mismatched):
        out.write(f"  different    {run}: {why}\n")
    for run in sorted(report.not_migrated)[:50]:
        out.write(f"  not migrated {run}\n")
    return report


async def compare_run(
    source: Source, reader: Source, src_ref: RunRef, dst_ref: RunRef, files: bool, form: StoredFloats | None = None
) -> list[str]:
    src, dst = await source.get_run(src_ref), await reader.get_run(dst_ref)
    problems = compare_metadata(src, dst)
    a, b = await history_digest(source, src, form), await history_digest(reader, dst, form)
    if a.points != b.points:
        problems.append(f"history has {b.points:,} points, source {a.points:,}")
    elif a.exact != b.exact:
        if a.millis == b.millis:
            problems.append(MILLIS_ONLY)
        elif form is not None and a.stored == b.stored:
            problems.append(STORED_FORM_ONLY)
        elif a.system_loose == b.system_loose:
            problems.append(SYSTEM_RESTEPPED)
        else:
            problems.append(f"history content differs ({a.points:,} points on both sides)")
    if files:
        fa, fb = await file_digests(source, src), await file_digests(reader, dst)
        if fa != fb:
            problems.append(
                f"files differ: {sum((fa - fb).values())} source file(s) missing or changed,"
                f" {sum((fb - fa).values())} unexpected at the destination"
            )
    return problems

