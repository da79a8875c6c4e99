"""Whether a directory accepts new files, checked before anything is written: adapters probe
their destination paths at start (``engine/preflight.py`` does the ledger), so a refused path is
one clear ``ConfigError`` and nothing is created."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from core.errors import ConfigError

PROBE_PREFIX = ".runferry-probe-"


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_directory(directory: Path, *, key: str) -> None:
    """``directory`` (or, when missing, its nearest existing ancestor) accepts a new file:
    create and remove a probe there. Raises ``ConfigError`` starting with ``key``; creates nothing."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key} = {str(directory)!r} exists and is not a directory — give a directory path")
    anchor = existing_ancestor(target)
    if not anchor.is_dir():
        raise ConfigError(f"{key}: {str(anchor)!r} is a file, so {str(directory)!r} cannot be created — fix the path")
    probe = anchor / f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.open("xb").close()
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot write in {str(anchor)!r} ({exc.strerror or exc}) — choose a writable path or fix its permissions"
        ) from None
    with contextlib.suppress(OSError):
        probe.unlink()
