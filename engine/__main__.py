"""Command line: ``python -m engine {migrate,plan,status,verify,export} CONFIG`` (also the ``runferry`` script).

Exit codes: 0 every selected run made it; 1 some runs failed (listed in the report); 2 bad
configuration or credentials (one line on stderr, nothing written); 130 interrupted (resumable).
"""

from __future__ import annotations

import os

# jemalloc returns freed Arrow buffers to the OS sooner than pyarrow's default pool: measured
# 108 MB vs 174 MB peak RSS on the quickstart. Must be set before pyarrow is first imported.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

import argparse  # noqa: E402
import atexit
import dataclasses
import sys
from pathlib import Path
from typing import NoReturn


def _pyarrow_without_pandas() -> None:
    """Tell pyarrow, before its first conversion, that this process has no pandas.

    ``pa.array``, ``pa.scalar`` and friends import pandas on first use when it is installed
    (it is, next to mlflow), only to recognise pandas inputs: ~0.2 s of a small migration's
    start-up. The command line never hands pyarrow a pandas object, so pyarrow's probe is made
    to fail once here, by ``run()``; pandas itself stays importable. Importing this module
    changes nothing: library users (``engine.importers``, tests calling ``main()``) keep
    pyarrow's normal behaviour, as their process may well use pandas with pyarrow.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    class NoPandas:
        @staticmethod
        def find_spec(name: str, *args: object) -> None:
            if name == "pandas":
                raise ImportError("pandas is not used by the runferry command line")

    sys.meta_path.insert(0, NoPandas)
    try:
        pa.scalar(0)  # pyarrow probes for pandas once per process
    finally:
        sys.meta_path.remove(NoPandas)


import anyio

from engine.config import Config, load_config
from engine.progress import Progress


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runferry", description="Migrate ML experiment-tracking data.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("migrate", "move every selected run (resumable, incremental)"),
        ("plan", "dry run: what would move (runs, history points, bytes); writes nothing"),
        ("status", "what the ledger says: done, failed (with reasons), in progress"),
        ("verify", "read the destination back and compare every migrated run with its source; writes nothing"),
        ("export", "copy the configured source into a local Parquet/CSV export (ignores [destination])"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="path of the TOML configuration")
        p.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
        if name == "export":
            p.add_argument("--to", required=True, metavar="DIR", help="export directory (ledger kept inside it)")
        if name in ("migrate", "export"):
            p.add_argument(
                "--log-format",
                choices=("auto", "rich", "plain", "json"),
                default="auto",
                help="progress display: live bars on a terminal (auto), plain lines, or JSON lines",
            )
            p.add_argument("--interval", type=float, default=5.0, help="seconds between plain/json progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except (Exception, KeyboardInterrupt) as exc:  # one line (exit 2 for config/credentials), no traceback
        from engine.refusal import refusal

        code, line = refusal(exc)
        if args.debug:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        print(f"runferry: {line}", file=sys.stderr)
        return code


def _command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.command == "plan":
        from engine.plan import plan

        anyio.run(plan, config, sys.stdout)
        return 0
    if args.command == "status":
        from engine.plan import status

        status(config, sys.stdout)
        return 0
    if args.command == "verify":
        from engine.verify import verify

        return anyio.run(verify, config, sys.stdout).exit_code
    if args.command == "export":
        config = export_config(config, args.to)
    return _migrate(config, args)


def export_config(config: Config, directory: str) -> Config:
    """The same migration with a local export directory as destination."""
    from adapters.local import LocalDestination

    return dataclasses.replace(
        config,
        destination_type="local",
        destination=LocalDestination.Config(path=directory),
        transfer=dataclasses.replace(config.transfer, ledger=str(Path(directory) / "runferry-ledger.jsonl")),
    )


def _migrate(config: Config, args: argparse.Namespace) -> int:
    if config.transfer.executor == "ray":
        from scaleout.executor import migrate_on_ray as migrate
    else:
        from engine.pipeline import migrate

    mode = args.log_format
    if mode == "auto":
        mode = "rich" if sys.stderr.isatty() else "plain"
    progress = Progress(mode=mode, stream=sys.stderr, interval=args.interval)
    with progress:
        report = anyio.run(lambda: migrate(config, progress=progress, handle_signals=True))
    progress.final_report(sys.stdout, interrupted=report.interrupted)
    return report.exit_code


def run() -> NoReturn:
    """The ``runferry`` command: ``main()`` without pyarrow's pandas probe, then a quick exit."""
    _pyarrow_without_pandas()
    _exit_now(main())


def _exit_now(code: int) -> NoReturn:
    """Leave without tearing the interpreter down.

    Why: freeing every module and Arrow's memory pool one object at a time took ~0.1 s of a
    small migration, and the OS reclaims all of it at once anyway. By the time ``main()``
    returns, everything runferry wrote (ledger, export files, report) is closed; exit handlers
    (``atexit``, temporary-file finalizers) still run, and standard streams are flushed.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
