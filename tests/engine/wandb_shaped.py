"""A fake W&B source: records, history and files shaped as the W&B source adapter yields them
(``source_system = "wandb"``, qualified refs, config with ``_wandb``, the whole summary,
integers with their exact text beside the float, non-numeric points as JSON, ``system/...``
keys, run files, the console log and artifact members), for destination tests."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pyarrow as pa

from core.protocols import AdapterContext
from core.model import (
    CONSOLE_LOG,
    ArtifactRef,
    FileRef,
    HistoryChunk,
    Namespace,
    RunRecord,
    RunRef,
    RunState,
    history_batch,
)

LONG_KEY = "k" * 260
T0 = 1_700_000_000.123456
STEPS = 150
DATASET = ArtifactRef(
    name="mnist",
    type="dataset",
    version="v1",
    aliases=("latest", "best"),
    description="digits",
    metadata=(("rows", 10),),
    source_project="team/proj",
    digest="0" * 32,
)


def config_of(index: int) -> dict[str, Any]:
    return {
        "lr": 0.001 * (index + 1),
        "batch_size": 32,
        "opt": {"name": "adam", "beta1": 0.9, "betas": [0.9, 0.999], "sched": {"warmup": 10}},
        "layers": [64, 32],
        "flag": True,
        "nothing": None,
        "empty": {},
        "bad key(1)": 5,
        "huge": "x" * 7000,
        LONG_KEY: 1,
        "_wandb": {"m": [{"1": "train/loss", "5": 1, "6": [1]}], "t": {"1": [1, 55]}, "start_time": T0 - 5},
    }


def history_of(index: int) -> list[tuple[str, int, float, float | None, str | None]]:
    """Rows (key, step, timestamp, value, value_json) in the source's order."""
    rows: list[tuple[str, int, float, float | None, str | None]] = []
    for step in range(STEPS):
        ts = T0 + step * 0.25 + index
        loss = math.sin(step + index)
        if step % 17 == 3:
            loss = math.nan
        elif step % 23 == 5:
            loss = math.inf if step % 2 else -math.inf
        rows.append(("train/loss", step, ts, loss, None))
        rows.append(("acc", step, ts, float(step * 3), str(step * 3)))  # an integer: exact text beside
        rows.append(("bad@key", step, ts, step / 8, None))
        if step % 10 == 0:
            rows.append(("text", step, ts, None, json.dumps(f"sample {step}")))
            rows.append(("flag", step, ts, None, "true" if step % 20 == 0 else "false"))
            media = {"_type": "image-file", "path": f"media/images/x_{step}.png", "sha256": "ab" * 32}
            rows.append(("img", step, ts, None, json.dumps(media)))
            rows.append((LONG_KEY, step, ts, 1.5, None))
            rows.append(("big", step, ts, 1.2345678901234567e19, "12345678901234567890"))
            rows.append(("maybe", step, ts, None, "null"))
    for sample in range(40):  # system metrics: their own stream, step = sample index
        ts = T0 + sample * 2.0
        rows.append(("system/cpu", sample, ts, 10.0 + sample, None))
        rows.append(("system/gpu.0.gpu", sample, ts, float(sample % 7), None))
    return rows


def summary_of(index: int) -> dict[str, Any]:
    last = STEPS - 1
    return {
        "train/loss": math.sin(last + index),
        "acc": last * 3,
        "best_acc": 0.95,  # set directly, never logged
        "count": 7,
        "not_a_number": math.nan,
        "direct_flag": True,  # not a number: summary.json only
        "loss_stats": {"min": -1.0, "max": 1.0},  # nested: summary.json only
        "img": {"_type": "image-file", "path": "media/images/x_140.png"},
        "_wandb": {"runtime": 40},
        "_runtime": 40.5,
        "_step": last,
        "_timestamp": T0 + last * 0.25 + index,
    }


FILES: dict[str, bytes] = {
    "wandb-metadata.json": b'{"os": "Linux", "python": "3.11"}',
    "requirements.txt": b"torch==2.3\nnumpy\n",
    "media/images/x_0.png": bytes(range(256)) * 40,
}
CONSOLE_TEXT = b"epoch 1\nepoch 2\n\xe2\x9c\x93 done\n"
ARTIFACT_FILES: dict[str, bytes] = {"train.csv": b"a,b\n1,2\n", "nested/labels.txt": b"0\n1\n"}


@dataclass
class WandbShapedSource:
    """Two runs of ``team/proj``: one finished, one crashed with tags, notes, group..."""

    context: AdapterContext = field(default_factory=AdapterContext)
    metric_keys_known: bool = True

    def describe(self) -> str:
        return "fake-wandb://team"

    async def __aenter__(self) -> WandbShapedSource:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def refs(self) -> list[RunRef]:
        ns = Namespace("team", "proj")
        return [
            RunRef(id="team/proj/abc123", namespace=ns, name="bright-sun-1", extra=(("run_id", "abc123"),)),
            RunRef(id="team/proj/def456", namespace=ns, name="dark-moon-2", extra=(("run_id", "def456"),)),
        ]

    async def list_runs(self) -> AsyncIterator[RunRef]:
        for ref in self.refs():
            yield ref

    def index(self, ref: RunRef) -> int:
        return [r.id for r in self.refs()].index(ref.id)

    async def get_run(self, ref: RunRef) -> RunRecord:
        i = self.index(ref)
        rows = history_of(i)
        record = RunRecord(
            ref=ref,
            display_name=ref.name,
            state=RunState.FINISHED if i == 0 else RunState.CRASHED,
            start_time=T0 - 5 + i,
            end_time=T0 + 100.5 + i,
            user="alice",
            config=config_of(i),
            summary=summary_of(i),
            labels=["baseline", "with space, comma"] if i else [],
            notes="a note\nover lines" if i else None,
            group="sweep-7" if i else None,
            job_type="train" if i else None,
            git_commit="0123456789abcdef0123456789abcdef01234567",
            program="train.py",
            host="gpu-box-1",
            system={"source": "wandb", "url": f"http://127.0.0.1:9/team/proj/runs/{ref.run_id}"},
            source_system="wandb",
            metric_keys=sorted({r[0] for r in rows}) if self.metric_keys_known else None,
            history_points=len(rows),
        )
        return record

    def history_table(self, ref: RunRef) -> pa.RecordBatch:
        rows = history_of(self.index(ref))
        return history_batch(*(list(col) for col in zip(*rows)))

    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncIterator[HistoryChunk]:
        batch = self.history_table(run.ref)
        size = self.context.chunk_points
        for offset in range(start, batch.num_rows, size):
            await anyio.sleep(0)
            yield HistoryChunk(batch.slice(offset, size), offset)

    def files_of(self, run: RunRecord) -> list[tuple[FileRef, bytes]]:
        out = [(FileRef(path=p, size=len(d), md5=hashlib.md5(d).hexdigest()), d) for p, d in FILES.items()]
        out.append((FileRef(path="output.log", role=CONSOLE_LOG), CONSOLE_TEXT))
        out += [(FileRef(path=p, size=len(d), artifact=DATASET), d) for p, d in ARTIFACT_FILES.items()]
        return out

    async def list_files(self, run: RunRecord) -> AsyncIterator[FileRef]:
        for ref, _ in self.files_of(run):
            yield ref

    async def read_file(self, run: RunRecord, file: FileRef) -> AsyncIterator[bytes]:
        data = dict((f.key, d) for f, d in self.files_of(run))[file.key]
        for i in range(0, len(data), 50):
            yield data[i : i + 50]
