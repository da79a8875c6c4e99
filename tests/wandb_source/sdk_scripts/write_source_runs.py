"""Writes the W&B-source test dataset through the official wandb SDK (run as a subprocess).

Usage: python write_source_runs.py ENTITY OTHER_ENTITY
Environment: WANDB_BASE_URL / WANDB_API_KEY / WANDB_DIR etc. point at the test server.

Projects: ENTITY/alpha (a rich run, a failed run, a resumed run), ENTITY/beta (a grid of runs
for filters and order), OTHER_ENTITY/gamma (one run).
"""

import math
import os
import sys
import time

# this script turns on what the shared SDK environment turns off: console capture, stats
for name in ("WANDB_CONSOLE", "WANDB_X_DISABLE_STATS", "WANDB__DISABLE_STATS", "WANDB_X_DISABLE_MACHINE_INFO"):
    os.environ.pop(name, None)

import numpy as np  # noqa: E402
import wandb  # noqa: E402

QUIET = {"console": "off", "x_disable_stats": True}


def write_rich(entity: str) -> None:
    settings = wandb.Settings(console="wrap", x_disable_stats=False, x_stats_sampling_interval=0.5)
    run = wandb.init(
        entity=entity, project="alpha", id="rich", name="Rich run", settings=settings,
        config={"lr": 0.01, "layers": [64, 32], "optim": {"name": "adam", "betas": [0.9, 0.999]}, "seed": 7},
        tags=["rich", "baseline"], notes="a run with everything", group="g-rich", job_type="train",
    )
    run.define_metric("epoch")
    run.define_metric("val/*", step_metric="epoch")
    print("hello from the rich run")
    image = wandb.Image(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), caption="tiny")
    for step in range(12):
        row = {
            "loss": 1.0 / (step + 1),
            "count": step * 3,
            "big": 2**53 + step,
            "flag": step % 2 == 0,
            "label": f"s{step}",
            "vec": [step, step + 0.5, None],
            "nested": {"a": step, "b": {"c": float(step) / 3}},
        }
        if step == 3:
            row.update({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "negzero": -0.0})
        if step % 4 == 0:
            row["val/acc"] = 0.5 + step / 100
            row["epoch"] = step // 4
        if step == 5:
            row["hist"] = wandb.Histogram([1, 2, 2, 3, 3, 3])
            row["img"] = image
        run.log(row, step=step * 10)  # sparse-ish steps
    run.log({"late": 1.5}, step=5000)  # a gap
    print("second line", file=sys.stderr)
    path = os.path.join(run.dir, "notes.txt")
    with open(path, "w") as fh:
        fh.write("saved with run.save\n")
    run.save(path, base_path=run.dir, policy="now")
    run.summary["best"] = 0.75
    run.summary["note"] = "set directly"
    time.sleep(2.5)  # a few system-metrics samples
    run.finish()


def write_failed(entity: str) -> None:
    run = wandb.init(entity=entity, project="alpha", id="failed", name="Failed run", settings=QUIET)
    for step in range(3):
        run.log({"loss": float(step)}, step=step)
    run.finish(exit_code=1)


def write_resumed(entity: str) -> None:
    for session, steps in enumerate((range(0, 4), range(4, 9))):
        run = wandb.init(entity=entity, project="alpha", id="resumed", name="Resumed run",
                         resume="allow", settings=QUIET)
        for step in steps:
            run.log({"x": step * 10, "session": session}, step=step)
        run.finish()


GRID_LR = [0.1, 0.01, 0.3, 0.001, 0.2, 0.05]


def write_grid(entity: str) -> None:
    for index, lr in enumerate(GRID_LR):
        run = wandb.init(
            entity=entity, project="beta", id=f"grid{index:02d}", name=f"Grid {index}", settings=QUIET,
            config={"lr": lr, "index": index, "opt": "sgd" if index % 2 else "adam"},
            tags=["grid", "even" if index % 2 == 0 else "odd"],
            group="g-even" if index % 2 == 0 else "g-odd", job_type="eval" if index == 5 else "train",
        )
        run.log({"acc": 0.5 + index * 0.07}, step=0)
        run.finish(exit_code=1 if index == 4 else 0)


def write_other(entity: str) -> None:
    run = wandb.init(entity=entity, project="gamma", id="other", name="Other run", settings=QUIET)
    run.log({"y": 1}, step=0)
    run.finish()


def main() -> int:
    entity, other = sys.argv[1:3]
    write_rich(entity)
    write_failed(entity)
    write_resumed(entity)
    write_grid(entity)
    write_other(other)
    print("WROTE", wandb.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
