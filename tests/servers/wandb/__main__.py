"""Command line: ``python -m tests.servers.wandb --port N [--key KEY=entity1,entity2]``."""

from __future__ import annotations

import argparse
import signal
import threading

from ._server import DEFAULT_KEYS, launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.wandb", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback unless --allow-non-loopback)")
    parser.add_argument("--allow-non-loopback", action="store_true", help="allow --host to be a non-loopback address")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY=ENTITY[,ENTITY...]",
        help="API key and the entities it may use (first = default). Repeatable.",
    )
    parser.add_argument("--filestream-rps-per-run", type=float, default=None)
    parser.add_argument("--run-creation-rps-per-project", type=float, default=None,
                        help="UpsertBucket run creations per second per project before 429 + Retry-After")
    parser.add_argument("--storage-slowdown-rps", type=float, default=None)
    parser.add_argument("--export-history-on-finish", action="store_true",
                        help="export a run's history to parquet when it completes (parquetHistory), as wandb.ai does")
    parser.add_argument("--sqlite", default=None, metavar="FILE", help="keep the data in this SQLite file (loaded at start, saved at exit)")
    args = parser.parse_args(argv)
    keys = dict(DEFAULT_KEYS)
    if args.key:
        keys = {}
        for spec in args.key:
            key, _, entities = spec.partition("=")
            keys[key] = [e for e in entities.split(",") if e] or ["runferry"]
    done = threading.Event()  # handlers first: whoever reads the lines below may signal at once
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        server = launch(args.port, keys, sqlite_path=args.sqlite, host=args.host, allow_non_loopback=args.allow_non_loopback)
    except ValueError as exc:
        parser.error(str(exc))
    server.faults.filestream_rps_per_run = args.filestream_rps_per_run
    server.faults.run_creation_rps_per_project = args.run_creation_rps_per_project
    server.faults.storage_slowdown_rps = args.storage_slowdown_rps
    server.state.export_history_on_finish = args.export_history_on_finish
    print(f"fake W&B server listening on {server.base_url}", flush=True)
    for key, entities in keys.items():
        print(f"  key {key[:4]}... -> entities {', '.join(entities)}", flush=True)
    done.wait()
    server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
