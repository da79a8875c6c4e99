"""Many small runs -> W&B with the per-project run-creation limit on (UpsertBucket answered 429 +
Retry-After above it): with the limit known (``run_creation_rate``) runs are created paced under
it and never refused; with it unknown runferry rides the refusals out. Either way every point
lands exactly, no run fails, and admission reports the refused endpoint as what the next run
waits on.

Time is a ``ManualClock`` shared by runferry's limiters and the server's one-second windows: it
moves only when the test lets it, so the pause a refusal starts lasts until then.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from adapters.http import HttpClient
from adapters.wandb import _auth, _gql
from core.model import RunRef
from core.protocols import AdapterContext
from engine.config import parse_config
from engine.pipeline import make_context, migrate, open_adapters
from ratelimit import LimiterRegistry, endpoint_of
from tests.engine.test_admission import RecordingProgress, admission_waits

from tests.manual_clock import ManualClock

from .test_pipeline_e2e import check_run_against_source, dest_table, source_points, synthetic_table


async def test_many_small_runs_ride_out_an_unknown_run_creation_limit(server: Any, project: str, tmp_path: Path) -> None:
    clock = ManualClock()
    server.faults.clock = clock.now
    server.faults.run_creation_rps_per_project = 1  # of two runs created at once, one is refused
    source = synthetic_table(runs=12, steps=40, keys=2, file_sizes=[], artifact_sizes=[])
    config = parse_config({
        "source": source,
        # W&B's per-run default; the run-creation limit not known (found from the 429s)
        "destination": dest_table(server, project, filestream_rate=2.0, run_creation_rate=0),
        "transfer": {"ledger": str(tmp_path / "ledger.jsonl")},  # runferry's defaults otherwise
    })
    progress = RecordingProgress(clock.now)
    limiters = LimiterRegistry.from_mapping(config.ratelimit, clock=clock)
    context = dataclasses.replace(make_context(config, progress), limiters=limiters, clock=clock)
    src, dst = open_adapters(config, context)
    graphql = endpoint_of(server.base_url) + _gql.run_creation_key(server.entity, project)  # W&B limits per project
    refused = progress.seen(lambda name, fields: name == "throttle" and fields.get("endpoint") == graphql)
    list_runs = src.list_runs

    async def two_runs_then_the_rest_once_one_was_refused() -> AsyncIterator[RunRef]:
        async with contextlib.aclosing(list_runs()) as refs:
            listed = 0
            async for ref in refs:
                if listed == 2:
                    await refused.wait()
                listed += 1
                yield ref

    src.list_runs = two_runs_then_the_rest_once_one_was_refused  # type: ignore[method-assign]
    reports = []
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:

            async def migrate_then_stop() -> None:
                reports.append(await migrate(config, progress=progress, adapters=(src, dst), limiters=limiters))
                tg.cancel_scope.cancel()

            tg.start_soon(migrate_then_stop)
            await progress.seen(admission_waits("endpoint")).wait()
            # time stands still: the refused endpoint is paused, and that is what the next run waits on
            assert progress.admission.figures()["admission_waits_on"] == f"endpoint {graphql} paused"
            assert f"next run waits on: endpoint {graphql} paused" in progress.status_line()
            tg.start_soon(clock.run)
    (report,) = reports
    totals = progress.totals
    assert (report.exit_code, totals.runs_done, totals.runs_failed, totals.failures) == (0, 12, 0, [])
    assert server.faults.injected["ratelimit:run_create"] >= 1
    assert totals.admission_waits["endpoint"] >= 1
    (stats,) = [s for s in limiters.statistics() if s.endpoint == graphql]
    assert stats.throttles >= 1 and stats.retries >= 1
    expected = await source_points(source)
    assert sorted(r.name for (_, p, _), r in server.state.runs.items() if p == project) == sorted(expected)
    for run_id, rows in expected.items():
        check_run_against_source(server, project, run_id, rows)



async def _migrate_on_a_running_clock(server: Any, project: str, tmp_path: Path, clock: ManualClock, *,
                                      run_creation_rate: float) -> Any:
    """60 one-key runs into a server limiting run creation to 20/s per project, on virtual time
    (one clock for the server's windows and runferry's limiters); returns the migration's totals
    and the run-creation limiter's statistics."""
    server.faults.clock = clock.now
    server.faults.run_creation_rps_per_project = 20
    config = parse_config({
        "source": synthetic_table(runs=60, steps=5, keys=1, file_sizes=[], artifact_sizes=[]),
        "destination": dest_table(server, project, run_creation_rate=run_creation_rate),
        "transfer": {"ledger": str(tmp_path / f"{project}.jsonl")},
    })
    progress = RecordingProgress(clock.now)
    limiters = LimiterRegistry.from_mapping(config.ratelimit, clock=clock)
    context = dataclasses.replace(make_context(config, progress), limiters=limiters, clock=clock)
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.run)
            await migrate(config, progress=progress, adapters=open_adapters(config, context), limiters=limiters)
            tg.cancel_scope.cancel()
    (stats,) = [s for s in limiters.statistics() if "#run-creation/" in s.endpoint]
    return progress.totals, stats


async def test_a_known_run_creation_limit_is_paced_under_from_the_first_run(server: Any, project: str,
                                                                            tmp_path: Path) -> None:
    clock = ManualClock()
    totals, stats = await _migrate_on_a_running_clock(server, project, tmp_path, clock, run_creation_rate=20)
    assert server.faults.injected.get("ratelimit:run_create", 0) == 0
    assert (totals.runs_done, totals.runs_failed, totals.failures) == (60, 0, [])
    assert (stats.successes, stats.throttles, stats.paused_for) == (60, 0, 0)
    assert 19.5 <= stats.rate_limit <= 19.8  # 97.5 % of the limit, climbing to at most 99 %
    source = synthetic_table(runs=60, steps=5, keys=1, file_sizes=[], artifact_sizes=[])
    for run_id, rows in (await source_points(source)).items():
        check_run_against_source(server, project, run_id, rows)
    # the same server with the limit not known: found by refusals (what the declaration saves)
    server.faults.injected.clear()
    _, unknown = await _migrate_on_a_running_clock(server, f"{project}-unknown", tmp_path, clock, run_creation_rate=0)
    assert server.faults.injected["ratelimit:run_create"] >= 1 and unknown.throttles >= 1


async def test_a_refused_run_creation_pauses_only_its_own_project(server: Any, project: str) -> None:
    """W&B limits run creation per project: a 429 for one project pauses that project's
    creations, not another project's, nor any other GraphQL call (the clock stands still, so
    anything that waited for the pause would never finish)."""
    clock = ManualClock()
    server.faults.clock = clock.now
    server.faults.run_creation_rps_per_project = 1
    limiters = LimiterRegistry(clock=clock)
    context = AdapterContext(limiters=limiters)
    hot, quiet = f"{project}-hot", f"{project}-quiet"
    graphql = endpoint_of(server.base_url)

    async def create(in_project: str, run: str) -> None:
        await _gql.call(api, _gql.UPSERT_BUCKET, {"name": run, "entity": server.entity, "project": in_project},
                        name="UpsertBucket", limit_key=_gql.run_creation_key(server.entity, in_project))

    async with HttpClient(base_url=server.base_url, name="wandb", context=context, classify=_gql.classify_graphql,
                          headers=_auth.auth_headers(server.api_key)) as api:
        await create(hot, "first")
        hot_limiter = limiters.get(graphql + _gql.run_creation_key(server.entity, hot))
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(create, hot, "second")  # refused: its project pauses for Retry-After
                while hot_limiter.statistics().throttles == 0:
                    await anyio.sleep(0.01)
                assert hot_limiter.statistics().paused_for > 0
                await create(quiet, "first")
                viewer = await _gql.call(api, _gql.VIEWER, {}, name="Viewer")
                assert viewer["viewer"]
                assert hot_limiter.statistics().successes == 1  # still waiting out the pause
                tg.start_soon(clock.run)
                while hot_limiter.statistics().successes < 2:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    by_endpoint = {s.endpoint: s for s in limiters.statistics()}
    assert by_endpoint[graphql].throttles == 0 and by_endpoint[graphql].rate_limit is None
    quiet_stats = by_endpoint[graphql + _gql.run_creation_key(server.entity, quiet)]
    assert (quiet_stats.successes, quiet_stats.throttles, quiet_stats.rate_limit) == (1, 0, None)
    assert (by_endpoint[hot_limiter.endpoint].successes, by_endpoint[hot_limiter.endpoint].throttles) == (2, 1)
    assert server.faults.injected["ratelimit:run_create"] == 1
    runs = {(p, r.name) for (_, p, _), r in server.state.runs.items() if p in (hot, quiet)}
    assert runs == {(hot, "first"), (hot, "second"), (quiet, "first")}
