"""One listing of an experiment's proxied root instead of one artifact listing per run without
files (``adapters/mlflow/_run_dirs``): the files are exactly what ``MlflowClient`` lists, and
the tracking server sees exactly the requests the rule predicts (counted by a proxy in front)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow import MlflowSource
from adapters.mlflow._client import MlflowRest, proxied_root
from adapters.mlflow._config import resolve_connection
from adapters.mlflow._run_dirs import SKEW_MARGIN, RunsWithArtifacts
from core.model import RunRecord
from tests.adapters.contract import all_files, all_refs
from tests.mlflow.fault_proxy import Answer, FaultProxy
from tests.mlflow.helpers import Events, context, quick_recovery, source_config
from tests.mlflow.seed import T0, blob
from tests.servers.mlflow_server import MlflowServer

PROXY_LIST = "/api/2.0/mlflow-artifacts/artifacts"
RUN_LIST = "/api/2.0/mlflow/artifacts/list"
ENDED_LONG_AGO = T0 + 60_000  # ms, 2023: long before any listing a test takes
NESTED = {"empty.txt": b"", "a/top.txt": b"top\n", "a/b/c/deep.bin": blob(5_000, 7)}


@dataclass
class Sweep:
    """Runs of a sweep by role; ``proxied`` roles live in experiments served by the proxy."""

    experiments: list[str] = field(default_factory=list)  # names
    roots: list[str] = field(default_factory=list)  # proxied roots of the proxied experiments
    runs: dict[str, str] = field(default_factory=dict)  # role -> run id
    experiment_of: dict[str, str] = field(default_factory=dict)  # role -> experiment id


def _log(client: MlflowClient, run_id: str, files: dict[str, bytes], tmp: Path) -> None:
    folder = tmp / uuid.uuid4().hex
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    client.log_artifacts(run_id, str(folder))


def seed_sweep(client: MlflowClient, tmp: Path) -> Sweep:
    """A default-rooted experiment, one with a custom proxied root and one whose root is a
    plain path on the server (not proxied), each with finished runs with and without files."""
    tag = uuid.uuid4().hex[:8]
    sweep = Sweep()
    default = client.create_experiment(f"sweep-{tag}")
    custom = client.create_experiment(f"sweep-custom-{tag}", artifact_location=f"mlflow-artifacts:/custom/sweep-{tag}")
    elsewhere = client.create_experiment(f"sweep-elsewhere-{tag}", artifact_location=(tmp / "elsewhere").as_uri())
    for ident in (default, custom, elsewhere):
        experiment = client.get_experiment(ident)
        sweep.experiments.append(experiment.name)
        root = proxied_root(experiment.artifact_location)
        if root is not None:
            sweep.roots.append(root)
    plan = [  # role, experiment, status, end time (ms), files
        ("nested", default, "FINISHED", ENDED_LONG_AGO, NESTED),
        ("one file", default, "FAILED", ENDED_LONG_AGO, {"log.txt": b"x"}),
        ("none finished", default, "FINISHED", ENDED_LONG_AGO, {}),
        ("none failed", default, "FAILED", ENDED_LONG_AGO, {}),
        ("none killed", default, "KILLED", ENDED_LONG_AGO, {}),
        ("ends after the listing", default, "FINISHED", int(time.time() * 1000) + 3_600_000, {}),
        ("custom nested", custom, "FINISHED", ENDED_LONG_AGO, NESTED),
        ("custom none", custom, "FINISHED", ENDED_LONG_AGO, {}),
        ("elsewhere file", elsewhere, "FINISHED", ENDED_LONG_AGO, {"d/f.txt": b"f"}),
        ("elsewhere none", elsewhere, "FINISHED", ENDED_LONG_AGO, {}),
    ]
    for index, (role, experiment_id, status, end_ms, files) in enumerate(plan):
        run_id = client.create_run(experiment_id, start_time=T0 + index, run_name=role).info.run_id
        if files:
            _log(client, run_id, files, tmp)
        client.set_terminated(run_id, status, end_time=end_ms)
        sweep.runs[role] = run_id
        sweep.experiment_of[role] = experiment_id
    return sweep


@pytest.fixture(scope="module")
def sweep(source_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    return seed_sweep(MlflowClient(source_server.url), tmp_path_factory.mktemp("sweep"))


@pytest.fixture
def proxy(source_server: MlflowServer) -> Iterator[FaultProxy]:
    front = FaultProxy(source_server.url).start()
    try:
        yield front
    finally:
        front.stop()


def oracle(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    """The run's files and sizes, walked with the official client."""
    out: dict[str, int] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out.update(oracle(client, run_id, info.path))
        else:
            out[info.path] = info.file_size or 0
    return out


def folders(files: dict[str, int]) -> list[str]:
    """The directories a walk lists: the root and every parent of a file."""
    out = {""}
    for path in files:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(out)


def expected_requests(
    records: dict[str, RunRecord], trees: dict[str, dict[str, int]], skipped: set[str]
) -> tuple[Counter[str], Counter[str]]:
    """The proxy's ``path`` parameters and ``artifacts/list``'s run ids a walk of every run
    but ``skipped`` asks for."""
    proxied: Counter[str] = Counter()
    by_run: Counter[str] = Counter()
    for role, record in records.items():
        if role in skipped:
            continue
        root = proxied_root(str(record.system["artifact_uri"]))
        for folder in folders(trees[role]):
            if root is None:
                by_run[record.ref.id] += 1
            else:
                proxied[f"{root}/{folder}" if folder else root] += 1
    return proxied, by_run


async def _records(source: MlflowSource, sweep: Sweep) -> dict[str, RunRecord]:
    role_of = {run_id: role for role, run_id in sweep.runs.items()}
    return {role_of[ref.id]: await source.get_run(ref) for ref in await all_refs(source) if ref.id in role_of}


async def _walk_together(source: MlflowSource, records: dict[str, RunRecord]) -> dict[str, dict[str, int]]:
    """Every run's files, all runs asking at the same moment."""
    found: dict[str, dict[str, int]] = {}

    async def walk(role: str, record: RunRecord) -> None:
        found[role] = {f.path: f.size or 0 for f in await all_files(source, record)}

    async with anyio.create_task_group() as tg:
        for role, record in records.items():
            tg.start_soon(walk, role, record)
    return found


async def test_runs_without_a_directory_are_not_asked(
    source_server: MlflowServer, sweep: Sweep, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Finished runs the experiment's listing shows without a directory cost no request; the
    rest are walked as before, an active run that logs a file after the listing included."""
    client = MlflowClient(source_server.url)
    default = sweep.experiment_of["nested"]
    active = client.create_run(default, start_time=T0 + 100, run_name="active").info.run_id
    resumed = client.create_run(default, start_time=T0 + 101, run_name="resumed").info.run_id
    client.set_terminated(resumed, "FINISHED", end_time=ENDED_LONG_AGO)
    client.update_run(resumed, "RUNNING")  # what mlflow.start_run(run_id=...) does: the old end time stays
    assert client.get_run(resumed).info.end_time == ENDED_LONG_AGO
    roles = {**sweep.runs, "active": active, "resumed": resumed}
    async with MlflowSource(source_config(proxy.url, experiments=sweep.experiments), context()) as source:
        records = await _records(source, dataclasses.replace(sweep, runs=roles))
        assert set(records) == set(roles)
        late = ("active", "resumed")
        proxy.reset()
        found = await _walk_together(source, {role: record for role, record in records.items() if role not in late})
        assert proxy.asked(PROXY_LIST, "path").count(sweep.roots[0]) == 1  # one listing, however many asked
        for role in late:  # active runs log files after the listing was taken
            _log(client, roles[role], {"late/found.txt": b"logged after the listing"}, tmp_path)
            found[role] = {f.path: f.size or 0 for f in await all_files(source, records[role])}
    trees = {role: oracle(client, run_id) for role, run_id in roles.items()}
    assert found == trees
    assert trees["nested"] == {k: len(v) for k, v in NESTED.items()} and trees["active"] == trees["resumed"] == {"late/found.txt": 24}
    skipped = {"none finished", "none failed", "none killed", "custom none"}
    proxied, by_run = expected_requests(records, trees, skipped)
    proxied.update(sweep.roots)  # the experiments' listings, once each
    assert Counter(proxy.asked(PROXY_LIST, "path")) == proxied
    assert Counter(proxy.asked(RUN_LIST, "run_id")) == by_run == Counter(
        {sweep.runs["elsewhere file"]: 2, sweep.runs["elsewhere none"]: 1}
    )


async def _walk_in_turn(source: MlflowSource, records: dict[str, RunRecord], first: str) -> dict[str, dict[str, int]]:
    """Every run's files, one run after the other, ``first`` first."""
    found: dict[str, dict[str, int]] = {}
    for role in [first, *(r for r in records if r != first)]:
        found[role] = {f.path: f.size or 0 for f in await all_files(source, records[role])}
    return found


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_a_refused_experiment_listing_falls_back_to_every_run(
    source_server: MlflowServer, sweep: Sweep, proxy: FaultProxy, status: int
) -> None:
    """The server refuses the experiment's listing: every run is walked on its own, the same
    files, and the listing is not asked again."""
    client = MlflowClient(source_server.url)
    events = Events()
    async with MlflowSource(source_config(proxy.url, experiments=sweep.experiments[:1]), context(events=events)) as source:
        records = await _records(source, sweep)
        proxy.reset()
        proxy.fail(PROXY_LIST, Answer(status))  # the first listing asked is the experiment's
        found = await _walk_in_turn(source, records, first="none finished")
    assert proxy.pending() == 0
    trees = {role: oracle(client, sweep.runs[role]) for role in records}
    assert found == trees
    proxied, _ = expected_requests(records, trees, skipped=set())
    proxied.update(sweep.roots[:1])  # asked once, refused, never asked again
    assert Counter(proxy.asked(PROXY_LIST, "path")) == proxied
    assert events.named("mlflow_experiment_listing_refused") == [
        {"experiment": sweep.experiment_of["nested"], "error": {400: "FatalError", 403: "AuthError", 404: "NotFoundError"}[status]}
    ]


async def test_a_transient_failure_of_the_listing_is_retried(
    source_server: MlflowServer, sweep: Sweep, proxy: FaultProxy
) -> None:
    client = MlflowClient(source_server.url)
    cfg = source_config(proxy.url, experiments=sweep.experiments[:1])
    async with MlflowSource(cfg, context(limiters=quick_recovery())) as source:
        records = await _records(source, sweep)
        proxy.reset()
        proxy.fail(PROXY_LIST, Answer(503))
        found = await _walk_in_turn(source, records, first="none finished")
    trees = {role: oracle(client, sweep.runs[role]) for role in records}
    assert found == trees
    proxied, _ = expected_requests(records, trees, skipped={"none finished", "none failed", "none killed"})
    proxied.update(sweep.roots[:1] * 2)  # refused once (503), answered the second time
    assert Counter(proxy.asked(PROXY_LIST, "path")) == proxied


async def test_only_runs_that_ended_a_margin_before_the_listing_are_judged_by_it(
    source_server: MlflowServer, sweep: Sweep, proxy: FaultProxy
) -> None:
    """The listing is taken at wall time L (an injected clock): a run without a directory is
    skipped when it ended more than the margin before L, and asked otherwise."""
    async with MlflowSource(source_config(proxy.url, experiments=sweep.experiments[:1]), context()) as source:
        record = (await _records(source, sweep))["none finished"]
        experiments = source.experiments
    assert record.end_time == ENDED_LONG_AGO / 1000
    ended = record.end_time
    connection = resolve_connection(proxy.url, username_env="", password_env="", token_env="", where="test")
    async with MlflowRest(connection, name="test", context=context(), timeout=30) as rest:
        now = [ended + SKEW_MARGIN]
        runs = RunsWithArtifacts(rest, experiments, events=Events(), wall_clock=lambda: now[0])
        proxy.reset()
        assert not await runs.surely_empty(record)  # ended exactly a margin ago: not judged
        assert proxy.asked(PROXY_LIST, "path") == []  # ... and no listing taken for it
        now[0] += 1
        assert await runs.surely_empty(record)  # listing taken at ended + margin + 1
        later = dataclasses.replace(record, end_time=ended + 1)  # ended at the listing, less the margin
        now[0] += 3600
        assert not await runs.surely_empty(later)
        assert await runs.surely_empty(dataclasses.replace(record, end_time=ended + 0.5))
        assert proxy.asked(PROXY_LIST, "path") == sweep.roots[:1]
