"""A seeded source of realistic runs, so benchmarks and tests need no external system.

Everything is a pure function of ``(seed, run index, ...)``: the same config yields the same
runs, metadata, history points and file bytes on every machine and every call, and
``iter_history(run, start)`` yields exactly the suffix of a full iteration (resume).

History is generated vectorised with numpy straight into Arrow columns. Randomness comes in
*blocks* of steps, each block drawing from its own PCG64 stream seeded by ``(seed, run index,
block index)``; a chunk is assembled from the blocks it overlaps, so values never depend on
the chunk size or the start point. Chunk boundaries are aligned to blocks where the requested
chunk size allows, so no block is generated twice.

File bytes come in 1 MiB pieces, each from its own stream seeded by ``(seed, run, file,
piece)``: streamed, never whole in memory, identical however they are read. A console log
(``console_lines``) comes in blocks of ``CONSOLE_BLOCK_LINES`` lines, each block from its own
stream seeded by ``(seed, run, block)``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pyarrow as pa

from core.protocols import AdapterContext
from core.errors import NotFoundError
from core.model import (
    CONSOLE_LOG,
    HISTORY_SCHEMA,
    ArtifactRef,
    FileRef,
    HistoryChunk,
    Namespace,
    RunRecord,
    RunRef,
    RunState,
)

# Stream tags keep the seeds of different kinds of randomness apart.
_TAG_META, _TAG_HISTORY, _TAG_FILE, _TAG_ARTIFACT, _TAG_CONSOLE = 1, 2, 3, 4, 5
BLOCK_POINTS = 131_072
"""Target points per random block (a block holds whole steps)."""
FILE_PIECE = 1 << 20
"""Bytes per generated file piece (and per random stream)."""
CONSOLE_BLOCK_LINES = 4096
"""Console-log lines per generated piece (and per random stream)."""
CONSOLE_PATH = "output.log"

_KEY_NAMES = (
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "learning_rate",
    "grad_norm",
    "throughput",
    "gpu/memory_used",
    "epoch_progress",
    "loss/aux",
)
_SYSTEM_NAMES = (  # MLflow's system-metrics monitor names (mlflow.system_metrics)
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "gpu_0_utilization_percentage",
    "gpu_0_memory_usage_percentage",
    "disk_usage_percentage",
    "network_receive_megabytes",
    "network_transmit_megabytes",
)
_SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0])
_STATES = (RunState.FINISHED, RunState.FAILED, RunState.KILLED, RunState.RUNNING)
_STATE_WEIGHTS = (0.85, 0.07, 0.05, 0.03)
_LABELS = ("baseline", "sweep", "ablation", "prod", "debug", "ünïcode-tag")


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """``[source] type = "synthetic"``: generated runs (deterministic for a given ``seed``).

    - ``seed``: everything derives from it (default 0).
    - ``runs``: number of runs (default 50); ``projects``: spread over this many projects
      named ``project-<i>`` in entity ``entity`` (default 2, ``"synthetic"``).
    - ``steps`` / ``keys``: history steps per run and metric keys per step (default 2000 x 10
      = 20,000 points per run). Steps are ``0, stride, 2*stride...`` (``step_stride``, default 1).
    - ``params``: config entries per run (default 20), including nested values and, with
      ``special_config``, NaN / inf / -0.0 values (default true).
    - ``json_keys``: how many of the ``keys`` (the last ones, named ``media/sample_<i>``) log
      JSON values like W&B media references instead of numbers: ``value`` null, ``value_json``
      the JSON text (default 0).
    - ``system_keys``: how many of the numeric ``keys`` (the last ones before the JSON keys)
      are system metrics named as MLflow's monitor names them, ``system/<name>`` (e.g.
      ``system/cpu_utilization_percentage``) (default 0).
    - ``console_lines``: lines of console output per run, listed as the run's console log
      ``output.log`` (a file with role ``console``; UTF-8 text with some non-ASCII, tab, empty
      and carriage-return progress lines). Default 0: no console log.
    - ``special_fraction``: fraction of history values replaced by NaN, +inf, -inf or -0.0
      (default 0.001).
    - ``file_sizes``: byte sizes of each run's files (default two: 4 KiB and 64 KiB);
      ``artifact_sizes``: byte sizes of the members of one model artifact per run (default one
      of 256 KiB; empty = no artifact).
    - ``long_runs`` / ``long_steps``: the first ``long_runs`` runs have ``long_steps`` steps
      instead of ``steps`` (a mix of a few long runs among many short ones; default 0: none).
    - ``start_time``: epoch seconds of the first run's start (default 1.7e9).
    - ``chunk_points``: history points per chunk (0 = the engine's ``chunk_points``).
    """

    seed: int = 0
    runs: int = 50
    projects: int = 2
    entity: str = "synthetic"
    steps: int = 2000
    keys: int = 10
    step_stride: int = 1
    params: int = 20
    special_config: bool = True
    json_keys: int = 0
    system_keys: int = 0
    console_lines: int = 0
    special_fraction: float = 0.001
    file_sizes: list[int] = field(default_factory=lambda: [4096, 65536])
    artifact_sizes: list[int] = field(default_factory=lambda: [262144])
    start_time: float = 1.7e9
    chunk_points: int = 0
    long_runs: int = 0
    long_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("runs", "projects", "keys", "step_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("steps", "params", "chunk_points", "seed", "system_keys", "console_lines", "long_runs", "long_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.json_keys <= self.keys:
            raise ValueError("json_keys must be between 0 and keys")
        if self.json_keys + self.system_keys > self.keys:
            raise ValueError("json_keys + system_keys must not exceed keys")
        if not 0.0 <= self.special_fraction <= 1.0:
            raise ValueError("special_fraction must be between 0 and 1")
        if any(size < 0 for size in [*self.file_sizes, *self.artifact_sizes]):
            raise ValueError("file and artifact sizes must not be negative")

    def steps_of(self, index: int) -> int:
        """Steps of run ``index`` (the first ``long_runs`` runs are long)."""
        return self.long_steps if index < self.long_runs else self.steps

    def points_of(self, index: int) -> int:
        return self.steps_of(index) * self.keys

    @property
    def bytes_per_run(self) -> int:
        return sum(self.file_sizes) + sum(self.artifact_sizes)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(list(entropy)))


def run_id(index: int) -> str:
    return f"run{index:06d}"


def _run_index(ref: RunRef, runs: int) -> int:
    index = ref.hint("index")
    if index is None:
        text = ref.id.removeprefix("run")
        index = int(text) if text.isdigit() and ref.id.startswith("run") else -1
    if not 0 <= index < runs:
        raise NotFoundError(f"synthetic source has no run {ref.id!r}", adapter="synthetic", run=ref.id)
    return int(index)


@dataclass(frozen=True, slots=True)
class _RunShape:
    """Per-run constants of the history curves (drawn from the run's metadata stream)."""

    start_time: float
    t0: float
    interval: float
    amplitude: np.ndarray  # float32, like rate and sigma
    rate: np.ndarray
    base: np.ndarray  # float64
    sigma: np.ndarray


class _HistoryGenerator:
    """Columns of one run's history for any point range, block by block."""

    def __init__(self, cfg: SyntheticConfig, index: int, keys_column: pa.Array) -> None:
        self.cfg = cfg
        self.index = index
        self.nkeys = cfg.keys
        self.total = cfg.points_of(index)
        self.steps = cfg.steps_of(index)
        self.block_steps = max(1, BLOCK_POINTS // cfg.keys)
        self.block_points = self.block_steps * cfg.keys
        self.shape = _run_shape(cfg, index)
        self._keys_column = keys_column
        self._cached: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, timestamps, values) for every point of ``block``."""
        if self._cached is not None and self._cached[0] == block:
            return self._cached[1]
        cfg, s, k = self.cfg, self.shape, self.nkeys
        first = block * self.block_steps
        last = min(first + self.block_steps, self.steps)
        n_steps = last - first
        n = n_steps * k
        rng = _rng(cfg.seed, self.index, _TAG_HISTORY, block)
        jitter = rng.random(n_steps)
        noise = rng.standard_normal(n, dtype=np.float32).reshape(n_steps, k)
        j = np.arange(first, last, dtype=np.int64)
        # strictly increasing: consecutive steps differ by at least interval / 2
        stamps = s.t0 + (j + 0.5 * jitter) * s.interval
        decay = np.exp(np.multiply.outer(-j.astype(np.float32), s.rate))  # float32: 2x faster exp
        decay *= s.amplitude
        noise *= s.sigma
        decay += noise
        values = (decay + s.base).reshape(n)  # float64 from here on
        if cfg.special_fraction > 0.0:
            count = int(rng.binomial(n, cfg.special_fraction))
            if count:
                at = rng.integers(0, n, count)
                values[at] = _SPECIALS[rng.integers(0, len(_SPECIALS), count)]
        result = (np.repeat(j * cfg.step_stride, k), np.repeat(stamps, k), values)
        self._cached = (block, result)
        return result

    def batch(self, start: int, stop: int) -> pa.RecordBatch:
        """Points ``[start, stop)`` as a ``HISTORY_SCHEMA`` record batch."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        position = start
        while position < stop:
            block = position // self.block_points
            block_start = block * self.block_points
            lo = position - block_start
            hi = min(stop, block_start + self.block_points) - block_start
            steps, stamps, values = self._block(block)
            parts.append((steps[lo:hi], stamps[lo:hi], values[lo:hi]))
            position = block_start + hi
        if len(parts) == 1:
            steps, stamps, values = parts[0]
        else:
            steps, stamps, values = (np.concatenate([p[i] for p in parts]) for i in range(3))
        n = stop - start
        keys = self._keys_column.slice(start % self.nkeys, n)
        if self.cfg.json_keys:
            value_column, json_column = self._json_columns(start, steps, values)
        else:
            value_column, json_column = _arrow(values, pa.float64()), pa.nulls(n, pa.string())
        return pa.RecordBatch.from_arrays(
            [keys, _arrow(steps, pa.int64()), _arrow(stamps, pa.float64()), value_column, json_column],
            schema=HISTORY_SCHEMA,
        )

    def _json_columns(self, start: int, steps: np.ndarray, values: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """Null values and JSON media references for the points of the JSON keys."""
        key_index = (np.arange(start, start + len(steps)) % self.nkeys).astype(np.int64)
        first_json = self.nkeys - self.cfg.json_keys
        is_json = key_index >= first_json
        texts = np.full(len(steps), None, dtype=object)
        texts[is_json] = [
            media_json(int(k) - first_json, int(step)) for k, step in zip(key_index[is_json], steps[is_json], strict=True)
        ]
        valid = pa.py_buffer(np.packbits(~is_json, bitorder="little"))
        values = np.ascontiguousarray(values)
        value_column = pa.Array.from_buffers(pa.float64(), len(values), [valid, pa.py_buffer(values)])
        return value_column, _strings(texts.tolist())

    def chunk_bounds(self, start: int, chunk_points: int) -> list[tuple[int, int]]:
        """Chunk ranges from ``start``: block-aligned when chunks are at least half a block."""
        if chunk_points * 2 >= self.block_points:
            size = max(1, round(chunk_points / self.block_points)) * self.block_points
        else:
            size = chunk_points
        bounds = []
        position = start
        while position < self.total:
            stop = min(self.total, (position // size + 1) * size)
            bounds.append((position, stop))
            position = stop
        return bounds


def _arrow(column: np.ndarray, kind: pa.DataType) -> pa.Array:
    """Zero-copy Arrow view of a numpy column. (``pa.array(ndarray)`` would import pandas to
    sniff the input: seconds of CPU and ~50 MB of RSS in a process that never needs it.)"""
    column = np.ascontiguousarray(column)
    return pa.Array.from_buffers(kind, len(column), [None, pa.py_buffer(column)])


def _strings(texts: list[str | None]) -> pa.Array:
    """A string column (None = null) built from buffers, for the same reason as ``_arrow``."""
    encoded = [t.encode() if t is not None else b"" for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    valid = np.packbits(np.array([t is not None for t in texts], dtype=bool), bitorder="little")
    buffers = [pa.py_buffer(valid), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def key_names(count: int, json_keys: int = 0, system_keys: int = 0) -> list[str]:
    plain = count - json_keys - system_keys
    names = [_KEY_NAMES[i] if i < len(_KEY_NAMES) else f"metric_{i:03d}" for i in range(plain)]
    names += [
        f"system/{_SYSTEM_NAMES[i]}" if i < len(_SYSTEM_NAMES) else f"system/metric_{i:03d}" for i in range(system_keys)
    ]
    return names + [f"media/sample_{i}" for i in range(json_keys)]


def console_block(seed: int, index: int, block: int, lines: int) -> bytes:
    """Lines ``[block * CONSOLE_BLOCK_LINES, ...)`` of run ``index``'s console log (at most
    ``lines`` in all), each ending in a newline."""
    first = block * CONSOLE_BLOCK_LINES
    count = min(CONSOLE_BLOCK_LINES, lines - first)
    rng = _rng(seed, index, _TAG_CONSOLE, block)
    losses = rng.uniform(0.01, 3.0, count)
    kinds = rng.integers(0, 16, count)
    out = []
    for i in range(count):
        n, kind = first + i, int(kinds[i])
        if kind == 0:
            out.append("")
        elif kind == 1:
            out.append(f"epoch {n // 100}:  {n % 100:3d}%|{'#' * (n % 100 // 10):<10}| {n % 100}/100\r")
        elif kind == 2:
            out.append(f"WARNING\tstep {n}: gradient überlauf — scaled ✓ loss={losses[i]!r}")
        else:
            out.append(f"step {n} loss={losses[i]:.6f} lr={1e-3 / (1 + n):.3e}")
    return ("\n".join(out) + "\n").encode()


def media_json(number: int, step: int) -> str:
    """A W&B-style image reference, as a JSON text (what a media key logs at a step)."""
    return json.dumps(
        {"_type": "image-file", "path": f"media/images/sample_{number}_{step}.png", "width": 64, "height": 64,
         "format": "png", "size": 1024 + (step * 7919 + number) % 4096},  # fmt: skip
        separators=(",", ":"),
    )


def _keys_column(names: list[str], length: int) -> pa.Array:
    """A string column cycling through ``names`` for ``length`` rows, built from buffers."""
    encoded = [name.encode() for name in names]
    reps = -(-length // len(names))
    lengths = np.tile(np.array([len(e) for e in encoded], dtype=np.int32), reps)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(encoded) * reps, dtype=np.uint8)
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def _run_shape(cfg: SyntheticConfig, index: int) -> _RunShape:
    rng = _rng(cfg.seed, index, _TAG_META, 1)
    k = cfg.keys
    start_time = cfg.start_time + index * 3600.0 + float(rng.uniform(0.0, 60.0))
    return _RunShape(
        start_time=start_time,
        t0=start_time + float(rng.uniform(1.0, 5.0)),
        interval=float(rng.uniform(0.05, 2.0)),
        amplitude=rng.uniform(0.5, 3.0, k).astype(np.float32),
        rate=rng.uniform(1e-4, 1e-2, k).astype(np.float32),
        base=rng.uniform(-1.0, 1.0, k),
        sigma=rng.uniform(0.001, 0.1, k).astype(np.float32),
    )


def _run_record(cfg: SyntheticConfig, ref: RunRef, index: int, gen: _HistoryGenerator) -> RunRecord:
    rng = _rng(cfg.seed, index, _TAG_META, 0)
    shape = gen.shape
    state = _STATES[int(rng.choice(len(_STATES), p=_STATE_WEIGHTS))]
    summary: dict[str, Any] = {}
    last_stamp = shape.t0
    if gen.total:
        tail = gen.batch(gen.total - cfg.keys, gen.total)
        last_stamp = tail.column(2)[-1].as_py()
        summary = {
            key: json.loads(text) if text is not None else value
            for key, value, text in zip(
                tail.column(0).to_pylist(), tail.column(3).to_pylist(), tail.column(4).to_pylist(), strict=True
            )
        }
    end_time = None if state is RunState.RUNNING else last_stamp + float(rng.uniform(0.5, 5.0))
    names = key_names(cfg.keys, cfg.json_keys, cfg.system_keys)
    labels = sorted({_LABELS[int(i)] for i in rng.integers(0, len(_LABELS), 2)})
    return RunRecord(
        ref=ref,
        display_name=f"{['brisk', 'calm', 'eager', 'fancy', 'gentle'][index % 5]}-{names[0].split('/')[0]}-{index}",
        state=state,
        start_time=shape.start_time,
        end_time=end_time,
        user=f"user{index % 7}",
        config=_run_config(cfg, rng),
        summary=summary,
        tags={"team": f"team-{index % 3}", "dataset": "synthetic-v1"},
        labels=labels,
        notes=f"Synthetic run {index} — seed {cfg.seed}.\nSecond line with ünïcode.",
        group=f"group-{index % 5}",
        job_type="train" if index % 4 else "eval",
        git_commit=rng.bytes(20).hex(),
        program="train.py",
        host=f"node-{index % 11:02d}",
        parent_id=None,
        system={"source": "synthetic", "seed": cfg.seed, "index": index},
        source_system="synthetic",
        history_points=cfg.points_of(index),
        file_bytes=cfg.bytes_per_run,
    )


def _run_config(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, Any]:
    fixed: dict[str, Any] = {
        "learning_rate": float(rng.uniform(1e-5, 1e-2)),
        "batch_size": int(rng.choice([16, 32, 64, 128])),
        "optimizer": str(rng.choice(["adam", "adamw", "sgd"])),
        "use_amp": bool(rng.integers(0, 2)),
        "model": {"layers": int(rng.integers(2, 48)), "hidden": int(rng.choice([256, 512, 1024]))},
        "schedule": ["warmup", "cosine"],
    }
    if cfg.special_config:
        fixed.update({"clip_norm": float("inf"), "min_lr": -0.0, "label_smoothing": float("nan"), "floor": -float("inf")})
    config = dict(list(fixed.items())[: cfg.params])
    for i in range(len(config), cfg.params):
        config[f"param_{i:03d}"] = float(rng.standard_normal())
    return config


def _files(cfg: SyntheticConfig, index: int) -> list[FileRef]:
    files = [FileRef(path=f"outputs/part-{i:03d}.bin", size=size) for i, size in enumerate(cfg.file_sizes)]
    if cfg.artifact_sizes:
        artifact = ArtifactRef(
            name=f"model-{run_id(index)}",
            type="model",
            version="v0",
            aliases=("latest",),
            description="Synthetic model weights",
            metadata=(("framework", "synthetic"), ("shards", len(cfg.artifact_sizes))),
        )
        files += [
            FileRef(path=f"weights/shard-{i:03d}.bin", size=size, artifact=artifact)
            for i, size in enumerate(cfg.artifact_sizes)
        ]
    if cfg.console_lines:
        files.append(FileRef(path=CONSOLE_PATH, role=CONSOLE_LOG))
    return files


def file_pieces(seed: int, index: int, file: FileRef, tag: int, number: int) -> Any:
    """The deterministic bytes of a file, piece by piece (a plain generator)."""
    size = file.size or 0
    for piece, offset in enumerate(range(0, size, FILE_PIECE)):
        yield _rng(seed, index, tag, number, piece).bytes(min(FILE_PIECE, size - offset))


class SyntheticSource:
    """Generated runs; see ``SyntheticConfig`` for the knobs and the module docstring for the
    determinism guarantees."""

    Config = SyntheticConfig

    def __init__(self, config: SyntheticConfig, context: AdapterContext | None = None) -> None:
        self.config = config
        self.context = context or AdapterContext()
        self._keys_column: pa.Array | None = None

    def describe(self) -> str:
        c = self.config
        return (
            f"synthetic:seed={c.seed},runs={c.runs},projects={c.projects},entity={c.entity},"
            f"steps={c.steps},keys={c.keys},json_keys={c.json_keys},stride={c.step_stride},params={c.params},"
            f"special={c.special_fraction},special_config={c.special_config},start={c.start_time!r},"
            f"files={c.file_sizes},artifacts={c.artifact_sizes}"
            + (f",system_keys={c.system_keys}" if c.system_keys else "")
            + (f",console_lines={c.console_lines}" if c.console_lines else "")
            + (f",long_runs={c.long_runs},long_steps={c.long_steps}" if c.long_runs else "")
        )

    async def __aenter__(self) -> SyntheticSource:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    @property
    def chunk_points(self) -> int:
        return self.config.chunk_points or self.context.chunk_points

    def _generator(self, index: int) -> _HistoryGenerator:
        cfg = self.config
        block_points = max(1, BLOCK_POINTS // cfg.keys) * cfg.keys
        needed = max(block_points, self.chunk_points) * 2 + cfg.keys
        if self._keys_column is None or len(self._keys_column) < needed:
            self._keys_column = _keys_column(key_names(cfg.keys, cfg.json_keys, cfg.system_keys), needed)
        return _HistoryGenerator(cfg, index, self._keys_column)

    async def list_runs(self) -> AsyncGenerator[RunRef, None]:
        cfg = self.config
        for index in range(cfg.runs):
            namespace = Namespace(cfg.entity, f"project-{index % cfg.projects}")
            yield RunRef(id=run_id(index), namespace=namespace, name=run_id(index), extra=(("index", index),))
            await anyio.lowlevel.checkpoint()

    async def get_run(self, ref: RunRef) -> RunRecord:
        index = _run_index(ref, self.config.runs)
        return _run_record(self.config, ref, index, self._generator(index))

    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncGenerator[HistoryChunk, None]:
        gen = self._generator(_run_index(run.ref, self.config.runs))
        for lo, hi in gen.chunk_bounds(max(0, start), self.chunk_points):
            yield HistoryChunk(batch=gen.batch(lo, hi), offset=lo)
            await anyio.lowlevel.checkpoint()

    async def list_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        for file in _files(self.config, _run_index(run.ref, self.config.runs)):
            yield file

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncGenerator[bytes, None]:
        index = _run_index(run.ref, self.config.runs)
        keys = [f.key for f in _files(self.config, index)]
        if file.key not in keys:
            raise NotFoundError(f"synthetic run {run.ref.id} has no file {file.key!r}", adapter="synthetic")
        if file.role == CONSOLE_LOG:
            for block in range(-(-self.config.console_lines // CONSOLE_BLOCK_LINES)):
                yield console_block(self.config.seed, index, block, self.config.console_lines)
                await anyio.lowlevel.checkpoint()
            return
        number = keys.index(file.key)
        tag = _TAG_FILE if file.artifact is None else _TAG_ARTIFACT
        for piece in file_pieces(self.config.seed, index, file, tag, number):
            yield piece
            await anyio.lowlevel.checkpoint()
