"""Durable local staging of artifact members until their artifact is committed.

Why: the engine marks a file done in its ledger as soon as ``write_file`` returns, but a W&B
artifact can only be committed once all its members are known (the digest covers the whole
manifest). Members are therefore staged on local disk under a directory derived from the
destination run, with a sidecar holding size and MD5s; a resumed migration finds them again
and commits the complete artifact in ``finish``. The run's directory is removed after the commit, the root with the destination once empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from ._spool import Spooled, spool


def staging_root(spool_dir: str) -> Path:
    return Path(spool_dir or tempfile.gettempdir()) / "runferry-wandb-staging"


def remove_staging_root(spool_dir: str) -> None:
    """Remove the staging root once nothing is staged in it (at the destination's close: no run
    is staging then). A run's staged members (kept for a resume) keep it."""
    try:
        staging_root(spool_dir).rmdir()
    except OSError:  # absent, or members of an unfinished run still staged
        pass


class RunStaging:
    """Staged artifact members of one destination run."""

    def __init__(self, root: Path, dest_id: str) -> None:
        self.dir = root / hashlib.blake2b(dest_id.encode(), digest_size=12).hexdigest()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _member_dir(self, artifact_key: str) -> Path:
        return self.dir / hashlib.blake2b(artifact_key.encode(), digest_size=12).hexdigest()

    async def stage(
        self, artifact_key: str, artifact_meta: dict[str, Any], path: str, data: AsyncIterator[bytes], part_size: int
    ) -> Spooled:
        """Spool one member and record it (atomically: data first, then the sidecar)."""
        directory = self._member_dir(artifact_key)
        await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        meta_file = directory / "artifact.json"
        if not meta_file.exists():
            meta_file.write_text(json.dumps({"key": artifact_key, **artifact_meta}))
        spooled = await spool(data, str(directory), part_size)
        member_id = hashlib.blake2b(path.encode(), digest_size=12).hexdigest()
        final = directory / f"{member_id}.bin"
        os.replace(spooled.path, final)
        sidecar = {"path": path, "size": spooled.size, "md5": spooled.md5_hex,
                   "part_size": spooled.part_size, "parts": list(spooled.part_md5_hex)}
        tmp = directory / f"{member_id}.json.tmp"
        tmp.write_text(json.dumps(sidecar))
        os.replace(tmp, directory / f"{member_id}.json")
        return Spooled(str(final), spooled.size, spooled.md5_hex, spooled.part_size, spooled.part_md5_hex)

    def load(self) -> dict[str, tuple[dict[str, Any], dict[str, Spooled]]]:
        """Everything staged before (after a crash): artifact key -> (meta, {path: member})."""
        found: dict[str, tuple[dict[str, Any], dict[str, Spooled]]] = {}
        if not self.dir.exists():
            return found
        for directory in sorted(self.dir.iterdir()):
            meta_file = directory / "artifact.json"
            if not meta_file.exists():
                continue
            meta = json.loads(meta_file.read_text())
            members: dict[str, Spooled] = {}
            for sidecar in sorted(directory.glob("*.json")):
                if sidecar.name == "artifact.json":
                    continue
                info = json.loads(sidecar.read_text())
                data = sidecar.with_suffix(".bin")
                if data.exists() and data.stat().st_size == info["size"]:
                    members[info["path"]] = Spooled(str(data), info["size"], info["md5"], info["part_size"],
                                                    tuple(info["parts"]))
            found[meta["key"]] = (meta, members)
        return found
