"""``python -m bench report``: the README's benchmark table and one chart per scenario, rendered
from the JSON results in bench/results/ (``bench.results.write_result``).

Why: numbers in the README should be a rendering of recorded samples, not hand-copied; anyone
can re-render them, and see the median, the range and the machine they came from.

    python -m bench report [--results DIR] [--out FILE.md] [--charts DIR] [--no-charts] [--readme README.md]

``--readme`` replaces the README's block between ``README_START`` and ``README_END`` with the
rendering (a test keeps the committed README equal to the rendering of the committed results).
Results with a ``runferry`` tool go into the comparison table (one row per peer); the others
(runferry alone in several settings: scale-out, memory cases) into a table of their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.results import load_results, results_dir

README_START = "<!-- bench-results:start (rendered by python -m bench report --readme README.md; do not edit) -->"
README_END = "<!-- bench-results:end -->"


def _range(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.2f} s ({stats['low']:.2f}-{stats['high']:.2f})"


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per (runferry variant, peer) of a result: command, runferry, peer, ratio of
    medians, the machine. Tools named ``runferry...`` are runferry's variants, the rest peers."""
    summary = result["summary"]
    tools = list(summary)
    ours = [t for t in tools if t.startswith("runferry")] or tools[:1]
    machine = result.get("machine", {})
    where = f"{machine.get('cpus', '?')} CPUs, load {'/'.join(str(x) for x in machine.get('load_avg_1_5_15', [])[:1]) or '?'}"
    command = _without_workdir(result.get("command", result["scenario"]))
    points = result.get("headline", {}).get("points")
    label = result.get("headline", {}).get("label")  # which phase of a scenario, e.g. "download"
    what = f"`{command}`" + (f" ({points:,} points)" if points else "") + (f", {label}" if label else "")
    rows = []
    peers = [t for t in tools if t not in ours] or [None]
    for main in ours:
        for peer in peers:
            compared = peer is not None and main.startswith("runferry")
            rows.append([
                what,
                (f"{main} " if main != "runferry" else "") + _range(summary[main]),
                f"{peer} {_range(summary[peer])}" if peer else "",
                f"{summary[peer]['median'] / summary[main]['median']:.1f}x" if compared else "",
                f"median (min-max) of {summary[main]['n']}; {where}; {result.get('measured_at', '')[:10]}",
            ])
    return rows


def _without_workdir(command: str) -> str:
    """The command as anyone would type it: a ``--workdir`` or ``--out`` is where it ran, not what
    it measured."""
    words = command.split()
    where = ("--workdir", "--out")
    return " ".join(w for i, w in enumerate(words) if w not in where and (i == 0 or words[i - 1] not in where))


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_table(results: list[dict[str, Any]]) -> str:
    header = ["command", "runferry", "peer", "ratio of medians", "samples, machine"]
    return _markdown(header, [row for result in results for row in table_rows(result)])


def settings_rows(result: dict[str, Any]) -> list[list[str]]:
    """A result without a ``runferry`` tool: one row per setting (its samples' wall and peak RSS)."""
    command = _without_workdir(result.get("command", result["scenario"]))
    rows = []
    for tool, stats in result["summary"].items():
        rss = [s.get("peak_rss_mb", 0.0) for s in result["samples"] if s["tool"] == tool]
        rows.append([f"`{command}`", tool, _range(stats), f"{max(rss):.0f} MB" if rss and max(rss) else "",
                     f"{stats['n']} sample(s); {result.get('measured_at', '')[:10]}"])
    return rows


def readme_block(results: list[dict[str, Any]]) -> str:
    """What stands between the README's markers: both tables and the charts."""
    compared = [r for r in results if "runferry" in r["summary"]]
    alone = [r for r in results if "runferry" not in r["summary"]]
    parts = [README_START, "", markdown_table(compared)]
    if alone:
        parts += ["runferry alone, by setting:", "",
                  _markdown(["command", "setting", "wall time", "peak RSS", "samples"],
                            [row for r in alone for row in settings_rows(r)])]
    parts += [" ".join(f"![{r['scenario']}](bench/results/{r['scenario']}.png)" for r in results), "", README_END]
    return "\n".join(parts)


def render_readme(text: str, results: list[dict[str, Any]]) -> str:
    """``text`` with its results block replaced by the rendering of ``results``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"the README has no block between {README_START!r} and {README_END!r}")
    return text[:start] + readme_block(results) + text[end + len(README_END):]


def chart(result: dict[str, Any], path: Path) -> Path:
    """Median wall time per tool, the min-max range as error bars, every sample as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    tools = list(summary)
    medians = [summary[t]["median"] for t in tools]
    errors = [[summary[t]["median"] - summary[t]["low"] for t in tools],
              [summary[t]["high"] - summary[t]["median"] for t in tools]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tools), 3.2))
    ax.bar(tools, medians, yerr=errors, capsize=4, color=["#2b7bba" if t == "runferry" else "#999999" for t in tools])
    for i, tool in enumerate(tools):
        walls = [s["wall_s"] for s in result["samples"] if s["tool"] == tool]
        ax.plot([i] * len(walls), walls, "k.", markersize=4)
    ax.set_ylabel("wall time, s (median, min-max)")
    ax.set_title(result["scenario"], fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=results_dir())
    p.add_argument("--out", type=Path, help="write the markdown table here (default: stdout)")
    p.add_argument("--charts", type=Path, help="directory for the PNG charts (default: --results)")
    p.add_argument("--no-charts", action="store_true")
    p.add_argument("--readme", type=Path, help="re-render this README's results block in place")
    a = p.parse_args(argv)
    results = load_results(a.results)
    if not results:
        print(f"no results in {a.results}: run a scenario first", file=sys.stderr)
        return 1
    if a.readme:
        a.readme.write_text(render_readme(a.readme.read_text(), results))
        print(f"rendered: {a.readme}", file=sys.stderr)
    table = markdown_table(results)
    if a.out:
        a.out.write_text(table)
    else:
        sys.stdout.write(table)
    if not a.no_charts:
        for result in results:
            png = chart(result, (a.charts or a.results) / f"{result['scenario']}.png")
            print(f"chart: {png}", file=sys.stderr)
    return 0
