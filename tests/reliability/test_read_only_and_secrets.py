"""The source is read-only and secrets stay secret, across full migrations of every kind that
reads a server: MLflow -> local, MLflow -> W&B, W&B -> local, W&B -> MLflow.

Fronts: the MLflow source sits behind ``FaultProxy`` (a plain forwarder here) that records every
request; anything but GET/HEAD and the two read-only searches (``experiments/search``,
``runs/search``) fails the test. The W&B source server logs every GraphQL operation and
file_stream request; any mutation (the stored document starts with ``mutation``) or file_stream
after seeding fails the test (artifact and file uploads need mutations first).

Secrets: distinctive W&B keys (source and destination, checked by the servers), an MLflow
basic-auth user and password (sent on every request), and a Databricks token and AWS keys in the
environment (what a real operator's shell holds). Each migration
runs with ``--log-format json``; stdout, stderr, ``status``, every file under the work
directory (exports, ledgers, spool), and every file the destination servers stored are searched
for each secret, raw and in the base64 forms that go into ``Authorization`` headers. A refused
key's text (stderr) is searched too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import write_config
from tests.mlflow.fault_proxy import FaultProxy
from tests.reliability.servers import engine
from tests.servers.mlflow_server import MlflowServer
from tests.servers.wandb import WandbServer, start_wandb_server
from tests.servers.wandb._server import check_loopback

pytestmark = pytest.mark.timeout(900)  # module fixtures start real MLflow servers: minutes on a loaded 2-core machine

SRC_KEY = "srcSECRETwandb" + "1" * 26
DST_KEY = "dstSECRETwandb" + "2" * 26
WRONG_KEY = "badSECRETwandb" + "3" * 26
ML_USER, ML_PASSWORD = "mlSECRETuser", "mlSECRETpassword-9f3k"
DBX_TOKEN = "dapiSECRETdatabricks-7q2w"
AWS_ID, AWS_SECRET = "AKIASECRETAWSID12345", "awsSECRETkey/abc+def/0123456789"
SECRETS = [SRC_KEY, DST_KEY, WRONG_KEY, ML_USER, ML_PASSWORD, DBX_TOKEN, AWS_ID, AWS_SECRET]
HEADER_FORMS = [base64.b64encode(f"api:{k}".encode()).decode() for k in (SRC_KEY, DST_KEY, WRONG_KEY)] + [
    base64.b64encode(f"{ML_USER}:{ML_PASSWORD}".encode()).decode()
]
ENV = {
    "RF_SRC_KEY": SRC_KEY, "RF_DST_KEY": DST_KEY, "RF_WRONG_KEY": WRONG_KEY,
    "RF_ML_USER": ML_USER, "RF_ML_PASSWORD": ML_PASSWORD, "DATABRICKS_TOKEN": DBX_TOKEN,
    "AWS_ACCESS_KEY_ID": AWS_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
}
SYNTHETIC = {
    "type": "synthetic", "seed": 3, "runs": 3, "projects": 2, "steps": 300, "keys": 3, "system_keys": 1,
    "console_lines": 5, "file_sizes": [5000, 0], "artifact_sizes": [20000, 3],
}
FAST = {"chunk_points": 250}
MLFLOW_READS = ("experiments/search", "runs/search")


def _seed(root: Path, name: str, destination: dict) -> None:
    config = write_config(root / f"seed-{name}.toml", SYNTHETIC, destination, {"ledger": str(root / f"seed-{name}.jsonl")})
    done = engine("migrate", str(config), env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("read-only")
    ml_src, ml_dst = MlflowServer(root / "ml-src"), MlflowServer(root / "ml-dst")
    ml_src.start()
    try:
        ml_dst.start()
        with start_wandb_server(keys={SRC_KEY: ["src"]}) as wb_src, start_wandb_server(keys={DST_KEY: ["dst"]}) as wb_dst:
            _seed(root, "mlflow", {"type": "mlflow", "tracking_uri": ml_src.url})
            _seed(root, "wandb", {"type": "wandb", "base_url": wb_src.base_url, "api_key_env": "RF_SRC_KEY", "entity": "src"})
            seeded_log = len(wb_src.state.request_log)
            proxy = FaultProxy(ml_src.url).start()
            try:
                yield {"root": root, "ml_src": ml_src, "ml_dst": ml_dst, "wb_src": wb_src, "wb_dst": wb_dst,
                       "proxy": proxy, "seeded_log": seeded_log}
            finally:
                proxy.stop()
    finally:
        ml_src.stop()
        ml_dst.stop()


def _sources(world: dict) -> dict[str, dict]:
    return {
        "mlflow": {"type": "mlflow", "tracking_uri": world["proxy"].url, "username_env": "RF_ML_USER",
                   "password_env": "RF_ML_PASSWORD"},
        "wandb": {"type": "wandb", "base_url": world["wb_src"].base_url, "api_key_env": "RF_SRC_KEY",
                  "namespaces": ["src/*"]},
    }


def _destinations(world: dict, work: Path) -> dict[str, dict]:
    return {
        "local": {"type": "local", "path": str(work / "export")},
        "wandb": {"type": "wandb", "base_url": world["wb_dst"].base_url, "api_key_env": "RF_DST_KEY", "entity": "dst",
                  "spool_dir": str(work / "spool")},
        # basic auth (the server accepts any): the secret is sent on every request, so it could leak
        "mlflow": {"type": "mlflow", "tracking_uri": world["ml_dst"].url, "username_env": "RF_ML_USER",
                   "password_env": "RF_ML_PASSWORD"},
    }


PAIRS = [("mlflow", "local"), ("mlflow", "wandb"), ("wandb", "local"), ("wandb", "mlflow")]


def _assert_no_secret(where: str, data: bytes) -> None:
    for secret in SECRETS + HEADER_FORMS:
        assert secret.encode() not in data, f"{where} holds a secret ({secret[:6]}...)"


def _assert_tree_clean(root: Path) -> int:
    checked = 0
    for path in root.rglob("*"):
        if path.is_file():
            _assert_no_secret(str(path), path.read_bytes())
            checked += 1
    return checked


@pytest.mark.parametrize(("source", "destination"), PAIRS, ids=[f"{s}-to-{d}" for s, d in PAIRS])
def test_source_untouched_and_no_secret_anywhere(world: dict, tmp_path: Path, source: str, destination: str) -> None:
    proxy: FaultProxy = world["proxy"]
    wb_src: WandbServer = world["wb_src"]
    proxy.reset()
    config = write_config(tmp_path / "c.toml", _sources(world)[source], _destinations(world, tmp_path)[destination],
                          {"ledger": str(tmp_path / "ledger.jsonl"), **FAST})
    env = ENV
    done = engine("migrate", str(config), "--log-format", "json", "--interval", "0.05", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"runs_done": 3' in done.stdout or "runs done" in done.stdout, done.stdout[-2000:]
    status = engine("status", str(config), cwd=tmp_path, env=env)
    assert "done 3" in status.stdout, status.stdout
    for name, text in (("stdout", done.stdout), ("stderr", done.stderr), ("status", status.stdout + status.stderr)):
        _assert_no_secret(name, text.encode())
    assert _assert_tree_clean(tmp_path) >= 2  # config, ledger (and the export, for local)

    # the destination servers' stored data: nothing of ours carried a secret there either
    _assert_tree_clean(world["ml_dst"].root)
    _assert_tree_clean(world["wb_dst"].state.blob_dir)
    with world["wb_dst"].state.lock:
        _assert_no_secret("W&B destination runs", repr(world["wb_dst"].state.runs).encode())

    # the source only ever read
    if source == "mlflow":
        assert proxy.requests, "the MLflow source was not read through the front"
        writes = [(m, p) for m, p in proxy.requests if m not in ("GET", "HEAD") and not p.endswith(MLFLOW_READS)]
        assert writes == []
    with wb_src.state.lock:
        log = wb_src.state.request_log[world["seeded_log"]:]
        documents = dict(wb_src.state.documents)
    if source == "wandb":
        assert log, "the W&B source was not read"
    changes = [(kind, name) for kind, name in log
               if kind != "graphql" or documents.get(name, "").lstrip().startswith("mutation")]
    assert changes == []


def test_a_refused_key_is_not_in_the_error(world: dict, tmp_path: Path) -> None:
    source = {**_sources(world)["wandb"], "api_key_env": "RF_WRONG_KEY"}
    config = write_config(tmp_path / "c.toml", source, {"type": "local", "path": str(tmp_path / "x")},
                          {"ledger": str(tmp_path / "ledger.jsonl")})
    done = engine("migrate", str(config), "--debug", cwd=tmp_path, env=ENV)  # even the traceback
    assert done.returncode == 2 and "RF_WRONG_KEY" in done.stderr
    _assert_no_secret("stderr", (done.stdout + done.stderr).encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_the_wandb_server_refuses_non_loopback_addresses_unless_told(host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        check_loopback(host, False)
    check_loopback(host, True)  # told: allowed (nothing is bound here)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.5.5", "::1", "localhost"])
def test_loopback_addresses_are_accepted(host: str) -> None:
    check_loopback(host, False)


def test_the_wandb_server_command_line_refuses_a_public_address() -> None:
    import subprocess
    import sys

    from tests.reliability.servers import ROOT

    done = subprocess.run([sys.executable, "-m", "tests.servers.wandb", "--host", "0.0.0.0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a loopback address" in done.stderr
