"""Run mapping rules and the artifact digest, checked against the official SDK as oracle."""

from __future__ import annotations

import json

import pytest

from adapters.wandb._artifacts import manifest_digest
from adapters.wandb._config import WandbDestinationConfig
from adapters.wandb._mapping import (
    exit_for,
    project_for,
    run_id_for,
    wire_config,
    wire_tags,
)
from core.model import Namespace, RunRecord, RunRef, RunState


def record(**kw) -> RunRecord:
    return RunRecord(ref=RunRef(id=kw.pop("id", "0123abcd"), namespace=Namespace("", "My/Exp#1")), **kw)


def test_run_id_is_deterministic_and_valid() -> None:
    cfg = WandbDestinationConfig()
    assert run_id_for(record(), cfg, "mlflow:http://x") == "0123abcd"
    weird = record(id="a/b:c")
    hashed = run_id_for(weird, cfg, "mlflow:http://x")
    assert hashed == run_id_for(weird, cfg, "mlflow:http://x") and len(hashed) == 32
    assert hashed != run_id_for(weird, cfg, "mlflow:http://y")
    assert run_id_for(record(), WandbDestinationConfig(run_id="hash"), "u") != "0123abcd"


def test_project_template_and_forbidden_characters() -> None:
    assert project_for(record(), WandbDestinationConfig()) == "My_Exp_1"
    assert project_for(record(), WandbDestinationConfig(project="imported-{experiment}")) == "imported-My_Exp_1"


def test_config_wire_format_keeps_nesting_tags_and_source() -> None:
    rec = record(config={"lr": "0.1", "opt": {"name": "adam", "betas": [0.9, 0.99]}},
                 tags={"team": "vision", "mlflow.user": "ann"}, system={"source": "mlflow", "uri": "http://m"},
                 start_time=1700000000.5)
    wire = wire_config(rec, "0123abcd")
    assert wire["lr"] == {"value": "0.1"}
    assert wire["opt"] == {"value": {"name": "adam", "betas": [0.9, 0.99]}}
    assert wire["source_tags"] == {"value": {"team": "vision", "mlflow.user": "ann"}}
    assert wire["runferry_source"]["value"] == {"source": "mlflow", "uri": "http://m", "run_id": "0123abcd", "namespace": "My/Exp#1"}
    assert wire["_wandb"]["value"]["start_time"] == 1700000000500


def test_tags_within_limits_long_ones_kept_in_config() -> None:
    long_label = "x" * 65
    rec = record(labels=["ok", long_label], tags={"k": "v", "mlflow.source.name": "train.py", "long": "y" * 80})
    assert wire_tags(rec) == ["ok", "k:v"]
    assert wire_config(rec, "r")["source_labels"] == {"value": ["ok", long_label]}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (RunState.FINISHED, (True, 0, None)),
        (RunState.FAILED, (True, 1, None)),
        (RunState.KILLED, (True, 255, "killed")),
        (RunState.CRASHED, (True, 1, "crashed")),
        (RunState.RUNNING, (False, None, None)),
    ],
)
def test_exit_mapping(state: RunState, expected: tuple) -> None:
    assert exit_for(state) == expected


def test_manifest_digest_matches_the_sdk(tmp_path) -> None:
    from wandb.sdk.artifacts._generated import ArtifactDigestAlgorithm
    from wandb.sdk.artifacts.artifact_manifest_entry import ArtifactManifestEntry
    from wandb.sdk.artifacts.artifact_manifests.artifact_manifest_v1 import (
        ArtifactManifestV1,
    )

    entries = {"b/x.bin": "1B2M2Y8AsgTpgAmY7PhCfg==", "a.txt": "XrY7u+Ae7tCTyyK7j1rNww==", "z/é": "rL0Y20zC+Fzt72VPzMSk2A=="}
    manifest = ArtifactManifestV1(digest_algorithm=ArtifactDigestAlgorithm.MANIFEST_MD5)
    for path, digest in entries.items():
        manifest.entries[path] = ArtifactManifestEntry(path=path, digest=digest, size=1)
    assert manifest_digest(entries) == manifest.digest()
    json.dumps(manifest.to_manifest_json())
