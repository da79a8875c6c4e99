"""bench/ plumbing: the scenario dispatcher, child measurement, config writing, and a tiny
synthetic_local run through the real CLI (numbers are not asserted: timing belongs in bench)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from bench.__main__ import main as bench_main
from bench.common import print_table, run_child, write_toml


def test_listing_names_every_scenario_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main([]) == 0
    out = capsys.readouterr().out
    assert "synthetic_local" in out and "memory_scaling" in out
    assert "Peak RSS vs history length" in out


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["no_such_scenario"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_child_measurement_reports_its_exit_code_cpu_and_peak_rss() -> None:
    code = "b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); import sys; sys.exit(3)"
    child = run_child([sys.executable, "-c", code])
    assert child.returncode == 3
    assert child.peak_rss_bytes >= 80 * 1024 * 1024
    assert child.cpu_s > 0 and child.wall_s > 0


def test_written_toml_reads_back(tmp_path: Path) -> None:
    tables = {"source": {"type": "synthetic", "file_sizes": [1, 2], "special_fraction": 0.5, "x": 'q"\\'},
              "transfer": {"incremental": False}}  # fmt: skip
    path = write_toml(tmp_path / "c.toml", tables)
    assert tomllib.loads(path.read_text()) == tables


def test_table_printing_aligns_columns(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([{"a": "x", "b": 1234.5}, {"a": "longer", "c": 7}])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["a", "b", "c"]
    assert lines[2].startswith("x       1,234.50")


async def test_generate_and_write_phases_move_every_point_and_byte(tmp_path: Path) -> None:
    from bench.scenarios.synthetic_local import _args, _generate, _write, make_config

    a = _args(["--runs", "2", "--steps", "5", "--keys", "2", "--file-sizes", "10,0", "--artifact-sizes", "3"])
    generated = await _generate(make_config(tmp_path, a, "generate"))
    written = await _write(make_config(tmp_path, a, "write"))
    assert generated == {"points": 20, "bytes": 26}
    assert (written["points"], written["bytes"]) == (20, 26)
    assert pacsv.read_csv(tmp_path / "write-export" / "runs.csv").num_rows == 2


def test_synthetic_local_drives_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.scenarios.synthetic_local import main

    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tmp_path / "results"))
    args = ["--runs", "2", "--steps", "5", "--keys", "2", "--file-sizes", "10", "--artifact-sizes", "",
            "--phases", "migrate", "--workdir", str(tmp_path), "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["points"] == 20 and result["bytes"] == 20
    assert set(result["phases"]) == {"migrate"} and result["phases"]["migrate"]["peak_rss_bytes"] > 0
    assert (tmp_path / "migrate-export" / "runs.parquet").is_file()


def test_memory_scaling_reports_every_case(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.scenarios.memory_scaling import main

    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tmp_path / "results"))
    assert main(["--sizes", "100,300", "--keys", "10", "--workdir", str(tmp_path), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert [case["points"] for case in result["cases"]] == [100, 300]
    assert all(case["peak_rss_bytes"] > 0 for case in result["cases"]) and result["startup_peak_rss_bytes"] > 0
    assert any(line.startswith("peak RSS ratio 300 / 100 points") for line in lines)
    written = json.loads((tmp_path / "results" / "memory_scaling.json").read_text())
    assert [s["peak_rss_mb"] * 1e6 for s in written["samples"]] == pytest.approx([c["peak_rss_bytes"] for c in result["cases"]])


def test_tools_alternate_their_order_every_round() -> None:
    from bench.results import alternating_order

    assert alternating_order(["a", "b", "c"], 3) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"), (2, "a"), (2, "b"), (2, "c"),
    ]  # fmt: skip
    # a slow peer measured in the first round only; the others go on alternating
    assert alternating_order(["rf", "peer"], 3, {"peer": 1}) == [(0, "rf"), (0, "peer"), (1, "rf"), (2, "rf")]


def test_summary_is_median_and_range_per_tool_and_the_ratio_is_of_medians() -> None:
    from bench.results import Sample, ratio_of_medians, summarize

    samples = [Sample("rf", 0, 1.0), Sample("peer", 0, 30.0), Sample("rf", 1, 3.0), Sample("peer", 1, 10.0),
               Sample("rf", 2, 2.0, extra={"x": 5}), Sample("peer", 2, 20.0)]  # fmt: skip
    summary = summarize(samples)
    assert (summary["rf"].median, summary["rf"].low, summary["rf"].high, summary["rf"].n) == (2.0, 1.0, 3.0, 3)
    assert (summary["peer"].median, summary["peer"].low, summary["peer"].high) == (20.0, 10.0, 30.0)
    assert ratio_of_medians(summary, "peer", "rf") == 10.0
    assert summary["rf"].text() == "2.00 s (1.00-3.00)"


def test_run_alternated_measures_every_tool_in_order_and_a_failed_check_stops_it() -> None:
    from bench.results import Sample, run_alternated

    calls: list[tuple[str, int]] = []

    def measure(tool: str, repeat: int) -> Sample:
        calls.append((tool, repeat))
        if (tool, repeat) == ("b", 1):
            raise SystemExit("b's output differs")
        return Sample(tool, repeat, 1.0)

    assert [s.tool for s in run_alternated(["a", "b"], 1, measure)] == ["a", "b"]
    calls.clear()
    with pytest.raises(SystemExit, match="differs"):
        run_alternated(["a", "b"], 2, measure)
    assert calls == [("a", 0), ("b", 0), ("b", 1)]


def test_a_written_result_renders_as_a_table_row_and_a_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.results import Sample, load_results, write_result

    samples = [Sample("runferry", r, w) for r, w in enumerate((1.0, 2.0, 4.0))]
    samples += [Sample("peer", r, w) for r, w in enumerate((30.0, 20.0, 10.0))]
    path = write_result("demo", inputs={"runs": 2}, versions={"peer": "1.0"}, samples=samples,
                        headline={"ratio": 10.0}, directory=tmp_path)
    body = json.loads(path.read_text())
    assert body["summary"]["runferry"] == {"median": 2.0, "low": 1.0, "high": 4.0, "n": 3}
    assert [s["wall_s"] for s in body["samples"] if s["tool"] == "peer"] == [30.0, 20.0, 10.0]
    assert body["versions"]["peer"] == "1.0" and "runferry commit" in body["versions"]
    assert body["machine"]["cpus"] >= 1 and load_results(tmp_path) == [body]
    assert bench_main(["report", "--results", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| command | runferry | peer | ratio of medians | samples, machine |"
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[1:4] == ["2.00 s (1.00-4.00)", "peer 20.00 s (10.00-30.00)", "10.0x"]
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bound_measured_in_the_same_run_renders_as_its_own_row(tmp_path: Path) -> None:
    from bench.report import table_rows
    from bench.results import Sample, load_results, write_result

    samples = [Sample("runferry", r, w) for r, w in enumerate((5.0, 5.5, 6.0))]
    samples += [Sample("peer", r, w) for r, w in enumerate((110.0, 100.0, 120.0))]
    bound = {"label": "write ceiling", "median": 5.0, "low": 4.8, "high": 5.2, "n": 3}
    write_result("demo", inputs={}, versions={}, samples=samples, headline={"bounds": [bound]}, directory=tmp_path)
    rows = table_rows(load_results(tmp_path)[0])
    assert [row[1:4] for row in rows] == [
        ["5.50 s (5.00-6.00)", "peer 110.00 s (100.00-120.00)", "20.0x"],
        ["5.50 s (5.00-6.00)", "write ceiling 5.00 s (4.80-5.20)", "runferry at 1.10x of it"],
    ]
    assert rows[1][4].startswith("median (min-max) of 3 and 3;")


def test_a_bound_is_held_against_the_rounds_interleaved_with_it_where_it_names_them(tmp_path: Path) -> None:
    from bench.report import table_rows
    from bench.results import Sample, load_results, write_result

    samples = [Sample("runferry", r, w) for r, w in enumerate((9.0, 9.5, 10.0))]  # a slower hour
    samples += [Sample("peer", r, w) for r, w in enumerate((190.0, 200.0, 210.0))]
    ceiling = {"label": "write ceiling", "median": 5.0, "low": 4.0, "high": 6.0, "n": 5}
    bounds = [{**ceiling, "against": {"label": "runferry", "median": 5.4, "low": 5.1, "high": 6.6, "n": 5}},
              {**ceiling, "against": {"label": "runferry engine call", "median": 5.2, "low": 5.0, "high": 5.9, "n": 5}}]
    write_result("demo", inputs={}, versions={}, samples=samples, headline={"bounds": bounds}, directory=tmp_path)
    rows = table_rows(load_results(tmp_path)[0])
    assert [row[1:4] for row in rows[1:]] == [
        ["5.40 s (5.10-6.60)", "write ceiling 5.00 s (4.00-6.00)", "runferry at 1.08x of it"],
        ["runferry engine call 5.20 s (5.00-5.90)", "write ceiling 5.00 s (4.00-6.00)", "runferry at 1.04x of it"],
    ]
    assert all(row[4].startswith("median (min-max) of 5 and 5;") for row in rows[1:])


def test_the_readme_results_block_is_the_rendering_of_the_committed_results() -> None:
    from bench.report import README_END, README_START, readme_block
    from bench.results import load_results, results_dir

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index(README_START):readme.index(README_END) + len(README_END)]
    assert block == readme_block(load_results(results_dir())), "run: python -m bench report --readme README.md"
    for result in load_results(results_dir()):
        assert (results_dir() / f"{result['scenario']}.png").exists(), f"no chart for {result['scenario']}"


def _cell(rate: float, burst: float, prefixes: int, client: str, goodput: float, after: float, failed: int = 0) -> dict:
    return {"rate": rate, "burst_s": burst, "prefixes": prefixes, "client": client, "goodput": goodput,
            "throttled_after_10s": after, "failed": failed}


def test_grid_cells_render_one_row_per_front_the_newest_measurement_of_a_cell_winning(tmp_path: Path) -> None:
    from bench.report import GRID_END, GRID_START, grid_block, render_readme
    from bench.results import load_cells, load_results, write_cells

    old = [_cell(20, 0.1, 1, "runferry", 0.9, 0.05), _cell(20, 0.1, 4, "runferry", 0.95, 0.004),
           _cell(20, 0.1, 1, "boto3 standard", 0.95, 0.938, failed=14674)]
    path = write_cells("s3_slowdown", inputs={}, versions={}, cells=old, variant="grid", directory=tmp_path,
                       command="python -m bench s3_slowdown --grid --out /tmp/x", commit="abc1234")
    path.write_text(path.read_text().replace('"measured_at": "20', '"measured_at": "19', 1))  # an older run
    newer = [_cell(20, 0.1, 1, "runferry", 0.974, 0.0051), _cell(1000, 2, 1, "runferry", 1.031, 0.0017)]
    write_cells("s3_slowdown", inputs={}, versions={}, cells=newer, variant="grid-runferry", directory=tmp_path)
    grids = load_cells(tmp_path)
    assert len(grids) == 2 and load_results(tmp_path) == []  # cells are not timed results
    rows = [line for line in grid_block(grids).splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "| 20/s, 0.1 s | 1 / 4 | 0.974 / 0.51 %; 0.950 / 0.40 % | 0.950 / 93.80 % (14,674 failed); not run | not run; not run |",
        "| 1000/s, 2 s | 1 | 1.031 / 0.17 % | not run | not run |",
    ]
    assert "`python -m bench s3_slowdown --grid` (commit abc1234" in grid_block(grids)
    text = f"before\n{GRID_START}\nstale\n{GRID_END}\nafter"
    rendered = render_readme("x <!-- bench-results:start (rendered by python -m bench report --readme README.md; "
                             "do not edit) --> <!-- bench-results:end -->\n" + text, [], grids)
    assert "stale" not in rendered and rendered.endswith("after") and rows[1] in rendered


def test_the_readme_grid_block_is_the_rendering_of_the_committed_cells() -> None:
    from bench.report import GRID_END, GRID_START, grid_block
    from bench.results import load_cells, results_dir

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index(GRID_START):readme.index(GRID_END) + len(GRID_END)]
    assert block == grid_block(load_cells(results_dir())), "run: python -m bench report --readme README.md"
