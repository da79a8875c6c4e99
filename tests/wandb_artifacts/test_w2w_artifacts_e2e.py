"""W&B -> W&B through the engine with artifacts: every version the SDK logged arrives at the
other server in the same order, with its aliases, description, metadata, digest and bytes, and
a run that used a version of another project uses the copied version there (lineage kept)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anyio
import pytest

from engine.config import parse_config
from engine.pipeline import migrate
from tests.servers.wandb import start_wandb_server

DEST_KEY = "f" * 40
NEW = "moved"


def _artifacts(api, path: str) -> list[tuple]:
    """(name, version, type, aliases, description, metadata, digest, {path: bytes}) of every
    artifact a run logged, as ``wandb.Api()`` reads it."""
    out = []
    for art in api.run(path).logged_artifacts():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(art.download(root=tmp))
            files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        aliases = sorted(a for a in art.aliases if a != "latest")
        out.append((art.name.split(":")[0], art.version, art.type, aliases, art.description,
                    dict(art.metadata), art.digest, files))
    return sorted(out, key=lambda item: (item[0], int(item[1][1:])))


@pytest.fixture
def dest_server():
    with start_wandb_server(keys={DEST_KEY: [NEW]}) as server:
        yield server


async def test_artifacts_and_lineage_arrive_exactly(wandb_server, artifact_dataset, public_api, dest_server,
                                                    tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("RUNFERRY_TEST_ART_SRC", wandb_server.api_key)
    monkeypatch.setenv("RUNFERRY_TEST_ART_DST", DEST_KEY)
    entity, project, other = artifact_dataset.entity, artifact_dataset.project, artifact_dataset.other
    config = parse_config({
        "source": {"type": "wandb", "base_url": wandb_server.base_url, "api_key_env": "RUNFERRY_TEST_ART_SRC",
                   "namespaces": [f"{entity}/{project}", f"{entity}/{other}"]},
        "destination": {"type": "wandb", "base_url": dest_server.base_url, "api_key_env": "RUNFERRY_TEST_ART_DST",
                        "filestream_rate": 1000.0},
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "runs_concurrency": 4},
        "remap": [{"from": f"{entity}/*", "to": f"{NEW}/*"}],
    })
    report = await migrate(config)
    assert report.exit_code == 0, report.progress.totals.failures

    os.environ["WANDB_CACHE_DIR"] = str(tmp_path / "cache")
    dst_api = wandb.Api(api_key=DEST_KEY, overrides={"base_url": dest_server.base_url}, timeout=30)
    for run in ("logger-a", "logger-b"):
        src = await anyio.to_thread.run_sync(_artifacts, public_api, f"{entity}/{project}/{run}")
        dst = await anyio.to_thread.run_sync(_artifacts, dst_api, f"{NEW}/{project}/{run}")
        assert src and dst == src, run  # each collection's versions in order
    used_src = [(a.name, a.digest) for a in public_api.run(f"{entity}/{other}/user").used_artifacts()]
    used_dst = [(a.name, a.digest) for a in dst_api.run(f"{NEW}/{other}/user").used_artifacts()]
    assert used_src == [("data:v1", used_src[0][1])] and used_dst == used_src
    assert dst_api.artifact(f"{NEW}/{project}/data:v1").digest == used_src[0][1]
