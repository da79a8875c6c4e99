"""Deterministic MLflow test data, written through the official ``MlflowClient``.

The edge cases the adapters must keep exactly: NaN, +inf, -inf, -0.0, several points at one step,
points that differ only by timestamp, long histories (paging), more than 100 params, system tags
(note, git commit, source name, user, parent), a nested run whose parent starts later, deleted runs,
dataset inputs, artifacts with zero bytes, deep nesting, spaces and non-ASCII names.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

T0 = 1_700_000_000_000  # ms

EDGE_POINTS = [  # (value, timestamp offset ms, step)
    (1.5, 0, 0),
    (float("nan"), 1, 0),
    (float("inf"), 2, 1),
    (float("-inf"), 3, 1),
    (-0.0, 4, 2),
    (2.0, 5, 3),
    (2.5, 5, 3),  # same step and timestamp, different value
    (3.0, 6, 4),
    (3.0, 7, 4),  # differs only by timestamp
    (7.25, 7, 9_000_000_000),  # a large step
]


def blob(n: int, seed: int = 0) -> bytes:
    """n deterministic bytes that are not a repeating pattern."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


ARTIFACT_FILES = {
    "empty.txt": b"",
    "a/b/c/d/e/f/deep.bin": blob(70_000, 1),
    "dir with space/ünïcødé 文件.txt": "héllo wörld\n".encode(),
    "model/weights.bin": blob(3 * 1024 * 1024 + 17, 2),
    "top.json": b'{"k": 1}',
}


@dataclass
class Seeded:
    """Ids of what was seeded, by role."""

    suffix: str = ""  # appended to experiment names (to share a long-lived dev server)
    edge_experiment: str = ""
    many_experiment: str = ""
    runs: dict[str, str] = field(default_factory=dict)  # role -> run id
    many_runs: list[str] = field(default_factory=list)

    @property
    def edge_name(self) -> str:
        return f"edge-cases{self.suffix}"

    @property
    def many_name(self) -> str:
        return f"many-runs{self.suffix}"


def seed_source(client: MlflowClient, tmp: Path, *, many_runs: int = 23, suffix: str = "") -> Seeded:
    seeded = Seeded(suffix=suffix)
    seeded.edge_experiment = client.create_experiment(f"edge-cases{suffix}")
    seeded.many_experiment = client.create_experiment(f"many-runs{suffix}")
    exp = seeded.edge_experiment

    # The child starts before its parent: runs are listed by start time, so the child is copied
    # first and the destination must resolve its parent later (finalize).
    parent_id = client.create_run(exp, start_time=T0 + 50_000, run_name="parent", tags={"mlflow.user": "carol"}).info.run_id
    child = client.create_run(
        exp,
        start_time=T0 + 10_000,
        run_name="child",
        tags={"mlflow.parentRunId": parent_id, "mlflow.user": "carol"},
    ).info.run_id
    client.log_metric(child, "child_metric", 0.5, timestamp=T0 + 10_001, step=0)
    client.set_terminated(child, "FINISHED", end_time=T0 + 20_000)
    client.log_metric(parent_id, "parent_metric", 1.0, timestamp=T0 + 50_001, step=0)
    client.set_terminated(parent_id, "FINISHED", end_time=T0 + 60_000)
    seeded.runs["parent"], seeded.runs["child"] = parent_id, child

    edge = client.create_run(
        exp,
        start_time=T0,
        run_name="edge run ✓",
        tags={
            "mlflow.user": "alice",
            "mlflow.note.content": "a note\nwith two lines",
            "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567",
            "mlflow.source.name": "train.py",
            "mlflow.source.type": "LOCAL",
            "team": "vision",
        },
    ).info.run_id
    params = [Param(f"p{i:03d}", f"value-{i}") for i in range(150)]
    params.append(Param("long", "x" * 5000))
    params.append(Param("unicode", "λ=0.1 ✓"))
    metrics = [Metric("edge", v, T0 + dt, s) for v, dt, s in EDGE_POINTS]
    metrics += [Metric("acc", i / 1000, T0 + 1000 + i, i) for i in range(2500)]
    metrics += [Metric("loss", 1.0 / (1 + i), T0 + 1000 + i, i) for i in range(300)]
    client.log_batch(edge, metrics=metrics, params=params, tags=[RunTag("extra", "1")])
    client.log_inputs(
        edge,
        [
            DatasetInput(
                Dataset(name="train-set", digest="abc123", source_type="local", source='{"uri": "/data/train"}'),
                tags=[InputTag("mlflow.data.context", "training")],
            )
        ],
    )
    art = tmp / "edge-artifacts"
    for rel, data in ARTIFACT_FILES.items():
        path = art / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    client.log_artifacts(edge, str(art))
    client.set_terminated(edge, "FAILED", end_time=T0 + 99_999)
    seeded.runs["edge"] = edge

    killed = client.create_run(exp, start_time=T0 + 1, run_name="killed").info.run_id
    client.log_metric(killed, "m", 1.0, timestamp=T0 + 2, step=0)
    client.set_terminated(killed, "KILLED", end_time=T0 + 3)
    seeded.runs["killed"] = killed

    running = client.create_run(exp, start_time=T0 + 2, run_name="still running").info.run_id
    client.log_param(running, "lr", "0.01")
    seeded.runs["running"] = running

    deleted = client.create_run(exp, start_time=T0 + 3, run_name="deleted").info.run_id
    client.log_metric(deleted, "m", 2.0, timestamp=T0 + 4, step=0)
    client.set_terminated(deleted, "FINISHED", end_time=T0 + 5)
    client.delete_run(deleted)
    seeded.runs["deleted"] = deleted

    for i in range(many_runs):
        run = client.create_run(seeded.many_experiment, start_time=T0 + i * 1000, run_name=f"r{i:02d}").info.run_id
        client.log_batch(
            run,
            metrics=[Metric("x", float(i * 10 + s), T0 + i * 1000 + s, s) for s in range(5)],
            params=[Param("i", str(i))],
        )
        client.set_terminated(run, "FINISHED", end_time=T0 + i * 1000 + 999)
        seeded.many_runs.append(run)
    return seeded


def float_bits(value: float) -> tuple[str, float]:
    """A comparable form that tells NaN, -0.0 and 0.0 apart."""
    if math.isnan(value):
        return ("nan", 0.0)
    return ("sign-", value) if math.copysign(1.0, value) < 0 else ("sign+", value)
