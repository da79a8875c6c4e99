"""W&B -> W&B: runferry against wandb 0.27.0's own WandbImporter, same servers, same data.

Two W&B-compatible servers (``python -m tests.servers.wandb``, each its own process): the
source, seeded once per bench run through the current official SDK (``bench.wandb_data``:
several projects, ``projects * runs * steps * (keys + 1)`` history points, system metrics,
console logs, artifacts with aliases and lineage, a failed run per project); and a FRESH
destination server for every sample. Every tool runs ``--repeats`` times, order alternated:

- ``runferry``: ``python -m engine migrate`` with its defaults (``[[remap]] src/* -> dst/*``,
  nothing tuned: ``runs_concurrency``, ``filestream_rate`` = 2 requests/s per run, ...);
- ``peer``: ``wandb.apis.importers.wandb.WandbImporter(...).import_all(namespaces=...,
  remapping=..., reports=False)`` then ``import_reports(...)`` (reports last: see
  ``REPORTS_LAST``) from wandb 0.27.0 (the last SDK that has it) with its defaults, in the venv
  ``python -m bench.wandb027 --importers`` makes, in a fresh working directory (its
  incremental ``*.jsonl`` files live there);
- ``peer-wN`` (``--peer-max-workers N``, default 16; 0 = skip): the same with its one speed
  knob, ``import_runs(max_workers=N)`` and ``import_artifact_sequences(max_workers=N)``
  (``import_all`` has no such argument; the default pool is ``min(32, cpus + 4)`` threads).

Each destination is read back with ``wandb.Api()`` (current SDK) and compared with the source
BEFORE any time is reported; a difference prints and fails the bench. runferry is held to
everything; the peer only to what it claims to copy (wandb-protocol.md §1.4/§1.8: it drops
``_wandb`` from config, system metrics, run state, job type, run files' original bytes and
created times, prefixes notes, adds the ``imported`` alias); the output lists both field sets.
Two peer defects found here are undone or counted, never hidden: it writes every history row
twice (undone before the rows are compared, counted per sample), and its artifact versions and
lineage differ from the source in some runs of every sample (versions missing, one version
with another's bytes, ``use_artifact`` links missing: counted and printed per sample, fatal
with ``--strict-peer``). Everything else of the peer must be equal, as for runferry.

The W&B-compatible server enforces no file_stream limit unless ``--filestream-rps-per-run`` is
given (W&B documents 2 requests/s per run); runferry's writer paces itself at 2/s per run by
default either way.

    python -m bench wandb_wandb [--projects 3 --runs 4 --steps 1000 --keys 10 --repeats 3]
"""

from __future__ import annotations

import argparse
import copy
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
from bench.wandb027 import WANDB_VERSION, ensure_wandb027

PEER_SCRIPT = """
import logging, os, sys
# the importer swallows every exception of its worker pool, logging it at DEBUG only: keep those
# lines (and only those) in peer-errors.log, so the bench can say what the peer lost and why
handler = logging.FileHandler("peer-errors.log")
handler.addFilter(lambda record: record.getMessage().startswith("Exception:"))
logging.getLogger("import_logger").addHandler(handler)
logging.getLogger("import_logger").setLevel(logging.DEBUG)
# and what the SDK's sender logs at WARNING or above (artifact saves fail there, not raised)
sdk_log = logging.FileHandler("peer-sdk-warnings.log")
sdk_log.setLevel(logging.WARNING)
logging.getLogger("wandb").addHandler(sdk_log)
from wandb.apis.importers import Namespace
from wandb.apis.importers.wandb import WandbImporter
src_url, dst_url, src_entity, dst_entity, projects, max_workers = sys.argv[1:7]
importer = WandbImporter(src_base_url=src_url, src_api_key=os.environ["BENCH_SRC_KEY"],
                         dst_base_url=dst_url, dst_api_key=os.environ["BENCH_DST_KEY"])
namespaces = [Namespace(src_entity, p) for p in projects.split(",")]
remapping = {n: Namespace(dst_entity, n.project) for n in namespaces}
# reports last: import_all's order (runs, reports, artifacts) breaks every artifact (see REPORTS_LAST)
if int(max_workers) == 0:
    importer.import_all(namespaces=namespaces, remapping=remapping, reports=False)
else:
    importer.import_runs(namespaces=namespaces, remapping=remapping, max_workers=int(max_workers))
    importer.import_artifact_sequences(namespaces=namespaces, remapping=remapping, max_workers=int(max_workers))
importer.import_reports(namespaces=namespaces, remapping=remapping)
"""
REPORTS_LAST = (
    "the peer runs import_all(reports=False) then import_reports(): import_all's own order (runs, reports, "
    "artifacts) loses every artifact, because import_reports calls wandb.login(source key, source host), which "
    "writes the source as base_url into the global settings file; afterwards the SendManager that uploads "
    "artifacts (and every wandb.Api(key) check) talks to the SOURCE host with the destination key: refused "
    "here (403/401, swallowed by its worker pool), and on a host accepting that key it would write into the source"
)

# what each tool is held to (field of bench.wandb_data.run_view -> how it is compared)
RUNFERRY_FIELDS: dict[str, Any] = {
    "rows": None, "system": None, "summary": None, "tags": None, "notes": None, "group": None, "job_type": None,
    "state": None, "name": None, "files": None, "used": None,
    "config": lambda v: _without_provenance(v["config"]),
    "logged": None,
}
PEER_FIELDS: dict[str, Any] = {
    "rows": None,
    "summary": lambda v: {k: x for k, x in v["summary"].items() if k not in ("_wandb", "_runtime", "_timestamp")},
    "config": lambda v: {k: x for k, x in v["config"].items() if k not in ("_wandb", "wandb_version")},
    "tags": None, "group": None, "name": None, "used": None,
    "logged": lambda v: [(n, t, d, tuple(a for a in al if a != "imported")) for n, t, d, al in v["logged"]],
}
# the peer's artifact copies differ from the source nondeterministically here (versions missing,
# a version with another version's bytes, lineage missing; its SDK log shows "run not found"
# for uploads and its pool swallows errors): counted per sample unless --strict-peer
PEER_ARTIFACT_FIELDS = ("logged", "used")
PEER_LOSES = ("config._wandb (metric definitions)", "system metrics", "state", "job_type",
              "notes (prefixed 'Imported from')", "run files (regenerated)", "created time")


def _without_provenance(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    wandb_ = config.get("_wandb", {})
    if isinstance(wandb_, dict):
        value = wandb_.get("value", wandb_)
        for key in ("runferry_source", "runferry_times"):
            value.pop(key, None)
    return config


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench wandb_wandb", description=__doc__.splitlines()[0])
    wd.add_dataset_args(p, "wandb_wandb")
    p.add_argument("--peer-max-workers", type=int, default=16, help="also run the peer with max_workers=N (0: skip)")
    p.add_argument("--filestream-rps-per-run", type=float, default=None,
                   help="server-side per-run file_stream limit (default: none, the server's default)")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--strict-peer", action="store_true",
                   help="fail on the peer's artifact and lineage differences too (default: counted and printed)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    return wd.in_workdir(_args(argv), "bench-wandb-wandb-", _drive)


def _drive(a: argparse.Namespace, workdir: Path) -> int:
    peer_python = None if a.skip_peer else ensure_wandb027(importers=True)
    projects = wd.project_names(a.projects)
    tools = ["runferry"] + ([] if peer_python is None else ["peer"])
    if peer_python is not None and a.peer_max_workers:
        tools.append(f"peer-w{a.peer_max_workers}")
    src_keys = {wd.SRC_KEY: [wd.SRC_ENTITY]}
    dst_keys = {wd.DST_KEY: [wd.DST_ENTITY]}
    with wd.WandbServerProcess(src_keys, workdir / "src-server.log", a.filestream_rps_per_run) as src:
        source, size, seed_s = wd.seed_and_read(src, workdir, a)

        def measure(tool: str, repeat: int) -> Sample:
            home = workdir / f"{tool}-{repeat}"
            home.mkdir()
            with wd.WandbServerProcess(dst_keys, home / "dst-server.log", a.filestream_rps_per_run) as dst:
                src_cpu, dst_cpu = src.cpu_s(), dst.cpu_s()
                if tool == "runferry":
                    result = _runferry(src.url, dst.url, home)
                else:
                    workers = 0 if tool == "peer" else a.peer_max_workers
                    result = _peer(peer_python, src.url, dst.url, projects, workers, home)
                src_cpu, dst_cpu = src.cpu_s() - src_cpu, dst.cpu_s() - dst_cpu
                copied = wd.namespace_view(wd.api(dst.url, wd.DST_KEY, home / "api"), wd.DST_ENTITY, projects)
            fields, defects = RUNFERRY_FIELDS, {}
            if tool != "runferry":
                fields, defects = PEER_FIELDS, _peer_defects(home, source, copied)
            diffs = wd.differences(source, copied, fields, limit=1000)
            if tool != "runferry" and not a.strict_peer:
                lost = [d for d in diffs if d.split(" ", 2)[1].rstrip(":") in PEER_ARTIFACT_FIELDS]
                diffs = [d for d in diffs if d not in lost]
                defects["artifact_differences"] = len(lost)
                for line in lost:
                    print(f"  {tool} round {repeat + 1}, counted (not fatal): {line}", flush=True)
            if diffs:
                print(f"\n{tool} (round {repeat + 1}) differs from the source:", file=sys.stderr)
                for line in diffs:
                    print("  " + line, file=sys.stderr)
                raise SystemExit(f"{tool}'s output is not equal to the source: no time reported")
            return Sample(tool, repeat, result.wall_s, result.cpu_s, result.peak_rss_mb,
                          {"src_server_cpu_s": round(src_cpu, 2), "dst_server_cpu_s": round(dst_cpu, 2), **defects})

        samples = run_alternated(tools, a.repeats, measure, log=lambda line: print(line, flush=True))
        drain = _read_only(src, workdir / "read-only")
    return _report(a, tools, samples, size, seed_s, drain)


def _read_only(src: wd.WandbServerProcess, home: Path) -> dict[str, float]:
    """runferry's W&B reader alone, once: every run's history and system lines drained (runs side
    by side as migrate reads them), nothing written; with the source server's CPU meanwhile."""
    from bench.scenarios.mlflow_wandb import READ_ONLY_SCRIPT

    home.mkdir()
    config = write_toml(home / "read.toml", {
        "source": {"type": "wandb", "base_url": src.url, "api_key_env": "BENCH_SRC_KEY", "namespaces": [f"{wd.SRC_ENTITY}/*"]},
        "destination": {"type": "local", "path": str(home / "unused")},
        "transfer": {"ledger": str(home / "ledger.jsonl")},
    })
    server_cpu = src.cpu_s()
    child = run_child([sys.executable, "-c", READ_ONLY_SCRIPT, str(config)], env=child_env({"BENCH_SRC_KEY": wd.SRC_KEY})).check()
    return {"wall_s": round(child.wall_s, 2), "cpu_s": round(child.cpu_s, 2), "src_server_cpu_s": round(src.cpu_s() - server_cpu, 2),
            "points": int(child.stdout.split()[-1])}


def _peer_defects(home: Path, source: dict[str, dict], copied: dict[str, dict]) -> dict[str, int]:
    """The peer's known defects, counted (and undone in ``copied`` so the rest can be compared):

    - ``history_written_twice``: runs whose destination history is the source's, twice over.
      ``_import_run`` calls ``send_run`` a second time "with history artifacts"; when the source
      run has no ``wandb-history`` parquet exports (this server makes none; W&B's own makes them
      for finished runs) that list is empty and the second call sends every record again,
      appended after the first copy (resume at the server's line count, wandb-protocol.md §1.2);
      ``scan_history`` then reads every ``_step`` twice;
    - ``swallowed_errors``: exceptions its worker pool swallowed (peer-errors.log).
    """
    twice = 0
    for path, view in copied.items():
        want = source.get(path, {}).get("rows")
        rows = view["rows"]
        # the server answers scan_history in step order: each row and its copy come side by side
        if want and len(rows) == 2 * len(want) and wd.dump(rows[0::2]) == wd.dump(rows[1::2]):
            view["rows"] = rows[0::2]
            twice += 1
    log = home / "peer-errors.log"
    swallowed = log.read_text().count("Exception:") if log.exists() else 0
    return {"history_written_twice": twice, "swallowed_errors": swallowed}


def _runferry(src_url: str, dst_url: str, home: Path) -> ChildResult:
    config = home / "runferry.toml"
    write_toml(config, {
        "source": {"type": "wandb", "base_url": src_url, "api_key_env": "BENCH_SRC_KEY", "namespaces": [f"{wd.SRC_ENTITY}/*"]},
        "destination": {"type": "wandb", "base_url": dst_url, "api_key_env": "BENCH_DST_KEY"},
        "transfer": {"ledger": str(home / "ledger.jsonl")},
    })
    with config.open("a") as fh:
        fh.write(f'[[remap]]\nfrom = "{wd.SRC_ENTITY}/*"\nto = "{wd.DST_ENTITY}/*"\n')
    env = child_env({"BENCH_SRC_KEY": wd.SRC_KEY, "BENCH_DST_KEY": wd.DST_KEY, "TMPDIR": str(home)})
    result = run_child(python_child("engine", "migrate", str(config), "--log-format", "plain", "--interval", "0.5"),
                       cwd=home, env=env).check()
    (home / "runferry.log").write_text(result.stderr + result.stdout)  # progress lines and report: what bounded it
    return result


def _peer(python: Path, src_url: str, dst_url: str, projects: list[str], workers: int, home: Path) -> ChildResult:
    env = wd.sdk_env(dst_url, wd.DST_KEY, home / "wandb", BENCH_SRC_KEY=wd.SRC_KEY, BENCH_DST_KEY=wd.DST_KEY)
    # no WANDB_BASE_URL / WANDB_API_KEY: 0.27.0's Api() checks any key against WANDB_BASE_URL when
    # it is set (so the source key would be refused by the destination); servers and keys are
    # given to WandbImporter(...) as its docs show
    for name in ("PYTHONPATH", "WANDB_BASE_URL", "WANDB_API_KEY"):
        env.pop(name, None)
    argv = [str(python), "-c", PEER_SCRIPT, src_url, dst_url, wd.SRC_ENTITY, wd.DST_ENTITY, ",".join(projects), str(workers)]
    return run_child(argv, cwd=home, env=env).check()


def _report(a: argparse.Namespace, tools: list[str], samples: list[Sample], size: dict[str, int], seed_s: float,
            drain: dict[str, float]) -> int:
    summary = summarize(samples)
    points = size["points"] + size["system_points"]
    megabytes = (size["history_bytes"] + size["file_bytes"]) / 1e6
    rows = []
    for tool in tools:
        s = summary[tool]
        mine = [x for x in samples if x.tool == tool]
        rows.append({
            "tool": tool, "wall_s median": round(s.median, 2), "min-max": f"{s.low:.2f}-{s.high:.2f}",
            "points/s": round(points / s.median), "MB/s": round(megabytes / s.median, 2),
            "cpu_s": round(summarize(mine, "cpu_s")[tool].median, 2),
            "src server cpu_s": round(summarize(mine, "src_server_cpu_s")[tool].median, 2),
            "dst server cpu_s": round(summarize(mine, "dst_server_cpu_s")[tool].median, 2),
            "peak_rss_mb": round(summarize(mine, "peak_rss_mb")[tool].median, 1),
        })
    print(f"\nW&B -> W&B: {size['runs']} runs in {a.projects} projects, {size['points']:,} history points "
          f"+ {size['system_points']:,} system points, {megabytes:.1f} MB (history as JSON, files, artifacts); "
          f"{a.repeats} rounds, order alternated, fresh destination server each time; "
          f"server file_stream limit: {a.filestream_rps_per_run or 'none (server default)'}\n")
    print_table(rows)
    print(f"\nrunferry's reader alone (history + system lines drained, nothing written, once): {drain['wall_s']:.2f} s wall, "
          f"{drain['cpu_s']:.2f} s CPU, source server {drain['src_server_cpu_s']:.2f} s CPU, {drain['points']:,} points")
    print(f"\nverified before timing: runferry on {', '.join(RUNFERRY_FIELDS)};")
    print(f"  the peer on {', '.join(PEER_FIELDS)} (it does not copy: {', '.join(PEER_LOSES)})")
    print(f"  {REPORTS_LAST}")
    for peer in tools[1:]:
        mine = [x for x in samples if x.tool == peer]
        print(f"  {peer} defects per sample: history written twice in "
              f"{[x.extra.get('history_written_twice') for x in mine]} runs, artifact/lineage differences "
              f"{[x.extra.get('artifact_differences', 0) for x in mine]}, swallowed errors "
              f"{[x.extra.get('swallowed_errors') for x in mine]}")
    headline: dict[str, Any] = {"points": points, "megabytes": round(megabytes, 3),
                                "runferry_wall_s": summary["runferry"].median, "read_only": drain}
    for peer in tools[1:]:
        ratio = ratio_of_medians(summary, peer, "runferry")
        headline[f"ratio_vs_{peer}"] = round(ratio, 2)
        print(f"runferry is {ratio:.1f}x faster than {peer} (ratio of median wall times)")
    versions = {"runferry": package_version("runferry"), "wandb (seed, oracle)": package_version("wandb"),
                "wandb (peer)": WANDB_VERSION if len(tools) > 1 else None, "python": sys.version.split()[0]}
    path = write_result("wandb_wandb", inputs={**vars(a), "seed_s": round(seed_s, 1), **size}, versions=versions,
                        samples=samples, headline=headline, variant=a.variant or ("runferry-only" if a.skip_peer else None),
                        notes=[f"peer does not copy: {', '.join(PEER_LOSES)}", REPORTS_LAST,
                               "shared 2-core machine under other load: absolute times swing, ratios less"])
    print(f"result: {path}")
    return 0

