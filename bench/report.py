"""``python -m bench report``: the README's benchmark table and one chart per scenario, rendered
from the JSON results in bench/results/ (``bench.results.write_result``).

Why: numbers in the README should be a rendering of recorded samples, not hand-copied; anyone
can re-render them, and see the median, the range and the machine they came from.

    python -m bench report [--results DIR] [--out FILE.md] [--charts DIR] [--no-charts] [--readme README.md]

``--readme`` replaces the README's block between ``README_START`` and ``README_END`` with the
rendering, and the one between ``GRID_START`` and ``GRID_END`` with the SlowDown grid of the
cell results (``s3_slowdown --grid``); a test keeps the committed README equal to the rendering
of the committed results.
Results with a ``runferry`` tool go into the comparison table (one row per peer); the others
(runferry alone in several settings: scale-out, memory cases) into a table of their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.results import load_cells, load_results, results_dir

README_START = "<!-- bench-results:start (rendered by python -m bench report --readme README.md; do not edit) -->"
README_END = "<!-- bench-results:end -->"
GRID_START = "<!-- bench-grid:start (rendered by python -m bench report --readme README.md; do not edit) -->"
GRID_END = "<!-- bench-grid:end -->"
GRID_CLIENTS = ("runferry", "boto3 standard", "boto3 adaptive")


def _range(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.2f} s ({stats['low']:.2f}-{stats['high']:.2f})"


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per (runferry variant, peer) of a result: command, runferry, peer, ratio of
    medians, the machine. Tools named ``runferry...`` are runferry's variants, the rest peers.
    A headline's ``bounds`` (a server's ceiling measured in the same run: label, median, low,
    high, n) add a row each, with runferry's median as a multiple of the bound's: the median of
    the bound's ``against`` (runferry's rounds interleaved with the bound's) where it has one."""
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
    for bound in result.get("headline", {}).get("bounds", []):  # a server's own ceiling, measured in the same run
        # against: runferry's own rounds interleaved with the bound's (else its headline rounds)
        against = bound.get("against") or {"label": ours[0], **summary[ours[0]]}
        named = f"{against['label']} " if against["label"] != "runferry" else ""
        rows.append([what, named + _range(against), f"{bound['label']} {_range(bound)}",
                     f"runferry at {against['median'] / bound['median']:.2f}x of it",
                     f"median (min-max) of {against['n']} and {bound['n']}; {where}; {result.get('measured_at', '')[:10]}"])
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


def grid_block(grids: list[dict[str, Any]]) -> str:
    """The SlowDown grid (``s3_slowdown --grid`` results, ``write_cells``): one row per front
    shape, per client goodput / throttled share after 10 s for each prefix count, failures when
    any; cells of several runs merged, the newest measurement of a cell winning."""
    cells: dict[tuple[float, float, int, str], dict[str, Any]] = {}
    for grid in sorted(grids, key=lambda g: g.get("measured_at", "")):
        for cell in grid["cells"]:
            cells[(cell["rate"], cell["burst_s"], cell["prefixes"], cell["client"])] = cell
    rows = []
    for rate, burst in sorted({(rate, burst) for rate, burst, _, _ in cells}):
        counts = sorted({n for r, b, n, _ in cells if (r, b) == (rate, burst)})
        row = [f"{rate:g}/s, {burst:g} s", " / ".join(str(n) for n in counts)]
        for client in GRID_CLIENTS:
            row.append("; ".join(_grid_cell(cells.get((rate, burst, n, client))) for n in counts))
        rows.append(row)
    header = ["front (R per prefix, burst)", "prefixes", "runferry goodput / throttled after 10 s", *GRID_CLIENTS[1:]]
    sources = [f"`{_without_workdir(g['command'])}` (commit {g['versions'].get('runferry commit')}, "
               f"{g['measured_at'][:10]}, load {_load_range(g['cells'])})" for g in grids]
    parts = [GRID_START, "", _markdown(header, rows), "Cells from: " + "; ".join(sources) + ".", "", GRID_END]
    return "\n".join(parts)


def _load_range(cells: list[dict[str, Any]]) -> str:
    loads = [c["load_average"] for c in cells if "load_average" in c]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"


def _grid_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "not run"
    failed = f" ({cell['failed']:,} failed)" if cell["failed"] else ""
    return f"{cell['goodput']:.3f} / {100 * cell['throttled_after_10s']:.2f} %{failed}"


def render_readme(text: str, results: list[dict[str, Any]], grids: list[dict[str, Any]] | None = None) -> str:
    """``text`` with its results block replaced by the rendering of ``results``, and its grid
    block (when it has one) by the rendering of ``grids``."""
    text = _replace_block(text, README_START, README_END, readme_block(results))
    if grids and GRID_START in text:
        text = _replace_block(text, GRID_START, GRID_END, grid_block(grids))
    return text


def _replace_block(text: str, start_marker: str, end_marker: str, block: str) -> str:
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise SystemExit(f"the README has no block between {start_marker!r} and {end_marker!r}")
    return text[:start] + block + text[end + len(end_marker):]


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
        a.readme.write_text(render_readme(a.readme.read_text(), results, load_cells(a.results)))
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
