"""``WandbImporter`` with W&B's importer calls: ``import_all`` copies artifact sequences, runs
(with lineage) and reports into a remapped namespace on another server; a second call is a
no-op for runs."""

from __future__ import annotations

import json
import os

import anyio

from adapters.wandb import _gql
from adapters.wandb._reports import UPSERT_VIEW
from engine.importers import Namespace, WandbImporter
from tests.servers.wandb import start_wandb_server

from .conftest import clients
from .test_reports import spec_for

DEST_KEY = "c" * 40


def test_import_all_like_wandbs_importer(wandb_server, artifact_dataset, public_api, tmp_path):
    import wandb

    entity, project, other = artifact_dataset.entity, artifact_dataset.project, artifact_dataset.other

    async def add_report() -> None:
        async with clients(wandb_server) as (api, _):
            await _gql.call(api, UPSERT_VIEW, {
                "entityName": entity, "projectName": project, "type": "runs", "name": "importer-report",
                "displayName": "Importer report", "description": "", "spec": json.dumps(spec_for(entity, project))},
                name="upsertView")

    anyio.run(add_report)
    with start_wandb_server(keys={DEST_KEY: ["imported"]}) as dest:
        importer = WandbImporter(src_base_url=wandb_server.base_url, src_api_key=wandb_server.api_key,
                                 dst_base_url=dest.base_url, dst_api_key=DEST_KEY,
                                 ledger=str(tmp_path / "ledger.jsonl"), filestream_rate=1000.0)
        remapping = {Namespace(entity, project): Namespace("imported", "arts"),
                     Namespace(entity, other): Namespace("imported", "users")}
        namespaces = list(remapping)
        report = importer.import_all(namespaces=namespaces, remapping=remapping)
        assert report is not None and report.exit_code == 0, report.progress.totals.failures
        again = importer.import_runs(namespaces, remapping)
        assert (again.progress.totals.runs_done, again.progress.totals.points) == (0, 0)

        os.environ["WANDB_CACHE_DIR"] = str(tmp_path / "cache")
        dst = wandb.Api(api_key=DEST_KEY, overrides={"base_url": dest.base_url}, timeout=30)
        src_versions = sorted((a.name, a.digest) for a in public_api.artifacts("dataset", f"{entity}/{project}/data"))
        dst_versions = sorted((a.name, a.digest) for a in dst.artifacts("dataset", "imported/arts/data"))
        assert dst_versions == src_versions and len(src_versions) == 3
        assert sorted(r.id for r in dst.runs("imported/arts")) == sorted(r.id for r in public_api.runs(f"{entity}/{project}"))
        [used] = dst.run("imported/users/user").used_artifacts()
        assert (used.name, used.digest) == ("data:v1", dst.artifact("imported/arts/data:v1").digest)
        [copy] = dst.reports("imported/arts")
        assert copy.display_name == "Importer report" and copy.spec == spec_for("imported", "arts")
