"""MLflow system metrics (``system/...`` metrics, as mlflow's system-metrics monitor logs them)
-> W&B's system stream, and a console log kept as a plain file by an MLflow destination: a
real ``mlflow server``, the official MLflow client as the oracle, ``wandb.Api()`` reading back."""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import Any

import pytest

from core.protocols import AdapterContext
from adapters.synthetic import SyntheticConfig, SyntheticSource
from engine.config import parse_config
from core.model import CONSOLE_LOG
from engine.pipeline import migrate
from engine.verify import SYSTEM_RESTEPPED, verify

from .conftest import KEY_ENV, same_value, wandb_api

pytestmark = pytest.mark.timeout(900)

T0_MS = 1_700_000_000_000
SYSTEM_KEYS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
               "system/gpu_0_utilization_percentage")
SAMPLES = 40


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory: pytest.TempPathFactory):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tests.servers.mlflow_server import MlflowServer

    root = tmp_path_factory.mktemp("mlflow-sysmetrics")
    with MlflowServer(root) as server:
        client = MlflowClient(server.url)
        exp = client.create_experiment("sysmetrics")
        run = client.create_run(exp, run_name="with system metrics", start_time=T0_MS)
        rid = run.info.run_id
        metrics = [Metric("loss", 1.0 / (1 + step), T0_MS + step * 1000, step) for step in range(60)]
        for sample in range(SAMPLES):  # one monitor sample: every system key, one timestamp, one step
            stamp = T0_MS + sample * 5000 + 3
            for k, key in enumerate(SYSTEM_KEYS):  # steps 1, 3, 5...: W&B's system lines have none
                metrics.append(Metric(key, round(10.0 * k + sample * 0.37, 2), stamp, 2 * sample + 1))
        client.log_batch(rid, metrics=metrics)
        client.set_terminated(rid, "FINISHED", end_time=T0_MS + 300_000)
        yield server, client, rid


def test_mlflow_system_metrics_land_in_the_wandb_system_stream(mlflow_run, server, project, tmp_path) -> None:
    mlflow_server, client, rid = mlflow_run
    config = parse_config({
        "source": {"type": "mlflow", "tracking_uri": mlflow_server.url, "experiments": ["sysmetrics"]},
        "destination": {"type": "wandb", "base_url": server.base_url, "api_key_env": KEY_ENV,
                        "entity": server.entity, "project": project, "filestream_rate": 1000.0},
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl")},
    })
    assert (anyio_run(migrate, config)).exit_code == 0
    run = wandb_api(server).run(f"{server.entity}/{project}/{rid}")

    # the oracle: what the MLflow client reports, grouped as W&B's system lines
    want: dict[int, dict[str, Any]] = {}
    for key in SYSTEM_KEYS:
        for m in client.get_metric_history(rid, key):
            line = want.setdefault(m.step, {"_wandb": True, "_timestamp": m.timestamp / 1000})
            line["system." + key.removeprefix("system/")] = m.value
    for line in want.values():
        line["_runtime"] = line["_timestamp"] - T0_MS / 1000
    system = run.history(stream="system", samples=10**6, pandas=False)
    assert len(system) == SAMPLES
    for got, expected in zip(system, [want[s] for s in sorted(want)], strict=True):
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert same_value(got[key], value), (key, got[key], value)
    assert run.system_metrics == {k: v for k, v in system[-1].items() if k.startswith("system.")}

    # nothing of them is left in the history or the summary; the rest of the history is whole
    history = list(run.scan_history(page_size=1000))
    assert {k for line in history for k in line} == {"_step", "_runtime", "_timestamp", "loss"}
    got_loss = Counter((h["_step"], h["loss"]) for h in history)
    assert got_loss == Counter((m.step, m.value) for m in client.get_metric_history(rid, "loss"))
    assert [k for k in run.summary.keys() if "system" in k] == []
    assert run.summary["loss"] == client.get_run(rid).data.metrics["loss"]

    # verify reads the W&B run back: identical, with the system stream's own numbering told
    out = io.StringIO()
    report = anyio_run(verify, config, out)
    assert (report.exit_code, report.matched, report.mismatched) == (0, 1, []), out.getvalue()
    assert report.notes == [(report.notes[0][0], SYSTEM_RESTEPPED)]


def test_a_console_log_is_kept_as_a_plain_file_by_an_mlflow_destination(mlflow_run, tmp_path) -> None:
    mlflow_server, client, _ = mlflow_run
    source = {"type": "synthetic", "seed": 3, "runs": 1, "projects": 1, "steps": 20, "keys": 3,
              "console_lines": 700, "file_sizes": [], "artifact_sizes": []}
    config = parse_config({
        "source": source,
        "destination": {"type": "mlflow", "tracking_uri": mlflow_server.url, "experiment": "console-kept"},
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl")},
    })
    assert anyio_run(migrate, config).exit_code == 0
    want = anyio_run(console_bytes, source)
    exp = client.get_experiment_by_name("console-kept")
    (run,) = client.search_runs([exp.experiment_id])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["output.log"]
    path = client.download_artifacts(run.info.run_id, "output.log", str(tmp_path))
    with open(path, "rb") as fh:
        assert fh.read() == want
    assert not math.isnan(run.data.metrics["train/loss"])


async def console_bytes(table: dict) -> bytes:
    cfg = SyntheticConfig(**{k: v for k, v in table.items() if k != "type"})
    async with SyntheticSource(cfg, AdapterContext()) as src:
        (ref,) = [ref async for ref in src.list_runs()]
        rec = await src.get_run(ref)
        (file,) = [f async for f in src.list_files(rec) if f.role == CONSOLE_LOG]
        return b"".join([piece async for piece in src.read_file(rec, file)])


def anyio_run(fn, *args):
    import anyio

    return anyio.run(fn, *args)
