"""A local export that runs out of disk stops with one clear line and resumes exactly once
space is back.

The disk is real: a small tmpfs mounted in a private user + mount namespace (``unshare -rm``,
no privileges needed), so the writer meets the kernel's own ENOSPC wherever it happens to be
(history part, file, run.json, runs table). The same namespace then grows the tmpfs
(``mount -o remount,size=...``) and runs the same command again; the export is copied out
before the namespace (and its tmpfs) ends, and compared with an export that never ran short.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.e2e.test_cli import assert_exports_equal, write_config
from tests.reliability.servers import ROOT, engine

SOURCE = {
    "type": "synthetic", "seed": 5, "runs": 4, "projects": 2, "steps": 3000, "keys": 6,
    "file_sizes": [150_000, 7], "artifact_sizes": [300_000], "console_lines": 50,
}
EXPECTED_POINTS = 4 * 3000 * 6


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_available(), reason="needs unprivileged user+mount namespaces (unshare -rm)")


def test_disk_full_stops_with_one_line_and_resumes_exactly(tmp_path: Path) -> None:
    reference = write_config(tmp_path / "ref.toml", SOURCE, {"type": "local", "path": str(tmp_path / "reference")},
                             {"ledger": str(tmp_path / "ref-ledger.jsonl"), "chunk_points": 2000})
    assert engine("migrate", str(reference)).returncode == 0

    mount = tmp_path / "disk"
    mount.mkdir()
    config = write_config(tmp_path / "c.toml", SOURCE, {"type": "local", "path": str(mount / "out")},
                          {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 2000})
    python = f"PYTHONPATH={ROOT} {sys.executable} -m engine migrate {config}"
    script = f"""
set -u
mount -t tmpfs -o size=1m tmpfs {mount}
{python} >{tmp_path}/full.out 2>{tmp_path}/full.err; echo $? >{tmp_path}/full.rc
df -k {mount} | tail -1 >{tmp_path}/full.df
mount -o remount,size=64m {mount}
{python} >{tmp_path}/again.out 2>{tmp_path}/again.err; echo $? >{tmp_path}/again.rc
cp -a {mount}/out {tmp_path}/copied
"""
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", full_err
    assert "Traceback" not in full_err
    last = full_err.strip().splitlines()[-1]
    assert last.startswith("runferry: disk full: no space left on device writing to ") and str(mount / "out") in last, full_err
    assert "run the same command again to resume" in last
    assert "runs failed" not in (tmp_path / "full.out").read_text()  # stopped, not "every run failed"
    assert int((tmp_path / "full.df").read_text().split()[3]) < 300  # KiB left: less than one artifact file

    again_err = (tmp_path / "again.err").read_text()
    assert (tmp_path / "again.rc").read_text().strip() == "0", again_err
    assert_exports_equal(tmp_path / "reference", tmp_path / "copied")
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / "copied").rglob("history.parquet"))
    assert rows == EXPECTED_POINTS  # nothing twice
    assert not [p for p in (tmp_path / "copied").rglob("*") if ".tmp" in p.name or ".runferry-probe-" in p.name]
