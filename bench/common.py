"""Shared bench helpers: run a child and measure it (wall, CPU, peak RSS), print tables.

Every figure comes from a child process, so the numbers belong to exactly that process (not
to the bench driver, and not to other children): wall time around it, CPU time from
``os.wait4``, and peak RSS from the child's own ``VmHWM`` (``/proc/<pid>/status``, read every
10 ms while it runs). ``wait4``'s ``ru_maxrss`` cannot be used for memory: Linux carries the
parent's high-water mark into a child across fork/exec, so every child below the bench
driver's size (~190 MB once wandb and mlflow are imported) showed the driver's figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "engine", "adapters", "ratelimit", "scaleout", "bench", "tests")


def compile_sources() -> None:
    """Byte-compile runferry's packages once, before anything is timed.

    A pip install leaves compiled bytecode beside every module, as the peers' installs did; an
    editable checkout run with ``PYTHONDONTWRITEBYTECODE`` (or a read-only tree) would instead
    compile every module from source in every measured process (about 0.3 s per start)."""
    import compileall

    for package in PACKAGES:
        compileall.compile_dir(str(REPO / package), quiet=1)


@dataclass(frozen=True)
class ChildResult:
    """How one child process went."""

    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 1e6

    def check(self) -> ChildResult:
        if self.returncode != 0:
            sys.stderr.write(self.stderr[-4000:])
            raise SystemExit(f"child failed with exit code {self.returncode}: {' '.join(self.argv)}")
        return self


def child_env(extra: dict[str, str] | None = None, *, arrow_pool: str = "default") -> dict[str, str]:
    """The bench's environment for a child: the repo importable, optionally an Arrow pool."""
    env = dict(os.environ)
    if arrow_pool != "default":
        env["ARROW_DEFAULT_MEMORY_POOL"] = arrow_pool
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def run_child(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``argv`` to completion; measure its wall time, CPU time and peak RSS (``wait4``)."""
    started = time.perf_counter()
    with subprocess.Popen(
        list(argv), cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        peak = _PeakRss(proc.pid)
        # communicate() would reap the child and lose its rusage: read the pipes, then wait4
        out, err = _drain(proc)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak.stop()
    wall = time.perf_counter() - started
    return ChildResult(
        argv=tuple(argv),
        returncode=proc.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_rss_bytes=peak.bytes,
        stdout=out,
        stderr=err,
    )


class _PeakRss:
    """The child's own high-water RSS (``VmHWM``), sampled by a thread until ``stop()``."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import threading

        self.path = Path(f"/proc/{pid}/status")
        self.bytes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while True:
            try:
                for line in self.path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.bytes = max(self.bytes, int(line.split()[1]) * 1024)  # kB
            except OSError:  # gone: the last sample stands
                return
            if self._done.wait(interval):
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    import threading

    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def pump(stream: Any, key: str) -> None:
        for line in stream:
            chunks[key].append(line)

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "".join(chunks["out"]), "".join(chunks["err"])


def python_child(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """A flat TOML file: ``{"source": {...}, "destination": {...}, "transfer": {...}}``."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def int_list(text: str) -> list[int]:
    """``"1,3,6"`` -> ``[1, 3, 6]``: a comma-separated command-line value (empty items skipped)."""
    return [int(x) for x in text.split(",") if x.strip()]


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}{unit}".rstrip()
    return f"{value:.2f} {unit}".rstrip()


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None, file: Any = None) -> None:
    """A plain, aligned text table (numbers right-aligned)."""
    rows = list(rows)
    if not rows:
        return
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out = file or sys.stdout
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r, row in zip(cells, rows, strict=True):
        print(
            "  ".join(
                v.rjust(w) if isinstance(row.get(c), (int, float)) else v.ljust(w)
                for v, w, c in zip(r, widths, columns, strict=True)
            ),
            file=out,
        )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def local_export_totals(directory: Path) -> dict[str, int]:
    """What a local export holds, read back: runs (run.json), history points (Parquet row counts
    of history.parquet and history.parts/), bytes of run files, console logs and artifact members."""
    import pyarrow.parquet as pq

    runs = points = file_bytes = 0
    for run_json in directory.glob("runs/*/*/*/run.json"):
        run_dir = run_json.parent
        runs += 1
        for part in [*run_dir.glob("history.parquet"), *run_dir.glob("history.parts/*.parquet")]:
            points += pq.read_metadata(part).num_rows
        for sub in ("files", "console", "artifacts"):
            file_bytes += sum(p.stat().st_size for p in (run_dir / sub).rglob("*")
                              if p.is_file() and p.name != "artifact.json")
    return {"runs": runs, "points": points, "file_bytes": file_bytes}
