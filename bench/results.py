"""Repeated, alternated measurements and the JSON result every scenario leaves in bench/results/.

Why: one timing on a shared machine says little. Every tool runs ``repeats`` times, the order
of the tools reversed on every other round (so no tool always runs first on a cold server or
last on a warm one), each output verified before its time counts; the figures reported are
the median and the min-max of the samples, and the ratio of medians. The JSON result holds
the inputs, every tool's version, the machine's facts and every sample, so a table can be
rebuilt (``python -m bench report``) without trusting anyone's copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """bench/results/, or ``$BENCH_RESULTS_DIR`` (tests and trial runs keep the real results)."""
    return Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS_DIR)


@dataclass
class Sample:
    """One measured run of one tool (wall, CPU and peak RSS of its child process)."""

    tool: str
    repeat: int
    wall_s: float
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stats:
    """Median and range of one figure over a tool's samples."""

    median: float
    low: float
    high: float
    n: int

    def text(self, unit: str = "s", digits: int = 2) -> str:
        """``12.34 s (11.90-13.02)``: the median, then the range."""
        f = f".{digits}f"
        return f"{self.median:{f}} {unit} ({self.low:{f}}-{self.high:{f}})".replace(" (", " (", 1).strip()


def alternating_order(
    tools: Sequence[str], repeats: int, rounds: Mapping[str, int] | None = None
) -> list[tuple[int, str]]:
    """``(repeat, tool)`` in run order: the tools in order on even rounds, reversed on odd ones;
    a tool in ``rounds`` takes part in that many first rounds only (a slow peer)."""
    order: list[tuple[int, str]] = []
    for repeat in range(repeats):
        present = [t for t in tools if repeat < (rounds or {}).get(t, repeats)]
        round_tools = present if repeat % 2 == 0 else list(reversed(present))
        order += [(repeat, tool) for tool in round_tools]
    return order


def stats(values: Iterable[float]) -> Stats:
    values = list(values)
    if not values:
        raise ValueError("no samples")
    return Stats(statistics.median(values), min(values), max(values), len(values))


def summarize(samples: Iterable[Sample], figure: str = "wall_s") -> dict[str, Stats]:
    """Per tool, the stats of ``figure`` (a Sample field or a key of ``extra``)."""
    by_tool: dict[str, list[float]] = {}
    for s in samples:
        value = getattr(s, figure) if hasattr(s, figure) else s.extra[figure]
        by_tool.setdefault(s.tool, []).append(float(value))
    return {tool: stats(values) for tool, values in by_tool.items()}


def ratio_of_medians(summary: dict[str, Stats], slow: str, fast: str) -> float:
    """How many times faster ``fast`` is than ``slow`` (median wall times)."""
    return summary[slow].median / summary[fast].median


def run_alternated(
    tools: Sequence[str],
    repeats: int,
    measure: Callable[[str, int], Sample],
    *,
    log: Callable[[str], None] | None = None,
    rounds: Mapping[str, int] | None = None,
) -> list[Sample]:
    """Measure every tool ``repeats`` times (a tool in ``rounds``: that many) in alternated order;
    ``measure`` must verify the tool's output before it returns (raise to fail the whole bench:
    no time is reported)."""
    samples = []
    for repeat, tool in alternating_order(tools, repeats, rounds):
        sample = measure(tool, repeat)
        samples.append(sample)
        if log:
            log(f"  round {repeat + 1}/{repeats} {tool}: {sample.wall_s:.2f} s (verified)")
    return samples


def machine_facts() -> dict[str, Any]:
    """What the numbers depend on: CPU, memory, load when measured, OS and Python."""
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    try:
        facts["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["mem_total_gb"] = round(int(line.split()[1]) / 1e6, 1)
                break
    except OSError:
        pass
    return facts


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the code measured (with ``+dirty`` when the tree has changes)."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def write_result(
    scenario: str,
    *,
    inputs: dict[str, Any],
    versions: dict[str, Any],
    samples: Sequence[Sample],
    headline: dict[str, Any],
    notes: Sequence[str] = (),
    directory: Path | None = None,
    variant: str | None = None,
) -> Path:
    """``<directory>/<scenario>.json`` (the newest result of a scenario replaces the last);
    ``<scenario>-<variant>.json`` for a partial run (e.g. ``runferry-only``), so it never
    replaces the headline result."""
    summary = summarize(samples)
    body = {
        **_envelope(scenario, variant, inputs, versions),
        "headline": headline,
        "summary": {tool: asdict(s) for tool, s in summary.items()},
        "samples": [asdict(s) for s in samples],
        "notes": list(notes),
    }
    return _write(body, directory)


def write_cells(
    scenario: str,
    *,
    inputs: dict[str, Any],
    versions: dict[str, Any],
    cells: Sequence[Mapping[str, Any]],
    variant: str | None = None,
    directory: Path | None = None,
    command: str | None = None,
    commit: str | None = None,
) -> Path:
    """A result of measured cells rather than timed samples (``s3_slowdown --grid``: goodput and
    throttled share per front shape and client), with the same inputs, versions and machine;
    ``command`` / ``commit`` record a run's rows written after it (default: this process)."""
    body = {**_envelope(scenario, variant, inputs, versions, command=command, commit=commit), "cells": list(cells)}
    return _write(body, directory)


def _envelope(scenario: str, variant: str | None, inputs: dict[str, Any], versions: dict[str, Any], *,
              command: str | None = None, commit: str | None = None) -> dict[str, Any]:
    if command is None:
        command = "python -m bench " + " ".join([scenario, *sys.argv[2:]]) if sys.argv[1:2] == [scenario] else scenario
    return {
        "scenario": f"{scenario}-{variant}" if variant else scenario,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "inputs": inputs,
        "versions": {"runferry commit": commit or git_commit(), **versions},
        "machine": machine_facts(),
    }


def _write(body: dict[str, Any], directory: Path | None) -> Path:
    """``<directory>/<scenario>.json``: the newest result of a scenario replaces the last."""
    directory = directory or results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{body['scenario']}.json"
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def load_results(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every timed result (``write_result``'s shape) in ``directory``."""
    return [r for r in _load(directory) if "summary" in r and "samples" in r]


def load_cells(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every result of measured cells (``write_cells``'s shape) in ``directory``."""
    return [r for r in _load(directory) if "cells" in r]


def _load(directory: Path | None) -> list[dict[str, Any]]:
    directory = directory or results_dir()
    loaded = (json.loads(p.read_text()) for p in sorted(directory.glob("*.json")))
    return [r for r in loaded if isinstance(r, dict)]
