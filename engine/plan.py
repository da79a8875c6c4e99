"""``plan`` and ``status``: read-only views of a migration (they write nothing anywhere).

``plan`` pages through the source and says what ``migrate`` would move: runs, history points and
file bytes, and how many runs the ledger already has as done (skipped when incremental).
``status`` folds the ledger and says what is done, failed (with reasons) and unfinished.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TextIO


from engine.config import Config
from engine.ledger import RunStatus, pair_key
from engine.ledger_store import ledger_location, read_ledger
from core.model import RunRef
from engine.pipeline import for_each_run, make_context, open_adapters
from engine.progress import Progress


@dataclass
class PlanTotals:
    runs: int = 0
    runs_to_move: int = 0
    runs_done_already: int = 0
    points: int = 0
    points_unknown: int = 0
    files: int = 0
    bytes: int = 0
    namespaces: dict[str, int] = field(default_factory=dict)


async def plan(config: Config, out: TextIO, *, workers: int = 8) -> PlanTotals:
    context = make_context(config, Progress.quiet())
    source, destination = open_adapters(config, context)
    ledger = read_ledger(config, pair_key(source.describe(), destination.describe()))
    totals = PlanTotals()

    def count(_: RunRef) -> None:
        totals.runs += 1

    async def inspect(ref: RunRef) -> None:
        entry = ledger.get(ref.id)
        if config.transfer.incremental and entry is not None and entry.status is RunStatus.DONE:
            totals.runs_done_already += 1
            return
        record = await source.get_run(ref)
        totals.runs_to_move += 1
        ns = str(record.ref.namespace)
        totals.namespaces[ns] = totals.namespaces.get(ns, 0) + 1
        if record.history_points is None:
            totals.points_unknown += 1
        else:
            totals.points += record.history_points
        if config.transfer.artifacts:
            async with contextlib.aclosing(source.list_files(record)) as listing:
                async for f in listing:
                    totals.files += 1
                    totals.bytes += f.size or 0

    async with source:
        await for_each_run(source, inspect, workers=workers, buffer=workers * 4, limit=config.transfer.max_runs, on_ref=count)
    out.write(f"plan for {config.path}: {source.describe()} -> {destination.describe()}\n")
    out.write(f"  runs selected:          {totals.runs:,}\n")
    out.write(f"  runs to move:           {totals.runs_to_move:,}\n")
    out.write(f"  already done (skipped): {totals.runs_done_already:,}\n")
    unknown = f" (+ {totals.points_unknown:,} runs whose size the source cannot tell cheaply)" if totals.points_unknown else ""
    out.write(f"  history points:         {totals.points:,}{unknown}\n")
    out.write(f"  files:                  {totals.files:,} ({totals.bytes:,} bytes)\n")
    for ns, n in sorted(totals.namespaces.items()):
        out.write(f"    {ns}: {n:,} runs\n")
    return totals


def status(config: Config, out: TextIO) -> dict[str, int]:
    source, destination = open_adapters(config, make_context(config, Progress.quiet()))
    ledger = read_ledger(config, pair_key(source.describe(), destination.describe()))
    counts = {s.value: 0 for s in RunStatus}
    for entry in ledger.entries.values():
        counts[entry.status.value] += 1
    out.write(f"ledger {ledger_location(config)}: {source.describe()} -> {destination.describe()}\n")
    out.write(
        f"  done {counts['done']:,}  failed {counts['failed']:,}  in progress (resumable) {counts['in_progress']:,}\n"
    )
    if ledger.torn_lines:
        out.write(f"  ({ledger.torn_lines} torn line(s) skipped: a crash mid-write; harmless)\n")
    for entry in sorted(ledger.entries.values(), key=lambda e: e.run):
        if entry.status is RunStatus.FAILED:
            out.write(f"  failed       {entry.run} ({entry.name}): {entry.reason}\n")
        elif entry.status is RunStatus.IN_PROGRESS:
            out.write(
                f"  in progress  {entry.run} ({entry.name}): {entry.checkpoint.history_points:,} points,"
                f" {len(entry.files)} files durable\n"
            )
    return counts

