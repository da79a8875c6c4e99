"""Live progress and the final report: counters fed by events, shown three ways.

The pipeline and the adapters only call ``Progress.event(name, **fields)`` (the
``AdapterContext.events`` hook); how it is shown is chosen once, at start:

- ``rich``  live bars on a terminal (runs, history points, bytes, throughput, throttles)
- ``plain`` one line every ``interval`` seconds when output is not a terminal
- ``json``  one JSON object per line (``--log-format json``), for machines

Events: ``run_started``, ``run_done``, ``run_failed``, ``run_skipped``, ``points`` (n),
``bytes`` (n), ``throttle``, ``retry``, ``collision`` (n), ``admission_wait`` (reason: ``cap``,
``memory`` or ``endpoint <url> paused|throttled|saturated``), plus anything else an adapter sends
(counted by name). Every view also shows the runs in flight, the memory budget in use and what
admission of the next run waits for (``engine/admission.py``), so a user can tell what bounds
the migration.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Totals:
    runs_selected: int = 0
    runs_started: int = 0
    runs_done: int = 0
    runs_failed: int = 0
    runs_skipped: int = 0
    points: int = 0
    bytes: int = 0
    files: int = 0
    throttles: int = 0
    retries: int = 0
    other: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    admission_waits: Counter[str] = field(default_factory=Counter)  # by kind: cap, memory, endpoint


class Progress:
    """Collects events into ``totals`` and renders them (see module docstring)."""

    def __init__(
        self,
        *,
        mode: str = "plain",
        stream: TextIO | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        expected_runs: int | None = None,
    ) -> None:
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval
        self.clock = clock
        self.totals = Totals()
        self.started = clock()
        self._last_line = self.started
        self._live: Any = None
        self._tasks: dict[str, Any] = {}
        self.expected_runs = expected_runs
        self.limiters: Any = None  # the run's ratelimit registry, for live per-endpoint figures
        self.admission: Any = None  # the pipeline's run admission, for runs in flight and waits

    @classmethod
    def quiet(cls) -> Progress:
        """Counts events and shows nothing (read-only commands that reuse the adapters)."""
        return cls(mode="quiet", stream=_NullStream())

    # -- the event hook ----------------------------------------------------------------------
    def event(self, name: str, **fields: Any) -> None:
        t = self.totals
        if name == "points":
            t.points += int(fields.get("n", 0))
        elif name == "bytes":
            t.bytes += int(fields.get("n", 0))
        elif name == "run_selected":
            t.runs_selected += 1
        elif name == "run_started":
            t.runs_started += 1
        elif name == "run_done":
            t.runs_done += 1
        elif name == "file_done":
            t.files += 1
        elif name == "run_failed":
            t.runs_failed += 1
            t.failures.append((str(fields.get("run")), str(fields.get("reason"))))
        elif name == "run_skipped":
            t.runs_skipped += 1
        elif name == "throttle":
            t.throttles += 1
        elif name == "retry":
            t.retries += 1
        elif name == "admission_wait":
            t.admission_waits[str(fields.get("reason", "")).split(" ")[0]] += 1
        else:
            t.other[name] += int(fields.get("n", 1))
        if self.mode == "json" and name not in ("points", "bytes"):
            self._emit_json({"event": name, **{k: _plain(v) for k, v in fields.items()}})
        self._refresh()

    # -- rendering ---------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._live = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=_console(self.stream),
                transient=False,
            )
            self._live.__enter__()
            self._tasks["runs"] = self._live.add_task("runs", total=self.expected_runs, detail="")
            self._tasks["points"] = self._live.add_task("history", total=None, detail="")
            self._tasks["bytes"] = self._live.add_task("files", total=None, detail="")
            self._tasks["admission"] = self._live.add_task("admission", total=None, detail="", visible=False)
            self._tasks["endpoints"] = self._live.add_task("limits", total=None, detail="", visible=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._refresh(force=True)
            self._live.__exit__(*exc)
            self._live = None

    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def _refresh(self, force: bool = False) -> None:
        now = self.clock()
        t = self.totals
        if self._live is not None:
            el = self.elapsed()
            finished = t.runs_done + t.runs_failed + t.runs_skipped
            self._live.update(
                self._tasks["runs"],
                completed=finished,
                total=max(t.runs_selected, self.expected_runs or 0) or None,
                detail=f"done {t.runs_done} failed {t.runs_failed} skipped {t.runs_skipped}",
            )
            self._live.update(self._tasks["points"], completed=t.points, detail=f"{t.points / el:,.0f} pts/s")
            self._live.update(
                self._tasks["bytes"],
                completed=t.bytes,
                detail=f"{t.bytes / el / 1e6:,.1f} MB/s  throttled {t.throttles}  retries {t.retries}",
            )
            admission = self.admission_figure()
            if admission:
                self._live.update(self._tasks["admission"], visible=True, detail=admission)
            figures = self.endpoint_figures()
            if figures:
                self._live.update(self._tasks["endpoints"], visible=True, detail="; ".join(figures))
        elif self.mode == "plain" and (force or now - self._last_line >= self.interval):
            self._last_line = now
            self.stream.write(self.status_line() + "\n")
            self.stream.flush()
        elif self.mode == "json" and now - self._last_line >= self.interval:
            self._last_line = now
            self._emit_json({"event": "progress", **self.snapshot()})

    def status_line(self) -> str:
        t = self.totals
        el = self.elapsed()
        line = (
            f"[{el:7.1f}s] runs done {t.runs_done} failed {t.runs_failed} skipped {t.runs_skipped}"
            f" | points {t.points:,} ({t.points / el:,.0f}/s) | bytes {t.bytes / 1e6:,.1f} MB"
            f" ({t.bytes / el / 1e6:,.1f} MB/s) | throttled {t.throttles} retries {t.retries}"
        )
        admission = self.admission_figure()
        endpoints = self.endpoint_figures()
        return line + "".join(f"\n    {e}" for e in [admission, *endpoints] if e)

    def admission_figure(self) -> str:
        """Runs in flight / cap, memory in use / budget, and what the next run waits for."""
        if self.admission is None:
            return ""
        f = self.admission.figures()
        waits = f["admission_waits_on"] or "nothing"
        return (
            f"runs in flight {f['runs_in_flight']}/{f['runs_cap']}, memory {f['memory_used'] / 1e6:,.1f}"
            f"/{f['memory_budget'] / 1e6:,.1f} MB, next run waits on: {waits}"
        )

    def endpoint_figures(self) -> list[str]:
        """Per-endpoint limiter figures: concurrency in use / allowed, paced and accepted rate."""
        if self.limiters is None:
            return []
        out = []
        for s in self.limiters.statistics():
            rate = "unpaced" if s.rate_limit is None else f"paced {s.rate_limit:,.1f}/s"
            out.append(
                f"{s.endpoint}: in flight {s.in_flight}/{s.concurrency_limit}, {rate},"
                f" accepted {s.accepted_rate:,.1f}/s, throttles {s.throttles}, retries {s.retries}"
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        t = self.totals
        el = self.elapsed()
        return {
            "elapsed_s": round(el, 3),
            "runs_done": t.runs_done,
            "runs_failed": t.runs_failed,
            "runs_skipped": t.runs_skipped,
            "points": t.points,
            "bytes": t.bytes,
            "files": t.files,
            "points_per_s": round(t.points / el, 1),
            "bytes_per_s": round(t.bytes / el, 1),
            "throttles": t.throttles,
            "retries": t.retries,
            **({} if self.admission is None else self.admission.figures()),
            "admission_waits": dict(t.admission_waits),
            "endpoints": [] if self.limiters is None else [
                {"endpoint": s.endpoint, "concurrency": s.concurrency_limit, "in_flight": s.in_flight,
                 "rate_limit": s.rate_limit, "accepted_rate": round(s.accepted_rate, 2),
                 "throttles": s.throttles, "retries": s.retries}
                for s in self.limiters.statistics()
            ],
            **{f"events.{k}": v for k, v in sorted(t.other.items())},
        }

    def _emit_json(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def final_report(self, out: TextIO, *, interrupted: bool = False) -> None:
        """The closing table: runs done/failed/skipped, points, bytes, elapsed, throughput."""
        snap = self.snapshot()
        t = self.totals
        if self.mode == "json":
            out.write(json.dumps({"event": "report", "interrupted": interrupted, **snap,
                                  "failures": [{"run": r, "reason": why} for r, why in t.failures]}) + "\n")
            return
        rows = [
            ("runs done", f"{t.runs_done:,}"),
            ("runs failed", f"{t.runs_failed:,}"),
            ("runs skipped (already done)", f"{t.runs_skipped:,}"),
            ("history points", f"{t.points:,}"),
            ("files", f"{t.files:,}"),
            ("bytes", f"{t.bytes:,} ({t.bytes / 1e6:,.1f} MB)"),
            ("elapsed", f"{snap['elapsed_s']:.2f} s"),
            ("throughput", f"{snap['points_per_s']:,.0f} points/s, {snap['bytes_per_s'] / 1e6:,.1f} MB/s"),
            ("throttling events", f"{t.throttles:,}"),
            ("retries", f"{t.retries:,}"),
        ]
        if t.admission_waits:
            waits = ", ".join(f"{kind} {n:,}" for kind, n in sorted(t.admission_waits.items()))
            rows.append(("admission waited on", waits))
        rows += [(f"{k}", f"{v:,}") for k, v in sorted(t.other.items())]
        width = max(len(k) for k, _ in rows)
        title = "runferry report" + (" (interrupted — re-run the same command to resume)" if interrupted else "")
        out.write(title + "\n" + "-" * len(title) + "\n")
        for k, v in rows:
            out.write(f"{k:<{width}}  {v}\n")
        if t.failures:
            out.write("failed runs:\n")
            for run, why in t.failures:
                out.write(f"  {run}: {why}\n")
        out.flush()


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _console(stream: TextIO) -> Any:
    from rich.console import Console

    return Console(file=stream)


class _NullStream(io.StringIO):
    """Swallows text (``Progress.quiet``)."""

    def write(self, _: str) -> int:
        return 0
