"""Incremental re-runs: what to do with a run an earlier migration finished.

W&B's importer promised incremental imports but only compared metadata and summary, never the
history, and appended a second copy of the history when a run was imported again. Here a
finished run is, in order:

1. **resumed** when the source says it changed since (its ``revision`` moved: new points, a new
   summary, new files): the writer reopens at the ledger's checkpoint, so new points are appended
   after the ones already there and nothing is rewritten; metadata and summary are written anew;
2. **repaired** when the destination, checked against what the ledger says was written, is not
   what runferry left there (history lines missing, a summary value changed, a file missing):
   the run is migrated again from the start, overwriting in place (writers are idempotent);
3. **skipped** otherwise.

Checking is a capability a destination may offer (``RunChecker``): a cheap comparison of the
destination's own counters and metadata with the ledger, never a full read of the history.
Destinations without it keep the old behaviour: a finished run is skipped. The findings of every
check are recorded in the ledger (``checked`` lines), so ``status`` can say what was repaired.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from core.model import RunRecord
from core.protocols import FinishedRun, RunChecker


class Action(enum.Enum):
    SKIP = "skip"
    RESUME = "resume"
    REDO = "redo"


@dataclass(frozen=True)
class Decision:
    action: Action
    problems: tuple[str, ...] = ()


REVISION_KEY = "source_revision"
"""Key of the ledger's ``done`` totals holding the source revision that was migrated."""


def source_changed(revision: str | None, totals: dict[str, object]) -> bool:
    """Whether the source run moved on since the migration that recorded ``totals``."""
    recorded = totals.get(REVISION_KEY)
    return revision is not None and recorded is not None and revision != recorded


async def decide(run: RunRecord, finished: FinishedRun, totals: dict[str, object], destination: object) -> Decision:
    if source_changed(run.revision, totals):
        return Decision(Action.RESUME, ("changed at the source since the last migration",))
    if not isinstance(destination, RunChecker):
        return Decision(Action.SKIP)
    problems = await destination.check_run(run, finished)
    return Decision(Action.REDO, tuple(problems)) if problems else Decision(Action.SKIP)
