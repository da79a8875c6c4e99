"""W&B -> W&B through the engine: runs the official SDK wrote into one server are migrated into
another entity and project on a second server, and ``wandb.Api()`` reads the same config (with
metric definitions), summary, every history row with its ``_step`` and ``_timestamp``, system
metrics, console log and files on the other side. A second migration moves nothing."""

from __future__ import annotations

import copy

import pytest

from engine.config import parse_config
from engine.pipeline import migrate
from tests.servers.wandb import start_wandb_server
from tests.wandb_source.conftest import ENTITY, KEY_ENV, OTHER_ENTITY
from tests.wandb_source.oracle import dump, sdk_view

DEST_KEY = "d" * 40
DEST_KEY_ENV = "RUNFERRY_TEST_WANDB_DEST_KEY"
NEW = "newteam"
MOVES = {  # source run path -> destination run path
    f"{ENTITY}/alpha/rich": f"{NEW}/alpha/rich",
    f"{ENTITY}/alpha/failed": f"{NEW}/alpha/failed",
    f"{ENTITY}/alpha/resumed": f"{NEW}/alpha/resumed",
    **{f"{ENTITY}/beta/grid{i:02d}": f"{NEW}/beta/grid{i:02d}" for i in range(6)},
    f"{OTHER_ENTITY}/gamma/other": f"{NEW}/gamma-moved/other",
}


@pytest.fixture(scope="module")
def destination_server():
    with start_wandb_server(keys={DEST_KEY: [NEW]}) as server:
        yield server


def _config(source, destination, ledger) -> object:
    return parse_config({
        "source": {"type": "wandb", "base_url": source.base_url, "api_key_env": KEY_ENV, "namespaces": ["*/*"]},
        "destination": {"type": "wandb", "base_url": destination.base_url, "api_key_env": DEST_KEY_ENV,
                        "filestream_rate": 1000.0},
        "transfer": {"ledger": str(ledger)},
        "remap": [{"from": f"{OTHER_ENTITY}/gamma", "to": f"{NEW}/gamma-moved"}, {"from": f"{ENTITY}/*", "to": f"{NEW}/*"}],
    })


@pytest.fixture(scope="module")
def migrated(sdk_dataset, destination_server, tmp_path_factory):
    import os

    import anyio

    os.environ[KEY_ENV], os.environ[DEST_KEY_ENV] = sdk_dataset.api_key, DEST_KEY
    config = _config(sdk_dataset, destination_server, tmp_path_factory.mktemp("w2w") / "ledger.jsonl")
    try:
        first = anyio.run(migrate, config)
        second = anyio.run(migrate, config)
    finally:
        os.environ.pop(KEY_ENV, None)
    return first, second, config


@pytest.fixture(scope="module")
def destination_api(destination_server, tmp_path_factory):
    import wandb

    cache = tmp_path_factory.mktemp("wandb-api-dst")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"WANDB_CACHE_DIR": cache / "cache", "WANDB_CONFIG_DIR": cache / "config",
                           "WANDB_DATA_DIR": cache / "data", "WANDB_SILENT": "true"}.items():
            patch.setenv(key, str(value))
        yield wandb.Api(api_key=DEST_KEY, overrides={"base_url": destination_server.base_url}, timeout=30)


def test_every_run_migrated_once_and_a_second_migration_moves_nothing(migrated):
    first, second, _ = migrated
    assert first.exit_code == 0, first.progress.totals.failures
    assert first.progress.totals.runs_done == len(MOVES)
    t = second.progress.totals
    assert (t.runs_done, t.runs_skipped, t.points, t.files) == (0, len(MOVES), 0, 0)


@pytest.mark.parametrize("path", list(MOVES))
def test_the_destination_reads_like_the_source(migrated, public_api, destination_api, path):
    src, dst = sdk_view(public_api, path), sdk_view(destination_api, MOVES[path])
    assert [dump(r) for r in dst["rows"]] == [dump(r) for r in src["rows"]]
    assert [dump(line) for line in dst["system"]] == [dump(line) for line in src["system"]]
    config = copy.deepcopy(dst["config"])
    provenance = config["_wandb"].pop("runferry_source")
    assert provenance["run_id"] == path.rsplit("/", 1)[1] and provenance["source"] == "wandb"
    times = config["_wandb"].pop("runferry_times")  # W&B sets created time itself: the original is kept here
    assert times["start_time"] == src["created"]
    assert dump(config) == dump(src["config"])  # metric definitions (_wandb.m) included
    assert dump(dst["summary"]) == dump(src["summary"])
    for key in ("tags", "notes", "group", "job_type", "state", "name"):
        assert dst[key] == src[key], key
    assert dst["files"].keys() == src["files"].keys()
    for name, data in src["files"].items():
        assert dst["files"][name] == data, name


def test_console_lines_and_metric_definitions_arrive(migrated, public_api, destination_api):
    path = f"{ENTITY}/alpha/rich"
    src, dst = public_api.run(path), destination_api.run(MOVES[path])
    assert [m for m in dst.rawconfig["_wandb"]["m"]] == [m for m in src.rawconfig["_wandb"]["m"]]
    assert b"hello from the rich run" in sdk_view(destination_api, MOVES[path])["files"]["output.log"]


def test_verify_reads_the_destination_back_and_finds_every_run_identical(migrated, sdk_dataset, monkeypatch):
    import io

    import anyio

    from engine.verify import verify

    monkeypatch.setenv(KEY_ENV, sdk_dataset.api_key)
    monkeypatch.setenv(DEST_KEY_ENV, DEST_KEY)
    out = io.StringIO()
    report = anyio.run(verify, migrated[2], out)
    assert (report.matched, report.mismatched, report.not_migrated) == (len(MOVES), [], []), out.getvalue()
