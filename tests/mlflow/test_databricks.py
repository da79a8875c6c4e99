"""``tracking_uri = "databricks"`` against a loopback workspace (``DatabricksFront``) in front of
the real source server: bearer auth, no ajax-api (paged get-history), paged ``artifacts/list``,
``dbfs:/databricks/mlflow-tracking`` artifact roots read through ``credentials-for-read`` and
signed URLs. The official ``MlflowClient`` on the real server is the oracle."""

from __future__ import annotations

import os

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mlflow.tracking import MlflowClient

from adapters.local import LocalSource
from adapters.mlflow import MlflowSource
from engine.config import parse_config
from core.errors import FatalError
from engine.pipeline import migrate
from engine.progress import Progress
from tests.adapters.contract import all_files, all_refs, read_bytes, read_history
from tests.mlflow.helpers import Events, artifact_tree, assert_same_run, context, dest_run_for, history, quick_recovery, source_config
from tests.mlflow.seed import ARTIFACT_FILES, Seeded, float_bits
from tests.mlflow.test_engine import cli, write_toml
from tests.servers.databricks_front import REQUIRED_HEADER, Answer, DatabricksFront, request_limit_exceeded
from tests.servers.mlflow_server import MlflowServer

TOKEN = "dapi-test-0123456789abcdef-secret"


@pytest.fixture
def front(source_server: MlflowServer) -> Iterator[DatabricksFront]:
    server = DatabricksFront(source_server.url, TOKEN, list_page_size=2).start()
    yield server
    server.stop()


@pytest.fixture
def workspace_env(front: DatabricksFront, monkeypatch: pytest.MonkeyPatch) -> DatabricksFront:
    monkeypatch.setenv("DATABRICKS_HOST", front.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    return front


def signed_gets(front: DatabricksFront) -> list[tuple[str, str, bool]]:
    return [r for r in front.requests if r[1].startswith("/signed/")]


def assert_workspace_traffic(front: DatabricksFront, files: int) -> None:
    """What a workspace saw: bulk history asked once and refused, listings paged, one credential
    and one signed GET per file, never the token on a signed GET, never the OSS artifact proxy."""
    assert front.count("/ajax-api/") >= 1
    assert front.count("/api/2.0/mlflow-artifacts/") == 0 and front.count("/get-artifact") == 0
    assert front.count("metrics/get-history") > 0
    assert front.count("artifacts/credentials-for-read") == files
    gets = signed_gets(front)
    assert len(gets) == files and not any(carried for _, _, carried in gets)
    assert all(carried for _, path, carried in front.requests if path.startswith("/api/"))
    assert front.list_pages_followed >= 2  # the run root holds 5 entries, the front answers 2 a page


# -- the front itself, checked against the official client and raw requests ---------------------------
def test_the_official_client_reads_the_front_like_a_workspace(
    workspace_env: DatabricksFront, seeded: Seeded, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MLflow's own DatabricksArtifactRepository (credentials-for-read, signed GETs with the
    credential headers, paged listing) gets every artifact byte through the front."""
    monkeypatch.setenv("MLFLOW_DISABLE_DATABRICKS_SDK_FOR_RUN_ARTIFACTS", "true")  # not the Files API
    edge = seeded.runs["edge"]
    run = MlflowClient("databricks").get_run(edge)
    assert run.info.artifact_uri == f"dbfs:/databricks/mlflow-tracking/{run.info.experiment_id}/{edge}/artifacts"
    assert artifact_tree("databricks", edge, tmp_path / "official") == ARTIFACT_FILES
    assert len(signed_gets(workspace_env)) == len(ARTIFACT_FILES)
    assert not any(carried for _, _, carried in signed_gets(workspace_env))


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return orjson.loads(answer.read())


def test_the_front_checks_tokens_and_signatures(front: DatabricksFront, seeded: Seeded) -> None:
    search = f"{front.url}/api/2.0/mlflow/experiments/search?max_results=1"
    status, body = _get(search)
    assert status == 401 and orjson.loads(body)["error_code"] == "UNAUTHENTICATED"
    status, body = _get(search, {"Authorization": "Bearer nope"})
    assert status == 403 and orjson.loads(body)["error_code"] == "PERMISSION_DENIED"
    assert _get(search, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert _get(f"{front.url}/ajax-api/2.0/mlflow/metrics/get-history-bulk?run_id=x&metric_key=y", bearer)[0] == 404

    answer = _post(f"{front.url}/api/2.0/mlflow/artifacts/credentials-for-read", {"run_id": seeded.runs["edge"], "path": ["top.json"]}, TOKEN)
    [info] = answer["credential_infos"]
    assert info["type"] == "AWS_PRESIGNED_URL" and info["path"] == "top.json"
    url, needed = info["signed_uri"], {h["name"]: h["value"] for h in info["headers"]}
    assert needed == dict([REQUIRED_HEADER])
    assert _get(url, needed) == (200, ARTIFACT_FILES["top.json"])
    status, body = _get(url, {**needed, **bearer})
    assert status == 400 and b"Only one auth mechanism allowed" in body
    status, body = _get(url)
    assert status == 403 and b"Missing required header" in body
    status, body = _get(url.replace("X-Signature=", "X-Signature=0"), needed)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = _get(url.replace("top.json", "empty.txt"), needed)  # a signature covers one path
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = _get(url.split("?")[0], needed)
    assert status == 403 and b"AccessDenied" in body
    expires = int(url.split("X-Expires=")[1].split("&")[0])
    front.clock = lambda: expires + 1.0
    status, body = _get(url, needed)
    assert status == 403 and b"Request has expired" in body


# -- through the engine -------------------------------------------------------------------------------
async def test_databricks_to_mlflow_through_the_engine(
    workspace_env: DatabricksFront,
    dest_server: MlflowServer,
    seeded: Seeded,
    source_client: MlflowClient,
    dest_client: MlflowClient,
    tmp_path: Path,
) -> None:
    config = parse_config(
        {
            "source": {"type": "mlflow", "tracking_uri": "databricks", "experiments": [seeded.edge_name], "include_deleted": True},
            "destination": {"type": "mlflow", "tracking_uri": dest_server.url, "experiment": "dbx-{experiment}"},
            "transfer": {"ledger": str(tmp_path / "ledger.jsonl"), "chunk_points": 700},
        },
        "test",
    )
    report = await migrate(config, progress=Progress(mode="none"))
    assert report.exit_code == 0, report.progress.totals.failures
    mapping = {}
    for src_id in seeded.runs.values():
        [found] = dest_run_for(dest_client, f"dbx-{seeded.edge_name}", src_id)
        mapping[src_id] = found.info.run_id
    for src_id, dst_id in mapping.items():
        assert_same_run(source_client, dest_client, src_id, dst_id, parent_map=mapping)
    assert artifact_tree(dest_server.url, mapping[seeded.runs["edge"]], tmp_path / "d") == ARTIFACT_FILES
    assert_workspace_traffic(workspace_env, len(ARTIFACT_FILES))
    assert TOKEN.encode() not in (tmp_path / "ledger.jsonl").read_bytes()


async def test_cli_databricks_to_local_matches_the_server(
    front: DatabricksFront, seeded: Seeded, source_client: MlflowClient, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    config = write_toml(
        tmp_path / "dbx-to-local.toml",
        f"""
[source]
type = "mlflow"
tracking_uri = "databricks"
experiments = ["{seeded.edge_name}"]
include_deleted = true

[destination]
type = "local"
path = "{export}"

[transfer]
ledger = "{tmp_path / 'ledger.jsonl'}"
chunk_points = 1000
""",
    )
    done = cli(
        "migrate", str(config), "--log-format", "json", "--interval", "0.2", cwd=tmp_path,
        env={"DATABRICKS_HOST": front.url, "DATABRICKS_TOKEN": TOKEN},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert TOKEN not in done.stdout + done.stderr and "X-Signature" not in done.stdout + done.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert_workspace_traffic(front, len(ARTIFACT_FILES))
    await compare_export(export, seeded, source_client)


async def compare_export(export: Path, seeded: Seeded, oracle: MlflowClient) -> None:
    """Every run of the export against the official client on the real server."""
    async with LocalSource(LocalSource.Config(path=str(export))) as local:
        refs = await all_refs(local)
        assert {r.id for r in refs} == set(seeded.runs.values())
        for ref in refs:
            record = await local.get_run(ref)
            want = oracle.get_run(ref.id)
            assert record.display_name == want.info.run_name
            assert record.state.name == want.info.status
            assert record.start_time == want.info.start_time / 1000
            assert record.end_time == (None if want.info.end_time is None else want.info.end_time / 1000)
            assert record.user == want.info.user_id
            assert record.config == want.data.params
            assert record.tags == want.data.tags
            table, _ = await read_history(local, record)
            got: dict[str, list[tuple[Any, ...]]] = {}
            for key, step, ts, value in zip(
                table.column("key").to_pylist(), table.column("step").to_pylist(),
                table.column("timestamp").to_pylist(), table.column("value").to_pylist(), strict=True,
            ):
                got.setdefault(key, []).append((step, round(ts * 1000), float_bits(value)))
            assert set(got) == set(want.data.metrics)
            for key in want.data.metrics:
                assert sorted(got[key]) == history(oracle, ref.id, key), key
            files = {f.path: await read_bytes(local, record, f) for f in await all_files(local, record)}
            assert files == (ARTIFACT_FILES if ref.id == seeded.runs["edge"] else {})


# -- credentials ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "wrong"])
def test_cli_exits_2_on_a_missing_or_rejected_token(
    front: DatabricksFront, dest_server: MlflowServer, tmp_path: Path, case: str
) -> None:
    config = write_toml(
        tmp_path / "dbx.toml",
        f"""
[source]
type = "mlflow"
tracking_uri = "databricks"

[destination]
type = "local"
path = "{tmp_path / 'export'}"

[transfer]
ledger = "{tmp_path / 'ledger.jsonl'}"
""",
    )
    env = {"DATABRICKS_HOST": front.url, "DATABRICKS_TOKEN": "" if case == "missing" else "dapi-wrong-secret"}
    done = cli("migrate", str(config), cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    if case == "missing":
        assert "configuration error" in lines[0] and "DATABRICKS_TOKEN" in lines[0]
        assert front.requests == []
    else:
        assert "credentials rejected" in lines[0] and "403" in lines[0] and "Invalid access token" in lines[0]
        assert "dapi-wrong-secret" not in done.stdout + done.stderr
        assert front.count("runs/search") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dbx.toml"]


# -- signed URLs: refresh, failure, throttles -----------------------------------------------------------
async def _read_edge_file(seeded: Seeded, path: str, events: Events | None = None) -> bytes:
    only_edge = f"attributes.run_id = '{seeded.runs['edge']}'"
    cfg = source_config("databricks", experiments=[seeded.edge_name], filter=only_edge)
    async with MlflowSource(cfg, context(events=events, limiters=quick_recovery())) as source:
        [ref] = await all_refs(source)
        record = await source.get_run(ref)
        assert str(record.system["artifact_uri"]).startswith("dbfs:/databricks/mlflow-tracking/")
        assert record.system["tracking_uri"] == os.environ["DATABRICKS_HOST"]  # which workspace, not just "databricks"
        [file] = [f for f in await all_files(source, record) if f.path == path]
        assert file.size == len(ARTIFACT_FILES[path])
        return await read_bytes(source, record, file)


@pytest.mark.parametrize("knob", ["expire_next", "corrupt_next"])
async def test_a_refused_signed_url_is_refreshed_once(workspace_env: DatabricksFront, seeded: Seeded, knob: str) -> None:
    setattr(workspace_env, knob, 1)
    events = Events()
    assert await _read_edge_file(seeded, "model/weights.bin", events) == ARTIFACT_FILES["model/weights.bin"]
    assert workspace_env.count("artifacts/credentials-for-read") == 2
    assert len(signed_gets(workspace_env)) == 2
    assert [e["path"] for e in events.named("signed_url_refreshed")] == ["model/weights.bin"]


async def test_signed_urls_that_keep_failing_fail_the_file_clearly(workspace_env: DatabricksFront, seeded: Seeded) -> None:
    workspace_env.url_ttl = -1  # every URL is issued already expired (a skewed clock, say)
    with pytest.raises(FatalError) as caught:
        await _read_edge_file(seeded, "top.json")
    message = str(caught.value)
    assert "refused a freshly signed URL twice" in message and "Request has expired" in message
    assert "X-Signature" not in message and TOKEN not in message
    assert workspace_env.count("artifacts/credentials-for-read") == 2


async def test_throttled_workspace_and_storage_are_retried(workspace_env: DatabricksFront, seeded: Seeded) -> None:
    workspace_env.fail("artifacts/credentials-for-read", request_limit_exceeded())
    workspace_env.fail("artifacts/list", Answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}'))
    workspace_env.fail("/signed/", Answer(503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"))
    data = await _read_edge_file(seeded, "a/b/c/d/e/f/deep.bin")
    assert data == ARTIFACT_FILES["a/b/c/d/e/f/deep.bin"]
    assert workspace_env.count("artifacts/credentials-for-read") == 2
    assert len(signed_gets(workspace_env)) == 2
