"""Creates (once) the venv with wandb==0.27.0, the last SDK that shipped W&B's importers.

Why: bench compares runferry with ``wandb.apis.importers`` and the test suite checks that
0.27.0's ``wandb.init``/``run.log`` work against our W&B-compatible server; 0.27.0 cannot
live next to the current SDK, so it gets its own venv, cached in ``<repo>/.venv-wandb027/``.

Usage: ``python -m bench.wandb027 [--importers]`` (prints the venv's python) or
``ensure_wandb027(importers=False)``. ``--importers`` adds the ``wandb[importers]`` extra
(mlflow, polars, tenacity, ...) and ``numpy<2``: 0.27.0's RecordMaker still uses ``np.NaN``,
which NumPy 2 removed, so with NumPy 2 the importer crashes on the first NaN metric. The
W&B importer (``wandb.apis.importers.wandb``) also imports ``wandb_workspaces`` (for reports),
which the extra does not list; it is installed beside (wandb pinned so it stays 0.27.0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WANDB_VERSION = "0.27.0"
IMPORTER_EXTRAS = [f"wandb[importers]=={WANDB_VERSION}", "numpy<2", "wandb-workspaces", f"wandb=={WANDB_VERSION}"]
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".venv-wandb027"


class VenvUnavailable(RuntimeError):
    """The venv could not be created or wandb==0.27.0 could not be installed."""


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import wandb; print(wandb.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def importers_ready(python: Path) -> bool:
    probe = subprocess.run(
        [str(python), "-c", "import numpy, wandb.apis.importers.mlflow, wandb.apis.importers.wandb; assert not numpy.__version__.startswith('2')"],
        capture_output=True,
        timeout=300,
    )
    return probe.returncode == 0


def ensure_wandb027(venv_dir: Path | None = None, *, importers: bool = False) -> Path:
    """Return the python of a venv with wandb==0.27.0 (and its importers), creating it once."""
    venv_dir = Path(os.environ.get("RUNFERRY_WANDB027_VENV", venv_dir or DEFAULT_DIR))
    python = venv_python(venv_dir)
    have_sdk = installed_version(python) == WANDB_VERSION
    if have_sdk and (not importers or importers_ready(python)):
        return python
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv_dir)]]
    if not have_sdk:
        steps.append([*pip, f"wandb=={WANDB_VERSION}"])
    if importers:
        steps.append([*pip, *IMPORTER_EXTRAS])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise VenvUnavailable(
                f"{' '.join(step[:4])}... failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
    version = installed_version(python)
    if version != WANDB_VERSION:
        raise VenvUnavailable(f"venv at {venv_dir} has wandb {version!r}, expected {WANDB_VERSION}")
    if importers and not importers_ready(python):
        raise VenvUnavailable(f"venv at {venv_dir}: wandb 0.27.0 importers are not importable")
    return python


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        print(ensure_wandb027(importers="--importers" in argv))
    except VenvUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
