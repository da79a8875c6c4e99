"""Bench child: one run with STEPS x KEYS scalars through the official SDK, or read it back.

Usage: python bench_log.py write ENTITY PROJECT RUN STEPS KEYS
       python bench_log.py scan ENTITY PROJECT RUN      (prints the number of rows read)
"""

import sys

import wandb


def main() -> int:
    mode, entity, project, run_id = sys.argv[1:5]
    if mode == "write":
        steps, keys = int(sys.argv[5]), int(sys.argv[6])
        run = wandb.init(entity=entity, project=project, id=run_id)
        for step in range(steps):
            run.log({f"k{i}": step * 0.001 + i for i in range(keys)}, step=step)
        run.finish()
        print("ROWS", steps)
    else:
        api = wandb.Api(timeout=60)
        rows = sum(1 for _ in api.run(f"{entity}/{project}/{run_id}").scan_history(page_size=1000))
        print("ROWS", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
