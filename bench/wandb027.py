"""Creates (once) the venv with wandb==0.27.0, the last SDK that shipped W&B's importers.

Why: bench compares runferry with ``wandb.apis.importers`` and the test suite checks that
0.27.0's ``wandb.init``/``run.log`` work against our W&B-compatible server; 0.27.0 cannot
live next to the current SDK, so it gets its own venv, cached in ``<repo>/.venv-wandb027/``.

Usage: ``python -m bench.wandb027`` (prints the venv's python) or ``ensure_wandb027()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WANDB_VERSION = "0.27.0"
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


def ensure_wandb027(venv_dir: Path | None = None) -> Path:
    """Return the python of a venv with wandb==0.27.0, creating it on first use."""
    venv_dir = Path(os.environ.get("RUNFERRY_WANDB027_VENV", venv_dir or DEFAULT_DIR))
    python = venv_python(venv_dir)
    if installed_version(python) == WANDB_VERSION:
        return python
    steps = [
        [sys.executable, "-m", "venv", str(venv_dir)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"wandb=={WANDB_VERSION}"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise VenvUnavailable(
                f"{' '.join(step[:4])}... failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
    version = installed_version(python)
    if version != WANDB_VERSION:
        raise VenvUnavailable(f"venv at {venv_dir} has wandb {version!r}, expected {WANDB_VERSION}")
    return python


def main(argv: list[str] | None = None) -> int:
    try:
        print(ensure_wandb027())
    except VenvUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
