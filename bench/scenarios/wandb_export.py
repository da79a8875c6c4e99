"""W&B -> Parquet: runferry's export against W&B's documented public-API recipe, same server and data.

One W&B-compatible server (``python -m tests.servers.wandb``, its own process) seeded once
through the current official SDK with the ``bench.wandb_data`` dataset (several projects,
``projects * runs * steps * (keys + 1)`` history points, system metrics, artifacts). With
``--history-exports on`` (default) the server exports each finished run's history to parquet,
as wandb.ai does, and both tools read those exports (wandb-core's ``scan_history`` and
runferry's ``history_exports``); ``off`` serves history only as JSON pages. Measured children, ``--repeats`` times each, order alternated, a fresh output directory every time:

- ``runferry``: ``python -m engine migrate`` with ``[destination] type = "local"`` and its
  defaults, given the recipe's job: the runs table (``runs.parquet``/``runs.csv``) and every
  run's full history in Parquet (``include_system_metrics``, ``include_console``,
  ``include_files``, ``include_artifacts`` and ``include_reports`` off: they choose what is
  exported, not how fast);
- ``runferry-everything``: the same with every default, which also exports system metrics,
  console logs, run files and artifacts (``--no-everything`` skips it);
- ``recipe``: W&B's docs, as a user would run it (current wandb, one process): the runs table
  (``api.runs(path)``; ``run.summary._json_dict``, ``run.config`` without ``_`` keys,
  ``run.name`` into a pandas DataFrame, ``to_csv``) and each run's history
  (``pd.DataFrame(run.scan_history())`` ``.to_csv``), runs one after another;
- ``recipe-pN`` (``--recipe-page-size N``, default 10000; 0 = skip): the same with its one
  speed knob, ``scan_history(page_size=N)`` (default 1000).

Both outputs are read back and compared with ``wandb.Api()``'s reads of the source BEFORE any
time is reported: runferry's Parquet histories (every row's ``_step``, ``_timestamp`` and
values, exact; the system-metrics lines too) and runs table (ids, names, states, flattened
config and summary); the recipe's CSVs (every row's values after pandas' float round trip,
``float_precision="round_trip"``; run count and names of the runs table). A difference prints
and fails the bench.

    python -m bench wandb_export [--projects 3 --runs 4 --steps 10000 --keys 10 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench import wandb_data as wd
from bench.common import (
    ChildResult,
    child_env,
    print_table,
    python_child,
    run_child,
    write_toml,
)
from bench.results import (
    Sample,
    package_version,
    ratio_of_medians,
    run_alternated,
    summarize,
    write_result,
)

RECIPE_SCRIPT = """
import os, sys
import pandas as pd
import wandb

out, entity, page_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
api = wandb.Api()
for project in sys.argv[4].split(","):
    runs = api.runs(entity + "/" + project)
    summary_list, config_list, name_list = [], [], []
    for run in runs:
        # the runs table, as W&B's "export to CSV" recipe has it
        summary_list.append(run.summary._json_dict)
        config_list.append({k: v for k, v in run.config.items() if not k.startswith("_")})
        name_list.append(run.name)
        # the run's full history (scan_history, not the sampled history())
        rows = run.scan_history(page_size=page_size) if page_size else run.scan_history()
        pd.DataFrame(rows).to_csv(os.path.join(out, f"{project}--{run.id}.csv"), index=False)
    runs_df = pd.DataFrame({"summary": summary_list, "config": config_list, "name": name_list})
    runs_df.to_csv(os.path.join(out, f"{project}.csv"))
"""


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench wandb_export", description=__doc__.splitlines()[0])
    wd.add_dataset_args(p, "wandb_export", steps=10_000)  # 1.3M points: an export is about throughput
    p.add_argument("--recipe-page-size", type=int, default=10_000, help="also run the recipe with scan_history(page_size=N) (0: skip)")
    p.add_argument("--history-exports", choices=("on", "off"), default="on",
                   help="the server exports finished runs' history to parquet, as wandb.ai does (on), or "
                        "serves history only as JSON pages (off); both tools read whichever it offers")
    p.add_argument("--no-everything", dest="everything", action="store_false",
                   help="skip runferry-everything (runferry's export with system metrics, console, files and artifacts)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    return wd.in_workdir(_args(argv), "bench-wandb-export-", _drive)


def _drive(a: argparse.Namespace, workdir: Path) -> int:
    projects = wd.project_names(a.projects)
    tools = ["runferry"] + (["runferry-everything"] if a.everything else []) + ["recipe"]
    tools += [f"recipe-p{a.recipe_page_size}"] if a.recipe_page_size else []
    with wd.WandbServerProcess({wd.SRC_KEY: [wd.SRC_ENTITY]}, workdir / "server.log",
                               history_exports=a.history_exports == "on") as server:
        source, size, seed_s = wd.seed_and_read(server, workdir, a)

        def measure(tool: str, repeat: int) -> Sample:
            home = workdir / f"{tool}-{repeat}"
            out = home / "out"
            out.mkdir(parents=True)
            server_cpu = server.cpu_s()
            if tool.startswith("runferry"):
                everything = tool == "runferry-everything"
                result = _runferry(server.url, home, out, everything=everything)
                diffs = _check_runferry(out, source, with_system=everything)
            else:
                page_size = 0 if tool == "recipe" else a.recipe_page_size
                result = _recipe(server.url, projects, page_size, home, out)
                diffs = _check_recipe(out, source, projects)
            server_cpu = server.cpu_s() - server_cpu
            if diffs:
                print(f"\n{tool} (round {repeat + 1}) differs from the source:", file=sys.stderr)
                for line in diffs[:20]:
                    print("  " + line, file=sys.stderr)
                raise SystemExit(f"{tool}'s output is not equal to the source: no time reported")
            out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            return Sample(tool, repeat, result.wall_s, result.cpu_s, result.peak_rss_mb,
                          {"server_cpu_s": round(server_cpu, 2), "output_bytes": out_bytes})

        samples = run_alternated(tools, a.repeats, measure, log=lambda line: print(line, flush=True))
    return _report(a, tools, samples, size, seed_s)


RECIPE_JOB = {key: False for key in ("include_system_metrics", "include_console", "include_files",
                                     "include_artifacts", "include_reports")}


def _runferry(url: str, home: Path, out: Path, *, everything: bool) -> ChildResult:
    source = {"type": "wandb", "base_url": url, "api_key_env": "BENCH_SRC_KEY", "namespaces": [f"{wd.SRC_ENTITY}/*"]}
    config = write_toml(home / "runferry.toml", {
        "source": source if everything else {**source, **RECIPE_JOB},
        "destination": {"type": "local", "path": str(out)},
        "transfer": {"ledger": str(home / "ledger.jsonl")},
    })
    env = child_env({"BENCH_SRC_KEY": wd.SRC_KEY, "TMPDIR": str(home)})
    result = run_child(python_child("engine", "migrate", str(config), "--log-format", "plain", "--interval", "0.5"),
                       cwd=home, env=env).check()
    (home / "runferry.log").write_text(result.stderr + result.stdout)  # progress lines and report: what bounded it
    return result


def _recipe(url: str, projects: list[str], page_size: int, home: Path, out: Path) -> ChildResult:
    env = wd.sdk_env(url, wd.SRC_KEY, home / "wandb")
    env.pop("PYTHONPATH", None)
    argv = [sys.executable, "-c", RECIPE_SCRIPT, str(out), wd.SRC_ENTITY, str(page_size), ",".join(projects)]
    return run_child(argv, cwd=home, env=env).check()


# --- reading the outputs back --------------------------------------------------------------------


def _check_runferry(out: Path, source: dict[str, dict], *, with_system: bool) -> list[str]:
    """runferry's export against the source: histories (and system lines) exact, runs table.
    One run in memory at a time (a long history as Python objects is large)."""
    import anyio
    import pyarrow.parquet as pq

    diffs = anyio.run(_compare_export, out, source, with_system)
    table = pq.read_table(out / "runs.parquet").to_pylist()
    diffs += _check_runs_table(table, source)
    return diffs


async def _compare_export(out: Path, source: dict[str, dict], with_system: bool) -> list[str]:
    from adapters.local import LocalSource, LocalSourceConfig
    from tests.wandb_source.oracle import rows_from_points

    diffs: list[str] = []
    seen = []
    async with LocalSource(LocalSourceConfig(path=str(out))) as exported:
        async for ref in exported.list_runs():
            path = f"{ref.namespace.project}/{ref.run_id}"
            seen.append(path)
            record = await exported.get_run(ref)
            points = [p async for chunk in exported.iter_history(record) for p in chunk.batch.to_pylist()]
            rows, system = rows_from_points(points)
            del points
            copied = {"rows": [{k: v for k, v in r.items() if k != "_runtime"} for r in rows], "system": system}
            want = dict(source.get(path, {"rows": None, "system": None}))
            if not with_system:
                want["system"] = []
            diffs += wd.differences({path: want}, {path: copied}, {"rows": None, "system": None})
    if sorted(seen) != sorted(source):
        diffs.append(f"runs: exported {sorted(seen)[:5]}..., source {sorted(source)[:5]}...")
    return diffs


def _check_runs_table(table: list[dict[str, Any]], source: dict[str, dict]) -> list[str]:
    """Every source run once, with its name, state, and config/summary flattened as
    ``pd.json_normalize`` flattens them (W&B's recipe)."""
    import pandas as pd

    diffs = []
    by_path = {f"{row['project']}/{row['id']}": row for row in table}
    if sorted(by_path) != sorted(source):
        return [f"runs table: {sorted(by_path)[:5]}... instead of {sorted(source)[:5]}..."]
    for path, view in source.items():
        row = by_path[path]
        want = {"name": view["name"], "state": view["state"]}
        config = {k: v for k, v in view["config"].items() if not k.startswith("_")}
        flat = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
        for prefix, data in (("config.", flat), ("summary.", view["summary"])):
            for key, value in pd.json_normalize(data).iloc[0].to_dict().items():
                want[prefix + key] = value
        for key, value in want.items():
            if not _same_cell(row.get(key, "<missing>"), value):
                diffs.append(f"runs table {path} {key}: {row.get(key, '<missing>')!r} instead of {value!r}")
    return diffs


def _same_cell(cell: Any, value: Any) -> bool:
    if isinstance(value, list) and isinstance(cell, str):
        return json.loads(cell) == value
    if isinstance(value, float) and isinstance(cell, float) and math.isnan(value):
        return math.isnan(cell)
    return cell == value


def _check_recipe(out: Path, source: dict[str, dict], projects: list[str]) -> list[str]:
    """The recipe's CSVs against the source: one file per run, every row's values."""
    import pandas as pd

    diffs: list[str] = []
    for project in projects:
        names = pd.read_csv(out / f"{project}.csv")["name"].tolist()
        want = [v["name"] for p, v in source.items() if p.startswith(project + "/")]
        if sorted(names) != sorted(want):
            diffs.append(f"{project}.csv names {names} instead of {want}")
    for path, view in source.items():
        csv = out / (path.replace("/", "--") + ".csv")
        if not csv.exists():
            diffs.append(f"{path}: no history CSV")
            continue
        frame = pd.read_csv(csv, float_precision="round_trip")
        rows = [{k: v for k, v in r.items() if k != "_runtime" and not _is_nan(v)} for r in frame.to_dict("records")]
        want = view["rows"]
        if len(rows) != len(want):
            diffs.append(f"{path}: {len(rows)} history rows instead of {len(want)}")
            continue
        for i, (got, expected) in enumerate(zip(rows, want, strict=True)):
            if got.keys() != expected.keys() or any(float(got[k]) != float(expected[k]) for k in expected):
                diffs.append(f"{path} row {i}: {got} instead of {expected}")
                break
    return diffs


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _report(a: argparse.Namespace, tools: list[str], samples: list[Sample], size: dict[str, int], seed_s: float) -> int:
    summary = summarize(samples)
    points = size["points"]
    history_mb = size["history_bytes"] / 1e6
    rows = []
    for tool in tools:
        s = summary[tool]
        mine = [x for x in samples if x.tool == tool]
        rows.append({
            "tool": tool, "wall_s median": round(s.median, 2), "min-max": f"{s.low:.2f}-{s.high:.2f}",
            "points/s": round(points / s.median), "history MB/s": round(history_mb / s.median, 2),
            "cpu_s": round(summarize(mine, "cpu_s")[tool].median, 2),
            "server cpu_s": round(summarize(mine, "server_cpu_s")[tool].median, 2),
            "output MB": round(summarize(mine, "output_bytes")[tool].median / 1e6, 2),
            "peak_rss_mb": round(summarize(mine, "peak_rss_mb")[tool].median, 1),
        })
    print(f"\nW&B -> files: {size['runs']} runs in {a.projects} projects, {points:,} history points "
          f"({history_mb:.1f} MB as JSON rows); {a.repeats} rounds, order alternated, fresh output each time\n")
    print_table(rows)
    print("\nverified before timing: runferry's Parquet histories and system lines exact (_step, _timestamp, values), "
          "runs table (name, state, config.*, summary.*); the recipe's CSVs (every row, run names)")
    print("runferry does the recipe's job (runs table + histories); runferry-everything also exports system "
          "metrics, console logs, run files and artifacts (its defaults)")
    headline: dict[str, Any] = {"points": points, "megabytes": round(history_mb, 3),
                                "runferry_wall_s": summary["runferry"].median}
    for ours in [t for t in tools if t.startswith("runferry")]:
        for peer in [t for t in tools if not t.startswith("runferry")]:
            ratio = ratio_of_medians(summary, peer, ours)
            headline[f"ratio_vs_{peer}" if ours == "runferry" else f"ratio_{ours}_vs_{peer}"] = round(ratio, 2)
            print(f"{ours} is {ratio:.1f}x faster than {peer} (ratio of median wall times)")
    versions = {"runferry": package_version("runferry"), "wandb (seed, recipe, oracle)": package_version("wandb"),
                "pandas": package_version("pandas"), "pyarrow": package_version("pyarrow"),
                "python": sys.version.split()[0]}
    path = write_result("wandb_export", inputs={**vars(a), "seed_s": round(seed_s, 1), **size}, versions=versions,
                        samples=samples, headline=headline, variant=a.variant,
                        notes=["runferry: the recipe's job (runs table + histories); runferry-everything: also system "
                               "metrics, console, files, artifacts",
                               "shared 2-core machine under other load: absolute times swing, ratios less"])
    print(f"result: {path}")
    return 0
