"""Writes the artifact dataset through the official wandb SDK (run as a subprocess).

Usage: python write_artifacts.py ENTITY SOURCE_PROJECT OTHER_PROJECT
Environment: WANDB_BASE_URL / WANDB_API_KEY / WANDB_DIR point at the fake server.

Collection ``data`` (type ``dataset``): v0 logged by run ``logger-a``; v1 and v2 by run
``logger-b`` (v1 keeps ``a.txt`` of v0: the same bytes, stored once). ``model`` (type
``model``) v0 by ``logger-b``. Run ``user`` in OTHER_PROJECT uses ``data:v1`` across projects.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import artifact_data as data  # noqa: E402
import wandb  # noqa: E402


def log_version(run, name, type_, version, aliases):
    root = os.path.join(os.environ["WANDB_DIR"], f"src-{name}-{version}")
    for rel, content in data.FILES[(name, version)].items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(content)
    art = wandb.Artifact(name, type=type_, description=data.DESCRIPTIONS.get((name, version)),
                         metadata=data.METADATA.get((name, version)))
    art.add_dir(root)
    run.log_artifact(art, aliases=aliases)
    art.wait()


def main() -> int:
    entity, project, other = sys.argv[1:4]
    run = wandb.init(entity=entity, project=project, id="logger-a", name="Logger A")
    log_version(run, "data", "dataset", 0, ["first"])
    run.finish()
    run = wandb.init(entity=entity, project=project, id="logger-b", name="Logger B")
    run.use_artifact("data:v0")
    log_version(run, "data", "dataset", 1, ["candidate"])
    log_version(run, "model", "model", 0, [])
    log_version(run, "data", "dataset", 2, ["best"])
    run.finish()
    run = wandb.init(entity=entity, project=other, id="user", name="User")
    run.use_artifact(f"{entity}/{project}/data:v1")
    run.finish()
    print("WROTE", wandb.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
