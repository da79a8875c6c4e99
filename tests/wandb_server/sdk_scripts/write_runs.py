"""Writes the test dataset through the official wandb SDK (run as a subprocess).

Usage: python write_runs.py ENTITY PROJECT {full|small}
Environment: WANDB_BASE_URL / WANDB_API_KEY / WANDB_DIR etc. point at the fake server.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dataset  # noqa: E402
import wandb  # noqa: E402


def write_history_run(entity: str, project: str, with_artifact: bool) -> None:
    run = wandb.init(
        entity=entity,
        project=project,
        id=dataset.HISTORY_RUN,
        name="History run",
        config=dataset.HISTORY_CONFIG,
        tags=dataset.HISTORY_TAGS,
        notes=dataset.HISTORY_NOTES,
        group="g1",
        job_type="train",
    )
    for step in range(dataset.STEPS):
        run.log(dataset.history_row(step), step=step)
    for key, value in dataset.HISTORY_SUMMARY_EXTRA.items():
        run.summary[key] = value
    if with_artifact:
        name, content = dataset.SAVED_FILE
        path = os.path.join(run.dir, name)
        with open(path, "wb") as fh:
            fh.write(content)
        run.save(path, base_path=run.dir, policy="now")
        src = os.path.join(os.environ["WANDB_DIR"], "artifact-src")
        for rel, data in dataset.artifact_files().items():
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            with open(os.path.join(src, rel), "wb") as fh:
                fh.write(data)
        artifact = wandb.Artifact("dataset", type="dataset", description="test data", metadata={"rows": 2})
        artifact.add_dir(src)
        run.log_artifact(artifact, aliases=["best"])
    run.finish()


def write_failed_run(entity: str, project: str) -> None:
    run = wandb.init(entity=entity, project=project, id=dataset.FAILED_RUN, name="Failed run")
    run.use_artifact("dataset:best")
    for step in range(3):
        run.log({"loss": float(step)}, step=step)
    run.finish(exit_code=1)


def write_resumed_run(entity: str, project: str) -> None:
    """Two sessions of one run: the second continues history at the server's line count."""
    for session, steps in enumerate((range(0, 5), range(5, 10))):
        run = wandb.init(
            entity=entity,
            project=project,
            id=dataset.RESUMED_RUN,
            name="Resumed run",
            resume="allow" if session == 0 else "must",
        )
        for step in steps:
            run.log({"x": step * 10}, step=step)
        run.finish()


def write_grid(entity: str, project: str) -> None:
    for index, name in enumerate(dataset.GRID_RUNS):
        run = wandb.init(
            entity=entity,
            project=project,
            id=name,
            name=f"Grid {index}",
            config={"lr": dataset.GRID_LR[index], "index": index},
            tags=dataset.grid_tags(index),
        )
        run.log({"acc": dataset.grid_acc(index)}, step=0)
        run.finish()


def main() -> int:
    entity, project, mode = sys.argv[1:4]
    write_history_run(entity, project, with_artifact=(mode == "full"))
    if mode == "full":
        write_failed_run(entity, project)
        write_grid(entity, project)
        write_resumed_run(entity, project)
    print("WROTE", wandb.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
