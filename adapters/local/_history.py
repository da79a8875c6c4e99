"""A run's history on disk: durable part files per chunk, merged into one Parquet file.

Each chunk is written as ``history.parts/part-<offset>.parquet`` (tmp + rename) — the first
one directly as ``history.parquet`` — so once ``write_part`` returns those points survive a
crash and the writer's checkpoint may advance.
``merge`` streams the parts, one row group each, behind whatever ``history.parquet`` already
holds, into a new ``history.parquet`` (tmp + rename) and then removes the parts. ``recover``
puts a run directory back to exactly ``resume`` points after a crash at any moment.

All functions block: call them through ``anyio.to_thread``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from adapters.local._layout import HISTORY, PARTS, TMP_MARK, temp_sibling
from core.errors import FatalError
from core.model import HISTORY_SCHEMA

_DICTIONARY_COLUMNS = ["key", "value_json"]
_WRITE_OPTIONS = {"use_dictionary": _DICTIONARY_COLUMNS, "write_statistics": ["step"]}
# Parts are temporary: uncompressed is fastest. The merged file is zstd (about 7 bytes/point).
PART_COMPRESSION = "none"
FINAL_COMPRESSION = "zstd"
_READ_SCHEMA = pa.schema(
    [f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in _DICTIONARY_COLUMNS else f for f in HISTORY_SCHEMA]
)


@dataclass(frozen=True, slots=True)
class Segment:
    """A file holding points ``[offset, offset + rows)`` of the run's history."""

    path: Path
    offset: int
    rows: int

    @property
    def end(self) -> int:
        return self.offset + self.rows


def part_path(run_dir: Path, offset: int) -> Path:
    return run_dir / PARTS / f"part-{offset:012d}.parquet"


def _rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


def segments(run_dir: Path) -> list[Segment]:
    """The merged file (if any) and the parts after it, in order; raises on a gap."""
    found: list[Segment] = []
    merged = run_dir / HISTORY
    if merged.exists():
        found.append(Segment(merged, 0, _rows(merged)))
    parts_dir = run_dir / PARTS
    if parts_dir.is_dir():
        for name in sorted(os.listdir(parts_dir)):
            if name.startswith("part-") and name.endswith(".parquet") and TMP_MARK not in name:
                found.append(Segment(parts_dir / name, int(name[5:17]), 0))
    result: list[Segment] = []
    position = 0
    for seg in found:
        if seg.path.parent.name == PARTS and seg.offset < position:
            continue  # already merged (a crash came between the merge's rename and the cleanup)
        if seg.offset != position:
            raise FatalError(f"{run_dir}: history gap: points {position}..{seg.offset} are missing")
        rows = seg.rows or _rows(seg.path)
        result.append(Segment(seg.path, seg.offset, rows))
        position += rows
    return result


def write_part(run_dir: Path, batch: pa.RecordBatch, offset: int, *, fsync: bool) -> None:
    """Store one chunk durably (all or nothing).

    The first chunk (offset 0) goes straight to ``history.parquet`` in its final form: a run
    that fits in one chunk then needs no merge and no parts folder (file-system metadata
    operations dominate the cost of small runs). Later chunks become part files.
    """
    first = offset == 0
    target = run_dir / HISTORY if first else part_path(run_dir, offset)
    if not first:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        pq.write_table(
            pa.Table.from_batches([batch]),
            tmp,
            compression=FINAL_COMPRESSION if first else PART_COMPRESSION,
            store_schema=not first,
            **_WRITE_OPTIONS,
        )
        if fsync:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_row_groups(writer: pq.ParquetWriter, source: Path, limit: int | None = None) -> int:
    """Append ``source``'s row groups (at most ``limit`` rows) one at a time; returns rows."""
    pf = pq.ParquetFile(source, read_dictionary=_DICTIONARY_COLUMNS)
    copied = 0
    for group in range(pf.num_row_groups):
        if limit is not None and copied >= limit:
            break
        table = pf.read_row_group(group)
        if limit is not None and copied + table.num_rows > limit:
            table = table.slice(0, limit - copied)
        writer.write_table(_unify(table))
        copied += table.num_rows
    return copied


def _unify(table: pa.Table) -> pa.Table:
    """Same dictionary types whatever the part looked like (all-null columns read as plain)."""
    return table if table.schema.equals(_READ_SCHEMA) else table.cast(_READ_SCHEMA)


def _rewrite(target: Path, sources: list[Segment], limit: int, *, fsync: bool) -> None:
    """Write the first ``limit`` points of ``sources`` into ``target`` (tmp + rename)."""
    tmp = temp_sibling(target)
    try:
        # store_schema=False: readers see plain strings, not dictionaries
        with pq.ParquetWriter(tmp, _READ_SCHEMA, compression=FINAL_COMPRESSION, store_schema=False, **_WRITE_OPTIONS) as w:
            remaining = limit
            for seg in sources:
                if remaining <= 0:
                    break
                remaining -= _copy_row_groups(w, seg.path, remaining)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def merge(run_dir: Path, *, fsync: bool) -> int:
    """Fold every part into ``history.parquet``; returns the number of points it holds."""
    segs = segments(run_dir)
    total = segs[-1].end if segs else 0
    merged = run_dir / HISTORY
    if any(seg.path != merged for seg in segs) or not segs:
        _rewrite(merged, segs, total, fsync=fsync)
    if (run_dir / PARTS).exists():
        shutil.rmtree(run_dir / PARTS, ignore_errors=True)
    return total


def recover(run_dir: Path, resume: int | None, *, fsync: bool) -> int:
    """Make the stored history exactly ``resume`` points long (None: start afresh).

    Points beyond ``resume`` were written after the last ledger record: they are dropped, so
    the engine can resend them without duplicates. Fewer durable points than ``resume`` means
    the export lost data the ledger counts on: ``FatalError`` (start the run afresh).
    """
    _remove_temporaries(run_dir)
    if not resume:
        (run_dir / HISTORY).unlink(missing_ok=True)
        shutil.rmtree(run_dir / PARTS, ignore_errors=True)
        return 0
    _remove_merged_parts(run_dir)
    segs = segments(run_dir)
    durable = segs[-1].end if segs else 0
    if durable < resume:
        raise FatalError(f"{run_dir}: only {durable} history points stored, the ledger expects {resume}")
    for seg in segs:
        if seg.offset >= resume:
            seg.path.unlink()
        elif seg.end > resume:
            _rewrite(seg.path, [seg], resume - seg.offset, fsync=fsync)
    return resume


def _remove_merged_parts(run_dir: Path) -> None:
    """Parts left behind by a merge interrupted before its cleanup duplicate the merged file."""
    merged = run_dir / HISTORY
    if merged.exists() and (run_dir / PARTS).is_dir():
        rows = _rows(merged)
        for name in os.listdir(run_dir / PARTS):
            if name.startswith("part-") and int(name[5:17]) < rows:
                (run_dir / PARTS / name).unlink()


def _remove_temporaries(run_dir: Path) -> None:
    for folder in (run_dir, run_dir / PARTS):
        if folder.is_dir():
            for name in os.listdir(folder):
                if TMP_MARK in name:
                    (folder / name).unlink(missing_ok=True)
