"""Which runs the W&B source reads: filters, order and paging as ``wandb.Api().runs()``,
namespaces, a run repeated across pages, and the errors a bad selection gets."""

from __future__ import annotations

import json

import pytest

from core.errors import AuthError, ConfigError
from tests.servers.wandb._state import Run, node_id
from tests.wandb_source.conftest import ENTITY, OTHER_ENTITY, collect, make_source

CASES = [
    ({}, "+created_at", 50),
    ({"state": "failed"}, "+created_at", 2),
    ({"state": {"$eq": "finished"}}, "-created_at", 3),
    ({"state": {"$ne": "finished"}}, "+created_at", 1),
    ({"name": {"$in": ["grid01", "grid03", "nope"]}}, "+name", 1),
    ({"name": {"$nin": ["grid01", "grid03"]}}, "-name", 4),
    ({"displayName": {"$regex": "^Grid [2-4]$"}}, "+created_at", 2),
    ({"tags": "even"}, "-created_at", 2),
    ({"tags": {"$in": ["odd"]}}, "+created_at", 5),
    ({"group": "g-odd", "jobType": "train"}, "+created_at", 1),
    ({"jobType": {"$ne": "train"}}, "+created_at", 3),
    ({"config.lr": {"$gt": 0.05}}, "+config.lr.value", 2),
    ({"config.lr.value": {"$gte": 0.05, "$lte": 0.2}}, "-config.lr.value", 2),
    ({"config.opt": {"$exists": True}, "config.index": {"$lt": 3}}, "+created_at", 1),
    ({"config.missing": {"$exists": False}}, "+created_at", 10),
    ({"summary_metrics.acc": {"$gte": 0.7}}, "-summary_metrics.acc", 1),
    ({"$and": [{"tags": "grid"}, {"$not": {"tags": "even"}}]}, "+created_at", 2),
    ({"$or": [{"name": "grid00"}, {"config.lr": {"$lt": 0.01}}]}, "-created_at", 1),
    ({"$nor": [{"tags": "even"}, {"state": "failed"}]}, "+created_at", 2),
    ({"createdAt": {"$gte": "2000-01-01T00:00:00"}, "name": {"$regex": "grid0[15]"}}, "+created_at", 1),
    ({"createdAt": {"$lt": "2000-01-01T00:00:00Z"}}, "+created_at", 3),
    ({"state": {"$not": {"$eq": "failed"}}}, "+summary_metrics.acc", 4),
]


@pytest.mark.parametrize(("filters", "order", "per_page"), CASES)
async def test_selection_equals_public_api_runs(sdk_dataset, public_api, key_env, filters, order, per_page):
    expected = []
    for project in ("alpha", "beta"):
        runs = public_api.runs(f"{ENTITY}/{project}", filters=filters, order=order, per_page=per_page)
        expected += [f"{ENTITY}/{project}/{run.id}" for run in runs]
    config = {"namespaces": [f"{ENTITY}/alpha", f"{ENTITY}/beta"], "order": order, "per_page": per_page}
    if filters:
        config["filters"] = json.dumps(filters)
    async with make_source(sdk_dataset, **config) as source:
        got = [ref.id for ref in await collect(source.list_runs())]
    assert got == expected
    sent = sdk_dataset.state.last_variables["Runs"]
    assert sent["filters"] == json.dumps(filters) and sent["order"] == order and sent["perPage"] == per_page


@pytest.mark.parametrize(
    ("namespaces", "expected"),
    [
        ([], [f"{ENTITY}/alpha", f"{ENTITY}/beta"]),
        ([f"{ENTITY}/*"], [f"{ENTITY}/alpha", f"{ENTITY}/beta"]),
        (["*/g*"], [f"{OTHER_ENTITY}/gamma"]),
        ([f"{OTHER_ENTITY}/gamma", f"{ENTITY}/b*", f"{ENTITY}/beta"], [f"{OTHER_ENTITY}/gamma", f"{ENTITY}/beta"]),
        (["*/*"], [f"{ENTITY}/alpha", f"{ENTITY}/beta", f"{OTHER_ENTITY}/gamma"]),
        ([f"{ENTITY}/nothing*"], []),
    ],
)
async def test_namespaces(sdk_dataset, key_env, namespaces, expected):
    async with make_source(sdk_dataset, namespaces=namespaces) as source:
        assert [str(ns) for ns in source.namespaces] == expected


async def test_missing_project_is_a_config_error(sdk_dataset, key_env):
    with pytest.raises(ConfigError, match=f"'{ENTITY}/nope' does not exist"):
        async with make_source(sdk_dataset, namespaces=[f"{ENTITY}/nope"]):
            pass
    with pytest.raises(ConfigError, match="may not read entity 'stranger'"):
        async with make_source(sdk_dataset, namespaces=["stranger/x"]):
            pass


async def test_rejected_key_is_an_auth_error_without_the_key(sdk_dataset, monkeypatch, key_env):
    monkeypatch.setenv(key_env, "9" * 40)
    with pytest.raises(AuthError) as caught:
        async with make_source(sdk_dataset):
            pass
    message = str(caught.value)
    assert sdk_dataset.base_url in message and key_env in message and "9" * 40 not in message


def test_invalid_filters_fail_at_config_time(key_env):
    from engine.config import parse_config

    table = {"source": {"type": "wandb", "filters": "{state: finished}", "api_key_env": key_env},
             "destination": {"type": "local", "path": "/tmp/x"}}
    with pytest.raises(ConfigError, match="filters is not valid JSON"):
        parse_config(table)


async def test_a_run_repeated_across_pages_is_read_once(sdk_dataset, key_env):
    """A run created while paging with ``order = -created_at`` pushes every run one place down,
    so the server's next page starts with the last run of the previous one (what W&B does
    under concurrent writes, issue wandb#6614); the source yields it once."""
    state = sdk_dataset.state
    entity, project = ENTITY, "paging"

    def add_run(name: str) -> None:
        with state.lock:
            run = Run(entity=entity, project=project, name=name, storage_id=node_id("Run", name, project, entity),
                      seq=state.next_seq(), created_at=state.clock(), heartbeat_at=state.clock(), state="finished")
            state.runs[(entity, project, name)] = run
            state.runs_by_id[run.storage_id] = run
            state.projects.add((entity, project))

    for i in range(5):
        add_run(f"p{i}")
    seen_events = []
    try:
        async with make_source(sdk_dataset, namespaces=[f"{entity}/{project}"], per_page=2, order="-created_at",
                               events=lambda name, **f: seen_events.append((name, f))) as source:
            got = []
            async for ref in source.list_runs():
                got.append(ref.run_id)
                if len(got) == 1:
                    add_run("late")
        assert got == ["p4", "p3", "p2", "p1", "p0"]
        assert ("duplicate_run", {"run": f"{entity}/{project}/p3"}) in seen_events
    finally:
        with state.lock:
            for key in [k for k in state.runs if k[:2] == (entity, project)]:
                run = state.runs.pop(key)
                state.runs_by_id.pop(run.storage_id, None)
            state.projects.discard((entity, project))
