"""Drives wandb 0.27.0's importer machinery (RecordMaker + legacy SendManager) at the server.

This is the code path W&B's own MLflow/W&B importers use (bench compares runferry with it),
minus the MLflow source: a small in-memory ImporterRun stands in for an MLflow run.
Usage (under the 0.27.0 venv): python importer_send.py ENTITY PROJECT RUN_ID ARTIFACT_DIR
Environment: WANDB_BASE_URL / WANDB_API_KEY point at the fake server.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dataset  # noqa: E402
import wandb  # noqa: E402
from wandb.apis.importers.internals import internal  # noqa: E402


class StaticRun:
    """An ImporterRun whose data comes from ``dataset`` (history rows of the history run)."""

    def __init__(self, entity, project, run_id, steps):
        self._ids = (entity, project, run_id)
        self._steps = steps

    def run_id(self):
        return self._ids[2]

    def entity(self):
        return self._ids[0]

    def project(self):
        return self._ids[1]

    def config(self):
        return dict(dataset.HISTORY_CONFIG)

    def summary(self):
        return {"loss": dataset.history_row(self._steps - 1)["loss"], "best_acc": 0.99}

    def metrics(self):
        for step in range(self._steps):
            yield {**dataset.history_row(step), "_step": step}

    def run_group(self):
        return "imported"

    def job_type(self):
        return None

    def display_name(self):
        return "Imported run"

    def notes(self):
        return dataset.HISTORY_NOTES

    def tags(self):
        return list(dataset.HISTORY_TAGS)

    def artifacts(self):
        return None

    def used_artifacts(self):
        return None

    def os_version(self):
        return "linux"

    def python_version(self):
        return "3.11"

    def cuda_version(self):
        return None

    def program(self):
        return "train.py"

    def host(self):
        return "bench-host"

    def username(self):
        return "runferry"

    def executable(self):
        return "python"

    def gpus_used(self):
        return None

    def cpus_used(self):
        return 2

    def memory_used(self):
        return None

    def runtime(self):
        return 60

    def start_time(self):
        return 1_700_000_000_000

    def code_path(self):
        return None

    def cli_version(self):
        return wandb.__version__

    def files(self):
        return None

    def logs(self):
        return ["line one", "line two"]


def main() -> int:
    entity, project, run_id, art_dir = sys.argv[1:5]
    steps = int(os.environ.get("IMPORTER_STEPS", "300"))
    run = StaticRun(entity, project, run_id, steps)
    settings = {
        "api_key": os.environ["WANDB_API_KEY"],
        "base_url": os.environ["WANDB_BASE_URL"],
        "resume": "allow",
        "resumed": True,
    }
    data = internal.SendManagerConfig(metadata=True, files=True, history=True, summary=True, terminal_output=True)
    internal.send_run(run, settings_override=settings, config=data)
    for rel, content in dataset.artifact_files().items():
        path = os.path.join(art_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(content)
    art = wandb.Artifact("imported-artifacts", type="imported-artifacts")
    art.add_dir(art_dir)
    internal.send_run(run, extra_arts=[art], settings_override=settings, config=internal.SendManagerConfig(log_artifacts=True))
    print("IMPORTED", wandb.__version__, steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
