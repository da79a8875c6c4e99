"""Bad input, end to end: every refusal is one or two lines on stderr naming the file, key or
endpoint and the fix, exit code 2, no traceback, and nothing written anywhere.

Each case is what an operator could type: a config file (or not), environment, and real loopback
servers behind it (a real ``mlflow server``, the same behind a Databricks-like front that checks
tokens, a real ``mlflow server --app-name basic-auth`` whose users answer 401 and 403, our
W&B-compatible server with its API keys, a closed port, a port that never answers).
The cases run as ``python -m engine migrate`` processes, a few at a time, once per module; each
case then asserts its own outcome. "Nothing written" means: the case's directory holds only what
the case put there, the destination servers received no write (no MLflow experiment or run
created, no W&B mutation, file_stream or upload).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.reliability.servers import FAST_RETRIES, closed_port, engine, files_under, silent_port
from tests.servers.databricks_front import DatabricksFront
from tests.servers.mlflow_server import MlflowServer, as_user, basic_auth_server
from tests.servers.wandb import WandbServer, start_wandb_server

pytestmark = pytest.mark.timeout(900)  # module fixtures start real MLflow servers: minutes on a loaded 2-core machine

WANDB_KEY = "f" * 8 + "runferrybadinputkey" + "0" * 13
WANDB_KEY_ENV = "RUNFERRY_BAD_INPUT_WANDB_KEY"
WRONG_KEY_ENV = "RUNFERRY_BAD_INPUT_WRONG_KEY"
DBX_TOKEN = "dapi-bad-input-right-token"
ENV = {
    WANDB_KEY_ENV: WANDB_KEY,
    WRONG_KEY_ENV: "0" * 40,
    "RUNFERRY_WRONG_DBX_TOKEN": "dapi-not-the-token",
    "RUNFERRY_EMPTY": "",
    "RF_AUTH_USER": "reader",
    "RF_AUTH_PASSWORD": "reader-password-12345",
    "RF_AUTH_WRONG": "not-the-reader-password",
}
AUTH_ADMIN = ("admin", "runferry-admin-password-1")

SYN = '[source]\ntype = "synthetic"\nruns = 1\nsteps = 3\nkeys = 1\nfile_sizes = []\nartifact_sizes = []\n'
LOCAL = '[destination]\ntype = "local"\npath = "{d}/out"\n'
LEDGER = '[transfer]\nledger = "{d}/ledger.jsonl"\n'
MLSRC = '[source]\ntype = "mlflow"\ntracking_uri = "{mlflow}"\nexperiments = ["exp"]\ntimeout = 5.0\n'
WBSRC = '[source]\ntype = "wandb"\nbase_url = "{wandb}"\napi_key_env = "' + WANDB_KEY_ENV + '"\nnamespaces = ["runferry/proj"]\n'
MLDST = '[destination]\ntype = "mlflow"\ntracking_uri = "{mlflow_dst}"\ntimeout = 5.0\n'
AUTH = 'username_env = "RF_AUTH_USER"\npassword_env = "RF_AUTH_PASSWORD"\n'
AUTH_WRONG = 'username_env = "RF_AUTH_USER"\npassword_env = "RF_AUTH_WRONG"\n'
MLSRC_AUTH = MLSRC.replace("{mlflow}", "{auth}")
MLDST_AUTH = MLDST.replace("{mlflow_dst}", "{auth}") + 'experiment = "locked"\n'
WBDST = '[destination]\ntype = "wandb"\nbase_url = "{wandb}"\napi_key_env = "' + WANDB_KEY_ENV + '"\n'


@dataclass(frozen=True)
class Case:
    name: str
    config: str | bytes
    expect: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    setup: str = ""  # "file": a regular file named 'afile' in the case dir; "ledger_dir": a dir 'ledger.jsonl'
    config_arg: str = "c.toml"  # what is passed as CONFIG (relative to the case dir)


def ok(source: str = SYN, destination: str = LOCAL, transfer: str = LEDGER, extra: str = "") -> str:
    return source + destination + transfer + extra + FAST_RETRIES


CASES = [
    # -- the file itself --------------------------------------------------------------------------
    Case("not_utf8", b"[source]\ntype = \"synth\xff\xfeetic\"\n", ("c.toml", "not UTF-8")),
    Case("not_toml", "this is not toml\n", ("c.toml", "not valid TOML")),
    Case("directory_as_config", ok(), ("cfgdir", "is a directory"), setup="cfgdir", config_arg="cfgdir"),
    Case("missing_file", ok(), ("nope.toml", "file not found"), config_arg="nope.toml"),
    Case("duplicate_key", ok(SYN + "runs = 2\n"), ("c.toml", "not valid TOML", "line 8")),
    Case("duplicate_table", ok(SYN + LOCAL.replace("destination", "source")), ("c.toml", "not valid TOML")),
    Case("empty_file", "", ("c.toml", "missing [source]")),
    # -- every table and key misspelled ---------------------------------------------------------------
    Case("table_sorce", ok().replace("[source]", "[sorce]"), ("unknown key 'sorce'", "did you mean 'source'")),
    Case("table_destinaton", ok().replace("[destination]", "[destinaton]"), ("'destinaton'", "did you mean 'destination'")),
    Case("table_transfr", ok().replace("[transfer]", "[transfr]"), ("'transfr'", "did you mean 'transfer'")),
    Case("table_remapp", ok(extra='[[remapp]]\nfrom = "a/b"\nto = "c/d"\n'), ("'remapp'", "did you mean 'remap'")),
    Case("table_ratelimt", ok().replace("[ratelimit]", "[ratelimt]"), ("'ratelimt'", "did you mean 'ratelimit'")),
    Case("type_misspelled", ok(SYN.replace('"synthetic"', '"synthetc"')), ("[source]", "'synthetc'", "did you mean 'synthetic'")),
    Case("type_missing", ok(SYN.replace('type = "synthetic"\n', "")), ("[source]", "needs key 'type'")),
    Case("key_synthetic", ok(SYN.replace("runs =", "rusn =")), ("[source]", "'rusn'", "did you mean 'runs'")),
    Case("key_mlflow_source", ok(MLSRC.replace("tracking_uri", "tracking_url")), ("[source]", "'tracking_url'", "did you mean 'tracking_uri'")),
    Case("key_wandb_source", ok(WBSRC.replace("namespaces", "namespace")), ("[source]", "'namespace'", "did you mean 'namespaces'")),
    Case("key_local_source", ok('[source]\ntype = "local"\npth = "x"\n'), ("[source]", "'pth'", "did you mean 'path'")),
    Case("key_local_destination", ok(destination=LOCAL.replace("path", "pth")), ("[destination]", "'pth'", "did you mean 'path'")),
    Case("key_mlflow_destination", ok(destination=MLDST + 'experimnt = "x"\n'), ("[destination]", "'experimnt'", "did you mean 'experiment'")),
    Case("key_wandb_destination", ok(destination=WBDST + 'entitty = "x"\n'), ("[destination]", "'entitty'", "did you mean 'entity'")),
    Case("key_transfer", ok(transfer=LEDGER.replace("ledger", "ledgr")), ("[transfer]", "'ledgr'", "did you mean 'ledger'")),
    Case("key_remap", ok(extra='[[remap]]\nform = "a/b"\nto = "c/d"\n'), ("[[remap]] #1", "'form'", "did you mean 'from'")),
    Case("key_ratelimit", ok().replace("backoff_cap", "backof_cap"), ("[ratelimit]", "backof_cap")),
    Case("secret_in_file", ok(destination=WBDST + 'api_key = "sekrit"\n'), ("[destination]", "'api_key'", "api_key_env")),
    # -- wrong types -----------------------------------------------------------------------------------
    Case("type_string_for_int", ok(SYN.replace("runs = 1", 'runs = "1"')), ("[source]", "'runs' must be an integer")),
    Case("type_string_for_bool", ok(transfer=LEDGER + 'incremental = "yes"\n'), ("[transfer]", "'incremental' must be true or false")),
    Case("type_string_for_list", ok(WBSRC.replace('["runferry/proj"]', '"runferry/proj"')), ("[source]", "'namespaces' must be an array")),
    Case("type_number_for_table", "source = 3\n" + LOCAL + LEDGER, ("source", "must be a table")),
    Case("type_table_for_remap", ok(extra='[remap]\nfrom = "a/b"\nto = "c/d"\n'), ("'remap'", "[[remap]]")),
    # -- out of range --------------------------------------------------------------------------------
    Case("negative_memory_budget", ok(transfer=LEDGER + "memory_budget = -1\n"), ("[transfer]", "memory_budget must be at least 1")),
    Case("zero_chunk_points", ok(transfer=LEDGER + "chunk_points = 0\n"), ("[transfer]", "chunk_points must be at least 1")),
    Case("zero_file_workers", ok(transfer=LEDGER + "file_workers = 0\n"), ("[transfer]", "file_workers must be at least 1")),
    Case("negative_runs", ok(SYN.replace("runs = 1", "runs = -5")), ("[source]", "runs must be at least 1")),
    Case("zero_timeout", ok(MLSRC.replace("timeout = 5.0", "timeout = 0")), ("[source]", "timeout must be positive")),
    Case("mlflow_page_size_too_big", ok(MLSRC + "page_size = 100000\n"), ("[source]", "page_size", "50")),
    Case("mlflow_history_page_too_big", ok(MLSRC + "history_page_size = 1000000\n"), ("[source]", "history_page_size", "25")),
    Case("wandb_request_too_big", ok(destination=WBDST + "max_request_bytes = 104857600\n"), ("[destination]", "max_request_bytes", "10")),
    Case("wandb_part_too_big", ok(destination=WBDST + "part_size = 6442450944\n"), ("[destination]", "part_size", "5 GiB")),
    Case("mlflow_part_too_small", ok(destination=MLDST + "part_size = 1024\n"), ("[destination]", "part_size", "5 MiB")),
    Case("mlflow_part_too_big", ok(destination=MLDST + "part_size = 6442450944\n"), ("[destination]", "part_size", "5 GiB")),
    Case("wandb_negative_rate", ok(destination=WBDST + "filestream_rate = -1.0\n"), ("[destination]", "filestream_rate")),
    Case("wandb_run_creation_rate_below_one", ok(destination=WBDST + "run_creation_rate = 0.5\n"),
         ("[destination]", "run_creation_rate")),
    # -- [[remap]] ----------------------------------------------------------------------------------
    Case("remap_too_many_parts", ok(extra='[[remap]]\nfrom = "a/b/c"\nto = "c/d"\n'), ("[[remap]] #1", "'from'", "entity/project")),
    Case("remap_empty_part", ok(extra='[[remap]]\nfrom = "/b"\nto = "c/d"\n'), ("[[remap]] #1", "'from'", "entity/project")),
    Case("remap_empty_target_part", ok(extra='[[remap]]\nfrom = "a/b"\nto = "c/"\n'), ("[[remap]] #1", "'to'", "entity/project")),
    Case("remap_missing_to", ok(extra='[[remap]]\nfrom = "a/b"\n'), ("[[remap]] #1", "'to'")),
    # -- URLs, hosts, connections ------------------------------------------------------------------------
    Case("url_bad_scheme", ok(MLSRC.replace("{mlflow}", "htp://127.0.0.1:5000")), ("[source]", "tracking_uri", "http")),
    Case("url_no_host", ok(MLSRC.replace("{mlflow}", "http://")), ("[source]", "tracking_uri")),
    Case("url_wandb_not_a_url", ok(destination=WBDST.replace("{wandb}", "not a url")), ("[destination]", "base_url")),
    Case("refused_mlflow_source", ok(MLSRC.replace("{mlflow}", "http://127.0.0.1:{closed}")), ("[source]", "127.0.0.1:{closed}", "connection refused", "server is running")),
    Case("refused_wandb_source", ok(WBSRC.replace("{wandb}", "http://127.0.0.1:{closed}")), ("[source]", "127.0.0.1:{closed}", "connection refused")),
    Case("refused_mlflow_destination", ok(destination=MLDST.replace("{mlflow_dst}", "http://127.0.0.1:{closed}")), ("[destination]", "127.0.0.1:{closed}", "connection refused")),
    Case("refused_wandb_destination", ok(destination=WBDST.replace("{wandb}", "http://127.0.0.1:{closed}")), ("[destination]", "127.0.0.1:{closed}", "connection refused")),
    Case("host_never_answers", ok(MLSRC.replace("{mlflow}", "http://127.0.0.1:{silent}").replace("timeout = 5.0", "timeout = 0.2")), ("[source]", "127.0.0.1:{silent}", "timed out")),
    # -- credentials: 401 / 403 / 404 from each system ---------------------------------------------------
    Case("wandb_source_wrong_key", ok(WBSRC.replace(WANDB_KEY_ENV, WRONG_KEY_ENV)), ("[source]", WRONG_KEY_ENV, "refused")),
    Case("wandb_destination_wrong_key", ok(destination=WBDST.replace(WANDB_KEY_ENV, WRONG_KEY_ENV)), ("[destination]", WRONG_KEY_ENV)),
    Case("wandb_destination_foreign_entity", ok(destination=WBDST + 'entity = "someone-else"\n'), ("[destination]", "someone-else")),
    Case("mlflow_source_wrong_token", ok(MLSRC.replace("{mlflow}", "databricks")), ("[source]", "DATABRICKS_TOKEN"),
         env={"DATABRICKS_TOKEN": "dapi-not-the-token"}),
    Case("mlflow_destination_wrong_token", ok(destination=MLDST.replace("{mlflow_dst}", "databricks")), ("[destination]", "DATABRICKS_TOKEN"),
         env={"DATABRICKS_TOKEN": "dapi-not-the-token"}),
    Case("mlflow_source_401_basic_auth", ok(MLSRC_AUTH + AUTH_WRONG), ("[source]", "{auth}", "RF_AUTH_WRONG")),
    Case("mlflow_destination_401_basic_auth", ok(destination=MLDST_AUTH + AUTH_WRONG), ("[destination]", "{auth}", "RF_AUTH_WRONG")),
    Case("mlflow_source_403_basic_auth", ok(MLSRC_AUTH.replace('["exp"]', '["secret"]') + AUTH), ("[source]", "{auth}", "403")),
    Case("mlflow_destination_403_basic_auth", ok(destination=MLDST_AUTH + AUTH), ("c.toml", "{auth}", "runs/create", "403", "permissions")),
    Case("mlflow_source_404", ok(MLSRC.replace("{mlflow}", "{mlflow}/no/such/prefix")), ("[source]", "404", "URL")),
    Case("mlflow_destination_404", ok(destination=MLDST.replace("{mlflow_dst}", "{wandb}")), ("[destination]", "404", "URL")),
    Case("wandb_source_404", ok(WBSRC.replace("{wandb}", "{mlflow}")), ("[source]", "{mlflow}", "URL")),
    Case("env_var_not_set", ok(WBSRC.replace(WANDB_KEY_ENV, "RUNFERRY_SURELY_UNSET")), ("[source]", "RUNFERRY_SURELY_UNSET", "not set")),
    Case("env_var_empty", ok(WBSRC.replace(WANDB_KEY_ENV, "RUNFERRY_EMPTY")), ("[source]", "RUNFERRY_EMPTY", "empty")),
    # -- things the config names that do not exist ------------------------------------------------------
    Case("mlflow_missing_experiment", ok(MLSRC.replace('["exp"]', '["no-such-experiment"]')), ("[source]", "no-such-experiment")),
    Case("wandb_missing_project", ok(WBSRC.replace("runferry/proj", "runferry/no-such-project")), ("[source]", "runferry/no-such-project")),
    Case("wandb_missing_entity", ok(WBSRC.replace("runferry/proj", "no-such-entity/proj")), ("[source]", "no-such-entity")),
    Case("wandb_bad_selector", ok(WBSRC.replace("runferry/proj", "a/b/c")), ("[source]", "a/b/c")),
    Case("local_source_missing", ok('[source]\ntype = "local"\npath = "{d}/nothing-here"\n'), ("[source]", "nothing-here")),
    # -- filters ----------------------------------------------------------------------------------------
    Case("mlflow_invalid_filter", ok(MLSRC + "filter = \"params.lr >>> 'x'\"\n"), ("[source]", "filter", ">>>")),
    Case("wandb_filters_not_json", ok(WBSRC + "filters = '{{\"state\": '\n"), ("[source]", "filters", "JSON")),
    Case("wandb_filters_not_object", ok(WBSRC + "filters = '[1, 2]'\n"), ("[source]", "filters", "object")),
    # -- paths that cannot be written ------------------------------------------------------------------
    Case("ledger_under_a_file", ok(transfer='[transfer]\nledger = "{d}/afile/ledger.jsonl"\n'), ("[transfer] ledger", "afile"), setup="file"),
    Case("ledger_is_a_directory", ok(), ("[transfer] ledger", "is a directory"), setup="ledger_dir"),
    Case("ledger_read_only_fs", ok(transfer='[transfer]\nledger = "/proc/runferry/ledger.jsonl"\n'), ("[transfer] ledger", "/proc")),
    Case("destination_is_a_file", ok(destination=LOCAL.replace("{d}/out", "{d}/afile")), ("[destination]", "afile", "not a directory"), setup="file"),
    Case("destination_under_a_file", ok(destination=LOCAL.replace("{d}/out", "{d}/afile/out")), ("[destination]", "afile"), setup="file"),
    Case("wandb_spool_under_a_file", ok(destination=WBDST + 'spool_dir = "{d}/afile/spool"\n'), ("[destination]", "spool_dir", "afile"), setup="file"),
    Case("destination_read_only_fs", ok(destination=LOCAL.replace("{d}/out", "/proc/runferry/out")), ("[destination]", "/proc")),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A source MLflow server with experiment ``exp`` (one run), a destination one behind a
    Databricks-like front, a basic-auth server where user ``reader`` may read ``locked`` but not
    write it and is denied ``secret``, and a W&B server whose key owns ``runferry`` with project
    ``proj``."""
    root = tmp_path_factory.mktemp("bad-input-servers")
    source, dest = MlflowServer(root / "src"), MlflowServer(root / "dst")
    auth = basic_auth_server(root / "auth", AUTH_ADMIN)
    source.start()
    try:
        dest.start()
        auth.start()
        as_user(auth.url, AUTH_ADMIN, "/api/2.0/mlflow/users/create", {"username": ENV["RF_AUTH_USER"], "password": ENV["RF_AUTH_PASSWORD"]})
        as_user(auth.url, AUTH_ADMIN, "/api/2.0/mlflow/experiments/create", {"name": "locked"})
        secret = as_user(auth.url, AUTH_ADMIN, "/api/2.0/mlflow/experiments/create", {"name": "secret"})["experiment_id"]
        as_user(auth.url, AUTH_ADMIN, "/api/3.0/mlflow/users/permissions/grant",
                {"username": ENV["RF_AUTH_USER"], "resource_type": "experiment", "resource_id": secret, "permission": "DENY"})
        client = MlflowClient(source.url)
        experiment = client.create_experiment("exp")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "loss", 0.5, step=0)
        client.set_terminated(run.info.run_id)
        front = DatabricksFront(dest.url, DBX_TOKEN).start()
        with start_wandb_server(keys={WANDB_KEY: ["runferry"]}) as wandb:
            seed = root / "seed.toml"
            seed.write_text(
                SYN + WBDST.format(wandb=wandb.base_url) + 'entity = "runferry"\nproject = "proj"\n'
                + f'[transfer]\nledger = "{root / "seed-ledger.jsonl"}"\n'
            )
            seeded = engine("migrate", str(seed), env=ENV)
            assert seeded.returncode == 0, seeded.stderr
            try:
                yield {"mlflow": source.url, "mlflow_dst": dest.url, "wandb": wandb.base_url, "dbx": front.url,
                       "auth": auth.url, "_wandb": wandb, "_dest": dest}  # type: ignore[dict-item]
            finally:
                front.stop()
    finally:
        source.stop()
        dest.stop()
        auth.stop()


@dataclass
class Outcome:
    directory: Path
    before: set[str]
    result: subprocess.CompletedProcess[str]
    expect: tuple[str, ...]


@pytest.fixture(scope="module")
def outcomes(servers: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case run once, four processes at a time; asserts afterwards that no destination
    server received a write."""
    wandb: WandbServer = servers["_wandb"]
    dest_client = MlflowClient(servers["mlflow_dst"])
    experiments_before = {e.name for e in dest_client.search_experiments()}
    auth_before = _auth_server_contents(servers["auth"])
    log_before = len(wandb.state.request_log)
    root = tmp_path_factory.mktemp("bad-input-cases")
    with silent_port() as silent:
        values = {k: v for k, v in servers.items() if not k.startswith("_")}
        values.update(closed=str(closed_port()), silent=str(silent))

        def run(case: Case) -> tuple[str, Outcome]:
            directory = root / case.name
            directory.mkdir()
            fill = {**values, "d": str(directory)}
            if case.setup == "file":
                (directory / "afile").write_text("a regular file")
            elif case.setup == "ledger_dir":
                (directory / "ledger.jsonl").mkdir()
            elif case.setup == "cfgdir":
                (directory / "cfgdir").mkdir()
            config = case.config if isinstance(case.config, bytes) else case.config.format(**fill)
            (directory / "c.toml").write_bytes(config if isinstance(config, bytes) else config.encode())
            before = files_under(directory)
            env = {**ENV, "DATABRICKS_HOST": servers["dbx"], **case.env}
            result = engine("migrate", case.config_arg, cwd=directory, env=env, timeout=120)
            expect = tuple(e.format(**fill) for e in case.expect)
            return case.name, Outcome(directory, before, result, expect)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            done = dict(pool.map(run, CASES))
    if os.environ.get("RUNFERRY_DUMP_CASES"):  # debugging aid: every case's outcome in one file
        with open(os.environ["RUNFERRY_DUMP_CASES"], "w") as fh:
            for name, o in done.items():
                fh.write(f"== {name} rc={o.result.returncode} files={sorted(files_under(o.directory) - o.before)}\n{o.result.stderr[-1500:]}\n")
    yield done
    writes = [entry for entry in wandb.state.request_log[log_before:] if entry[0] != "graphql" or entry[1] not in READ_OPERATIONS]
    assert writes == [], f"the W&B server received writes: {writes}"
    assert {e.name for e in dest_client.search_experiments()} == experiments_before
    assert _auth_server_contents(servers["auth"]) == auth_before


def _auth_server_contents(url: str) -> tuple[list[str], int]:
    """The basic-auth server's experiment names and run count, as its admin sees them."""
    experiments = as_user(url, AUTH_ADMIN, "/api/2.0/mlflow/experiments/search", {"max_results": 1000})["experiments"]
    assert isinstance(experiments, list)
    ids = [e["experiment_id"] for e in experiments]
    runs = as_user(url, AUTH_ADMIN, "/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 1000}).get("runs", [])
    assert isinstance(runs, list)
    return sorted(e["name"] for e in experiments), len(runs)


READ_OPERATIONS = {"Viewer", "ServerInfo", "Project", "Projects", "Runs", "Run", "Entity", "EntityProjects",
                   "ViewerTeams", "ProbeServerSettings", "ServerFeaturesQuery", "RunFiles", "HistoryPage"}


def test_there_are_at_least_40_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_in_one_line_with_exit_2_and_nothing_written(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    result = outcome.result
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert 1 <= len(lines) <= 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("runferry: ")
    for part in outcome.expect:
        assert part in result.stderr, (part, result.stderr)
    assert result.stdout == ""
    assert files_under(outcome.directory) == outcome.before  # no ledger, no destination directory, no probe left
    assert not any(".runferry-probe-" in name for name in os.listdir("/proc"))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(ok(MLSRC.replace("{mlflow}", "http://127.0.0.1:{closed}")).format(d=tmp_path, closed=closed_port()))
    result = engine("migrate", str(config), "--debug", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("runferry: configuration error: ")
    assert files_under(tmp_path) == {"c.toml"}
