"""S3 SlowDown: runferry's adaptive limiter vs boto3 standard/adaptive on a prefix limited to R req/s; bytes vs rclone.

Part 1 (request rate): the throttling front limits one prefix to ``--rate`` writes/s and answers
503 SlowDown above it. Each client writes small objects into its own prefix for ``--seconds``:

* runferry: ``--workers`` tasks through one ``S3Store`` (its shared adaptive limiter decides);
* boto3 ``standard`` and ``adaptive`` retry modes, ``--boto-threads`` threads sharing one client
  (fixed concurrency, botocore's default attempts).

Figures come from the front's own per-second counts: goodput = accepted / (R x seconds),
including the ramp-up; the throttled share is over the requests after the first 10 s; failed
transfers are objects the client gave up on. The back end is the front's ``sink`` (no capacity
limit of its own) unless ``--upstream moto``.

Grid (``--grid``): part 1 over every front shape of ``--grid-rates`` (req/s per prefix) x
``--grid-bursts`` (bucket depth in seconds of the rate) x ``--grid-prefixes`` (1: one hot
prefix; 4: four prefixes written at once, each limited on its own, ``--workers`` /
``--boto-threads`` per prefix, one client), every client with the same attempt limit
(``--max-attempts``: runferry's ``S3Config.max_attempts``, botocore's ``total_max_attempts``).
Per cell: goodput (mean over the prefixes), throttled share of all requests and of those after
10 s, failed transfers; written to ``grid.json`` and a table.

Part 2 (bytes): ``--files`` files of ``--file-mib`` MiB uploaded to and downloaded from moto's S3
server (direct, no throttling) by runferry's ``S3Store`` with its defaults (each file given as
an opener, as an export uploads it, so one streamed PUT per file up to ``single_put_threshold``,
200 MiB, like rclone's upload cutoff; one streamed GET per file up to ``ranged_get_threshold``, 256 MiB, like rclone's multi-thread cutoff; and, as an extra
row, 8 parallel ranged GETs per file), its pieces written to files as the local export writes
them (``adapters.local._io.write_piece``: chunks up to 1 MiB from the loop), by ``rclone copy`` with matching parallelism and by boto3's
s3transfer, taking turns for ``--repeat`` rounds in alternated order, every download checked
byte for byte before its times count (``bench.results``). Reported as median MiB/s and
runferry / rclone ratios, with each client's CPU seconds and moto's, and written as
``s3_slowdown-upload.json`` / ``-download.json`` in bench/results for ``python -m bench report``. Moto copies the whole object for every ranged GET, which penalises ranged readers
(s3transfer, the extra row). All clients share the machine with moto: on a loaded machine the
figures move a lot (the load average is recorded with them).

Part 3 (optional, ``--large-mib N``): one N MiB object generated on the fly, uploaded, copied
server-side and downloaded through the front with SlowDown on, every byte checked by SHA-256.
(Moto holds several copies of the object in memory while completing it: N=2048 needs ~8 GB.)

Outputs: a table on stdout, ``results.json`` and ``s3_slowdown.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.to_thread

from bench.results import Sample, alternating_order, package_version, summarize, write_cells, write_result
from core.protocols import AdapterContext
from adapters.local._io import write_piece
from adapters.s3 import MIB, S3Config, S3Store, S3Url
from core.errors import TransferError
from ratelimit import ControlConfig, LimiterRegistry
from tests.servers.s3front import S3Stack, start_s3_stack

BUCKET = "rf-bench"
DEFAULT_CLIENTS = "runferry,standard,adaptive"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench s3_slowdown", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="writes/s the front allows the prefix")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each client's run")
    parser.add_argument("--burst-seconds", type=float, default=0.2, help="front token bucket depth")
    parser.add_argument("--workers", type=int, default=64, help="runferry tasks writing objects")
    parser.add_argument("--boto-threads", type=int, default=16, help="boto3 fixed concurrency")
    parser.add_argument("--object-bytes", type=int, default=1024)
    parser.add_argument("--upstream", choices=("sink", "moto"), default="sink")
    parser.add_argument("--clients", default=DEFAULT_CLIENTS)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=128)
    parser.add_argument("--skip-bytes", action="store_true", help="skip the rclone comparison")
    parser.add_argument("--skip-rate", action="store_true", help="skip the request-rate part (part 1)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the bytes part (medians reported)")
    parser.add_argument("--large-mib", type=int, default=0, help="also round-trip one object this big")
    parser.add_argument("--max-attempts", type=int, default=10, help="attempt limit of every client")
    parser.add_argument("--control", default="{}", help="runferry ControlConfig overrides as JSON (tuning)")
    parser.add_argument("--grid", action="store_true", help="run the rates x bursts x prefixes grid (part 1 only)")
    parser.add_argument("--grid-rates", default="20,100,300,1000")
    parser.add_argument("--grid-bursts", default="0.1,0.5,2")
    parser.add_argument("--grid-prefixes", default="1,4")
    parser.add_argument("--out", default="bench/out/s3_slowdown")
    parser.add_argument("--cells-name", default="",
                        help="suffix of the grid's results file, so a run of some cells keeps another run's file")
    return parser.parse_args(argv)


# -- part 1: request rate ----------------------------------------------------------------


def server_figures(stack: S3Stack, prefixes: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """The front's counts for ``prefixes`` (each limited to ``rate`` on its own): goodput is the
    mean over the prefixes; throttled shares and the timeline are summed over them."""
    stats = stack.stats()
    whole = range(int(seconds))
    summed: dict[int, list[int]] = {s: [0, 0] for s in whole}
    goodputs = []
    for prefix in prefixes:
        cell = stats.get(f"{BUCKET}/{prefix}", {"timeline": {}})
        timeline = {int(k): v for k, v in cell["timeline"].items()}
        goodputs.append(sum(timeline.get(s, [0, 0])[0] for s in whole) / (rate * int(seconds)))
        for second in whole:
            accepted, throttled = timeline.get(second, [0, 0])
            summed[second][0] += accepted
            summed[second][1] += throttled
    accepted_total = sum(v[0] for v in summed.values())
    throttled_total = sum(v[1] for v in summed.values())
    late_accepted = sum(v[0] for s, v in summed.items() if s >= 10)
    late_throttled = sum(v[1] for s, v in summed.items() if s >= 10)
    return {
        "goodput": sum(goodputs) / len(goodputs),
        "goodput_per_prefix": goodputs,
        "throttled_share": throttled_total / max(1, accepted_total + throttled_total),
        "throttled_after_10s": late_throttled / max(1, late_accepted + late_throttled),
        "throttled_total": throttled_total,
        "accepted_total": accepted_total,
        "timeline": [[s, *summed[s]] for s in whole],
    }


async def _one_piece(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def runferry_rate(stack: S3Stack, args: argparse.Namespace, prefixes: list[str]) -> dict[str, Any]:
    """``--workers`` tasks per prefix through one ``S3Store`` (one limiter per prefix)."""
    registry = LimiterRegistry(default=ControlConfig(**json.loads(args.control)))
    samples: list[dict[str, float]] = []
    done = failed = 0
    body = os.urandom(args.object_bytes)
    config = S3Config(endpoint_url=stack.front_url, max_attempts=args.max_attempts)
    async with S3Store(config, AdapterContext(limiters=registry)) as s3:
        limiter = s3.limiter_for(S3Url(BUCKET, f"{prefixes[0]}/x"))
        start = time.monotonic()
        deadline = start + args.seconds

        async def worker(number: int) -> None:
            nonlocal done, failed
            sequence = 0
            prefix = prefixes[number % len(prefixes)]
            while time.monotonic() < deadline:
                sequence += 1
                try:
                    await s3.put_stream(f"s3://{BUCKET}/{prefix}/w{number}-{sequence}", _one_piece(body))
                    done += 1
                except TransferError:
                    failed += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                stats = limiter.statistics()
                samples.append({
                    "t": time.monotonic() - start,
                    "concurrency": stats.concurrency_limit,
                    "in_flight": stats.in_flight,
                    "rate_limit": stats.rate_limit or 0.0,
                    "accepted_rate": stats.accepted_rate,
                })
                await anyio.sleep(0.25)

        stack.reset_stats()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            for number in range(args.workers * len(prefixes)):
                tg.start_soon(worker, number)
        final = limiter.statistics()
    return {"done": done, "failed": failed, "samples": samples, "retries": final.retries,
            "client_throttles": final.throttles}


def boto_rate(stack: S3Stack, args: argparse.Namespace, prefixes: list[str], mode: str) -> dict[str, Any]:
    """``--boto-threads`` threads per prefix sharing one client (its retry mode decides)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    threads_total = args.boto_threads * len(prefixes)
    client = boto3.client(
        "s3", endpoint_url=stack.front_url,
        config=Config(retries={"mode": mode, "total_max_attempts": args.max_attempts}, max_pool_connections=threads_total),
    )
    body = os.urandom(args.object_bytes)
    counts = {"done": 0, "failed": 0}
    lock = threading.Lock()
    stack.reset_stats()
    deadline = time.monotonic() + args.seconds

    def worker(number: int) -> None:
        sequence = 0
        prefix = prefixes[number % len(prefixes)]
        while time.monotonic() < deadline:
            sequence += 1
            try:
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/w{number}-{sequence}", Body=body)
                outcome = "done"
            except (ClientError, BotoCoreError):
                outcome = "failed"
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_total)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(counts)


def run_clients(stack: S3Stack, args: argparse.Namespace, rate: float, prefix_count: int) -> list[dict[str, Any]]:
    """Each client in turn against the front as configured, on fresh prefixes."""
    results = []
    for client in args.clients.split(","):
        stamp = f"{client}-{time.monotonic_ns()}"
        prefixes = [f"{stamp}-p{i}" for i in range(prefix_count)]
        print(f"  running {client} for {args.seconds:.0f} s ...", flush=True)
        if client == "runferry":
            run = asyncio.run(runferry_rate(stack, args, prefixes))
        else:
            run = boto_rate(stack, args, prefixes, client)
        run.update(server_figures(stack, prefixes, rate, args.seconds))
        run["load_average"] = os.getloadavg()[0]
        run["client"] = client if client == "runferry" else f"boto3 {client}"
        results.append(run)
    return results


def rate_part(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    with start_s3_stack(sink=args.upstream == "sink") as stack:
        stack.configure(write_rate=args.rate, burst_seconds=args.burst_seconds)
        if args.upstream == "moto":
            asyncio.run(_create_bucket(stack.moto_url))
        results = run_clients(stack, args, args.rate, 1)
    plot_rate(results, args, out / "s3_slowdown.png")
    return results


def grid_part(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Every front shape of the grid, every client; one row per (rate, burst, prefixes, client)."""
    rows: list[dict[str, Any]] = []
    rates = [float(r) for r in args.grid_rates.split(",")]
    bursts = [float(b) for b in args.grid_bursts.split(",")]
    prefix_counts = [int(p) for p in args.grid_prefixes.split(",")]
    with start_s3_stack(sink=args.upstream == "sink") as stack:
        if args.upstream == "moto":
            asyncio.run(_create_bucket(stack.moto_url))
        for rate in rates:
            for burst in bursts:
                for count in prefix_counts:
                    print(f"cell: R = {rate:g}/s per prefix, burst {burst:g} s, {count} prefix(es)", flush=True)
                    stack.configure(write_rate=rate, burst_seconds=burst)
                    for run in run_clients(stack, args, rate, count):
                        row = {k: v for k, v in run.items() if k not in ("samples", "timeline")}
                        rows.append({"rate": rate, "burst_s": burst, "prefixes": count, **row})
                        (out / "grid.json").write_text(json.dumps(rows, indent=1, default=str))
    return rows


def write_grid_result(args: argparse.Namespace, rows: list[dict[str, Any]], *, command: str | None = None,
                      commit: str | None = None) -> Path:
    """The grid's cells in bench/results (``write_cells``), rendered by ``python -m bench report``
    as the README's grid table: ``s3_slowdown-grid.json`` for every client, or
    ``s3_slowdown-grid-<clients>.json`` for a run of fewer (its cells are added to the table),
    ``-<cells name>`` after either with ``--cells-name``.
    ``command`` / ``commit``: those of the run that measured ``rows`` (default: this one)."""
    clients = args.clients.split(",")
    variant = "grid" if clients == DEFAULT_CLIENTS.split(",") else "grid-" + "-".join(clients)
    if args.cells_name:
        variant = f"{variant}-{args.cells_name}"
    inputs = {"seconds": args.seconds, "max_attempts": args.max_attempts, "workers": args.workers,
              "boto_threads": args.boto_threads, "object_bytes": args.object_bytes, "upstream": args.upstream,
              "clients": clients, "rates": args.grid_rates, "bursts": args.grid_bursts, "prefixes": args.grid_prefixes}
    versions = {name: package_version(name) for name in ("runferry", "aiobotocore", "botocore", "boto3", "moto")}
    return write_cells("s3_slowdown", inputs=inputs, versions=versions, cells=rows, variant=variant,
                       command=command, commit=commit)


def print_grid(rows: list[dict[str, Any]]) -> None:
    print(f"{'R/s':>6}{'burst':>6}{'pfx':>4} {'client':<17}{'goodput/R':>10}{'thr all':>9}{'thr>10s':>9}"
          f"{'failed':>7}{'load':>6}")
    for row in rows:
        print(f"{row['rate']:>6g}{row['burst_s']:>6g}{row['prefixes']:>4} {row['client']:<17}{row['goodput']:>10.3f}"
              f"{row['throttled_share']:>9.4f}{row['throttled_after_10s']:>9.4f}{row['failed']:>7}{row['load_average']:>6.1f}")


async def _create_bucket(url: str) -> None:
    async with S3Store(S3Config(endpoint_url=url)) as s3:
        try:
            await s3.client.create_bucket(Bucket=BUCKET)
        except Exception as exc:
            if "BucketAlready" not in str(exc):
                raise


def plot_rate(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    ours = next((r for r in results if r["client"] == "runferry"), None)
    if ours is not None:
        t = [s["t"] for s in ours["samples"]]
        axes[0].plot(t, [s["rate_limit"] for s in ours["samples"]], label="pacing rate (req/s)")
        axes[0].plot(t, [s["accepted_rate"] for s in ours["samples"]], label="accepted rate, measured (req/s)")
        axes[0].axhline(args.rate, color="grey", linestyle="--", label=f"R = {args.rate:g}")
        twin = axes[0].twinx()
        twin.plot(t, [s["concurrency"] for s in ours["samples"]], color="tab:red", alpha=0.6, label="concurrency limit")
        twin.set_ylabel("concurrency limit")
        twin.legend(loc="lower right")
        axes[0].set_title("runferry limiter for the prefix")
        axes[0].set_ylabel("requests/s")
        axes[0].legend(loc="upper right")
    for run in results:
        seconds = [row[0] for row in run["timeline"]]
        axes[1].plot(seconds, [row[1] for row in run["timeline"]], label=run["client"])
        axes[2].plot(seconds, [row[2] for row in run["timeline"]], label=run["client"])
    axes[1].axhline(args.rate, color="grey", linestyle="--")
    axes[1].set_title("accepted requests per second (front's count)")
    axes[2].set_title("throttled (503 SlowDown) requests per second (front's count)")
    axes[2].set_xlabel("seconds")
    axes[2].set_yscale("symlog")
    for axis in axes[1:]:
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- part 2: bytes vs rclone ---------------------------------------------------------------


def make_files(directory: Path, count: int, mib: int) -> None:
    rng = random.Random(7)
    for index in range(count):
        with open(directory / f"file{index}.bin", "wb") as handle:
            handle.writelines(rng.randbytes(MIB) for _ in range(mib))


async def _file_pieces(path: Path) -> AsyncGenerator[bytes, None]:
    async with await anyio.open_file(path, "rb") as handle:
        while piece := await handle.read(8 * MIB):
            yield piece


class Phase:
    """Wall seconds, the client's CPU seconds (this process, or its finished children for
    rclone) and moto's CPU seconds over one upload or download phase."""

    def __init__(self, moto_pid: int, children: bool = False) -> None:
        self.moto_pid, self.children = moto_pid, children
        self.wall = self.cpu = self.moto_cpu = 0.0

    def _client_cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN if self.children else resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _moto_cpu(self) -> float:
        with open(f"/proc/{self.moto_pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Self:
        self._start = (time.monotonic(), self._client_cpu(), self._moto_cpu())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu, moto = self._start
        self.wall = time.monotonic() - wall
        self.cpu = self._client_cpu() - cpu
        self.moto_cpu = self._moto_cpu() - moto


async def runferry_bytes(url: str, moto_pid: int, src: Path, dst: Path, ranged: Path, prefix: str) -> tuple[Phase, Phase, Phase]:
    """Upload, download with the defaults, download again as 8 ranged GETs per file."""
    files = sorted(src.iterdir())
    async with S3Store(S3Config(endpoint_url=url, part_concurrency=8)) as s3:
        with Phase(moto_pid) as upload:
            async with anyio.create_task_group() as tg:
                for path in files:
                    # as an export uploads a file (RemoteRoot.upload): an opener, so one streamed PUT
                    # per file up to single_put_threshold (200 MiB), the file read for its MD5 first
                    tg.start_soon(lambda p=path: s3.put_stream(f"s3://{BUCKET}/{prefix}/{p.name}", lambda: _file_pieces(p), size=p.stat().st_size))

        async def fetch(path: Path, into: Path, parallelism: int | None) -> None:
            # written as the local export writes a downloaded file (adapters.local: write_piece)
            handle = await anyio.to_thread.run_sync(lambda: open(into / path.name, "wb"))
            try:
                async for piece in s3.get_stream(f"s3://{BUCKET}/{prefix}/{path.name}", parallelism=parallelism):
                    await write_piece(handle, piece)
            finally:
                await anyio.to_thread.run_sync(handle.close)

        phases = []
        for into, parallelism in ((dst, None), (ranged, 8)):
            with Phase(moto_pid) as download:
                async with anyio.create_task_group() as tg:
                    for path in files:
                        tg.start_soon(fetch, path, into, parallelism)
            phases.append(download)
    return upload, phases[0], phases[1]


def rclone_bytes(url: str, moto_pid: int, src: Path, dst: Path, prefix: str, files: int) -> tuple[Phase, Phase]:
    env = {
        **os.environ,
        "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": url, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": "bench",
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": "bench", "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }
    # rclone's AWS SDK fails on a custom CA bundle with its own transport; the endpoint is
    # plain HTTP on loopback, so it needs none.
    env.pop("AWS_CA_BUNDLE", None)
    common = ["--transfers", str(files), "--checkers", str(files), "--s3-upload-concurrency", "8",
              "--s3-chunk-size", "8M",
              "--multi-thread-streams", "8", "--no-check-dest", "-q"]
    with Phase(moto_pid, children=True) as upload:
        subprocess.run(["rclone", "copy", str(src), f"bench:{BUCKET}/{prefix}", *common], env=env, check=True)
    with Phase(moto_pid, children=True) as download:
        subprocess.run(["rclone", "copy", f"bench:{BUCKET}/{prefix}", str(dst), *common], env=env, check=True)
    return upload, download


def boto3_bytes(url: str, moto_pid: int, src: Path, dst: Path, prefix: str) -> tuple[Phase, Phase]:
    """boto3's s3transfer (threads, 8 concurrent parts per file, 8 MiB parts), files in parallel."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    client = boto3.client("s3", endpoint_url=url)
    config = TransferConfig(max_concurrency=8, multipart_chunksize=8 * MIB, multipart_threshold=8 * MIB)
    files = sorted(src.iterdir())

    def each(action: Any) -> Phase:
        with Phase(moto_pid) as phase:
            threads = [threading.Thread(target=action, args=(path,)) for path in files]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return phase

    upload = each(lambda p: client.upload_file(str(p), BUCKET, f"{prefix}/{p.name}", Config=config))
    download = each(lambda p: client.download_file(BUCKET, f"{prefix}/{p.name}", str(dst / p.name), Config=config))
    return upload, download


def same_files(a: Path, b: Path) -> bool:
    def digest(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            while piece := handle.read(8 * MIB):
                h.update(piece)
        return h.hexdigest()

    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(digest(a / n) == digest(b / n) for n in names)


BYTES_TOOLS = ("runferry", "rclone", "boto3")


def _sample(tool: str, repeat: int, phase: Phase, mib: int) -> Sample:
    return Sample(tool, repeat, phase.wall, phase.cpu,
                  extra={"mib_s": round(mib / phase.wall, 1), "moto_cpu_s": round(phase.moto_cpu, 2)})


def bytes_part(args: argparse.Namespace) -> dict[str, Any]:
    """Every client in turn, ``--repeat`` rounds in alternated order (bench.results), each
    round's files checked byte for byte before its times count; medians reported."""
    if shutil.which("rclone") is None:
        return {"skipped": "rclone is not installed (apt-get install rclone)"}
    total_mib = args.files * args.file_mib
    samples: dict[str, list[Sample]] = {"upload": [], "download": [], "ranged": []}
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp, start_s3_stack() as stack:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        make_files(src, args.files, args.file_mib)
        asyncio.run(_create_bucket(stack.moto_url))
        moto_pid = stack.processes[0].pid
        for repeat, tool in alternating_order(BYTES_TOOLS, args.repeat):
            print(f"  round {repeat + 1}/{args.repeat} {tool}: {total_mib} MiB up and down ...", flush=True)
            into = root / f"{tool}-{repeat}"
            into.mkdir()
            prefix = f"{tool}{repeat}"
            if tool == "runferry":
                ranged = root / f"ranged-{repeat}"
                ranged.mkdir()
                up, down, ranged_down = asyncio.run(runferry_bytes(stack.moto_url, moto_pid, src, into, ranged, prefix))
                if not same_files(src, ranged):
                    raise RuntimeError("runferry's ranged download differs from the source")
                samples["ranged"].append(_sample(tool, repeat, ranged_down, total_mib))
                shutil.rmtree(ranged)
            elif tool == "rclone":
                up, down = rclone_bytes(stack.moto_url, moto_pid, src, into, prefix, args.files)
            else:
                up, down = boto3_bytes(stack.moto_url, moto_pid, src, into, prefix)
            if not same_files(src, into):
                raise RuntimeError(f"{tool}'s download differs from the source")
            shutil.rmtree(into)
            _delete_prefix(stack.moto_url, prefix)  # moto keeps every object in memory
            samples["upload"].append(_sample(tool, repeat, up, total_mib))
            samples["download"].append(_sample(tool, repeat, down, total_mib))
    result: dict[str, Any] = {"mib": total_mib, "rounds": args.repeat, "load_average": os.getloadavg()}
    for what, phase_samples in samples.items():
        for tool, figures in summarize(phase_samples).items():
            name = "runferry_ranged" if what == "ranged" else tool
            phase = "download" if what == "ranged" else what
            result[f"{name}_{phase}_mib_s"] = total_mib / figures.median
            result[f"{name}_{phase}_wall_s"] = asdict(figures)
            result[f"{name}_{phase}_cpu_s"] = summarize(phase_samples, "cpu_s")[tool].median
            result[f"{name}_{phase}_moto_cpu_s"] = summarize(phase_samples, "moto_cpu_s")[tool].median
    result["samples"] = {what: [asdict(x) for x in phase_samples] for what, phase_samples in samples.items()}
    return result


def _delete_prefix(url: str, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=url)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("Contents", [])
    if listed:
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": item["Key"]} for item in listed]})


def write_bytes_results(args: argparse.Namespace, b: dict[str, Any]) -> list[Path]:
    """``s3_slowdown-upload.json`` and ``-download.json`` in bench/results (``write_result``):
    the README's rows of runferry against rclone and boto3's s3transfer."""
    versions = {"runferry": package_version("runferry"), "aiobotocore": package_version("aiobotocore"),
                "boto3": package_version("boto3"), "moto": package_version("moto"), "rclone": _rclone_version()}
    inputs = {"files": args.files, "file_mib": args.file_mib, "repeat": args.repeat}
    notes = ["moto's S3 server on loopback, no throttling; every client shares the 2-core machine with moto",
             "both upload files under 200 MiB as one streamed PutObject (rclone's --s3-upload-cutoff, runferry's "
             "single_put_threshold: the file read once for its Content-MD5, then streamed); moto spends about "
             "twice the CPU on 8 MiB multipart parts (with --s3-upload-cutoff 8M rclone's multipart uploads got "
             "400s from moto)",
             "runferry: one streamed GET per file (<= 256 MiB), its chunks hashed and written to the file as the "
             "local export writes them (write_piece: chunks <= 1 MiB from the event loop); rclone: "
             "--transfers files --s3-upload-concurrency 8 --s3-chunk-size 8M --multi-thread-streams 8",
             f"runferry as 8 ranged GETs per file: {b['runferry_ranged_download_mib_s']:.1f} MiB/s (median)"]
    paths = []
    for what in ("upload", "download"):
        samples = [Sample(**x) for x in b["samples"][what]]
        headline: dict[str, Any] = {"label": f"{what} of {b['mib']} MiB"}
        headline.update({f"{tool}_mib_s": round(b[f"{tool}_{what}_mib_s"], 1) for tool in BYTES_TOOLS})
        headline["runferry_vs_rclone"] = round(b[f"runferry_{what}_mib_s"] / b[f"rclone_{what}_mib_s"], 2)
        paths.append(write_result("s3_slowdown", inputs={**inputs, "phase": what}, versions=versions, samples=samples,
                                  headline=headline, notes=notes, variant=what))
    return paths


def _rclone_version() -> str | None:
    try:
        out = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.split()[1] if out.split() else None


# -- part 3: one large object --------------------------------------------------------------


async def _generated(size: int, digest: Any) -> AsyncIterator[bytes]:
    rng = random.Random(size)
    left = size
    while left:
        piece = rng.randbytes(min(8 * MIB, left))
        digest.update(piece)
        left -= len(piece)
        yield piece


async def large_object(stack: S3Stack, mib: int, rate: float) -> dict[str, Any]:
    size = mib * MIB + 17
    sent = hashlib.sha256()
    # moto copies the whole object for each ranged GET and UploadPartCopy (real S3 does not),
    # so the large object is read with one streamed GET and copied with one CopyObject.
    config = S3Config(endpoint_url=stack.front_url, part_size=16 * MIB, multipart_threshold=16 * MIB,
                      copy_threshold=5 * 1024 * MIB)
    async with S3Store(config) as s3:
        await s3.client.create_bucket(Bucket="rf-large")
        stack.configure(write_rate=rate, read_rate=rate * 1.5)
        start = time.monotonic()
        put = await s3.put_stream("s3://rf-large/big/obj", _generated(size, sent), size=size)
        upload = time.monotonic() - start
        start = time.monotonic()
        copied = await s3.copy("s3://rf-large/big/obj", "s3://rf-large/big/copy")
        copy = time.monotonic() - start
        start = time.monotonic()
        got = hashlib.sha256()
        async for piece in s3.get_stream("s3://rf-large/big/copy", parallelism=1):
            got.update(piece)
        download = time.monotonic() - start
        open_uploads = await s3.list_open_uploads("s3://rf-large/")
    import resource

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"bytes": size, "parts": put.parts, "copy_parts": copied.parts, "upload_s": upload, "copy_s": copy,
            "download_s": download, "identical": got.hexdigest() == sent.hexdigest(), "open_uploads": len(open_uploads),
            "client_peak_rss_mib": peak_mib}


# -- main ------------------------------------------------------------------------------------


def _cpu(b: dict[str, Any], name: str) -> str:
    return f"cpu {b[f'{name}_cpu_s']:.1f} / {b[f'{name}_moto_cpu_s']:.1f} s"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": vars(args)}
    if args.grid:
        print(f"S3 SlowDown grid: {args.seconds:g} s per client and cell, attempts {args.max_attempts}, upstream {args.upstream}")
        report["grid"] = rows = grid_part(args, out)
        print()
        print_grid(rows)
        print(f"result: {write_grid_result(args, rows)}")
        (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
        return 0
    print(f"S3 SlowDown bench: R = {args.rate:g} writes/s per prefix, {args.seconds:g} s per client, upstream {args.upstream}")
    if not args.skip_rate:
        report["rate"] = rate_part(args, out)
        print()
        print(f"{'client':<18}{'goodput/R':>10}{'throttled>10s':>15}{'failed':>8}{'objects':>9}{'throttles':>11}{'load':>7}")
        for run in report["rate"]:
            print(f"{run['client']:<18}{run['goodput']:>10.3f}{run['throttled_after_10s']:>15.4f}"
                  f"{run['failed']:>8}{run['done']:>9}{run['throttled_total']:>11}{run['load_average']:>7.1f}")
    if not args.skip_bytes:
        report["bytes"] = b = bytes_part(args)
        if "skipped" in b:
            print(f"\nbytes: {b['skipped']}")
        else:
            print(f"\nbytes vs rclone ({b['mib']} MiB, moto S3 server direct; medians of {b['rounds']} alternated rounds; "
                  "CPU seconds of client / moto):")
            for what in ("upload", "download"):
                ours, theirs = b[f"runferry_{what}_mib_s"], b[f"rclone_{what}_mib_s"]
                print(f"  {what:<9}runferry {ours:6.1f} MiB/s ({_cpu(b, f'runferry_{what}')}), "
                      f"rclone {theirs:6.1f} MiB/s ({_cpu(b, f'rclone_{what}')}), ratio {ours / theirs:.2f}")
            print(f"  runferry download as 8 ranged GETs per file (parallelism=8): "
                  f"{b['runferry_ranged_download_mib_s']:.1f} MiB/s ({_cpu(b, 'runferry_ranged_download')})")
            print(f"  boto3 s3transfer: upload {b['boto3_upload_mib_s']:.1f} MiB/s ({_cpu(b, 'boto3_upload')}), "
                  f"download {b['boto3_download_mib_s']:.1f} MiB/s ({_cpu(b, 'boto3_download')})")
            print(f"  every client's files identical to the source in every round; load average after: {b['load_average'][0]:.1f}")
            for path in write_bytes_results(args, b):
                print(f"  result: {path}")
    if args.large_mib:
        with start_s3_stack() as stack:
            print(f"\n  large object: {args.large_mib} MiB ...", flush=True)
            report["large"] = large = asyncio.run(large_object(stack, args.large_mib, args.rate))
        print(f"large object {large['bytes']} bytes, {large['parts']} parts: upload {large['upload_s']:.1f} s, "
              f"copy {large['copy_s']:.1f} s, download {large['download_s']:.1f} s, identical {large['identical']}, "
              f"open uploads {large['open_uploads']}, client peak RSS {large['client_peak_rss_mib']:.0f} MiB")
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {out / 'results.json'}" + ("" if args.skip_rate else f" and {out / 's3_slowdown.png'}"))
    return 0
