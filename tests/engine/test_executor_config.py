"""``[transfer] executor`` and ``[ray]``: validated before anything runs, clear without Ray."""

from __future__ import annotations

import importlib.util

import pytest

from engine.config import parse_config
from core.errors import ConfigError
from scaleout.config import RayConfig

BASE = {"source": {"type": "synthetic"}, "destination": {"type": "local", "path": "/tmp/x"}}


def test_the_default_is_local_and_ray_keys_are_read() -> None:
    config = parse_config({**BASE, "ray": {"workers": 3, "shard_runs": 10, "ledger": "postgresql://u@/db?host=/s"}})
    assert config.transfer.executor == "local"
    assert config.ray == RayConfig(workers=3, shard_runs=10, ledger="postgresql://u@/db?host=/s")


def test_ray_without_ray_installed_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"executor = \"ray\" needs Ray.*pip install 'runferry\[ray\]'"):
        parse_config({**BASE, "transfer": {"executor": "ray"}}, "c.toml")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"transfer": {"executor": "dask"}}, r"executor must be \"local\" or \"ray\", got 'dask'"),
        ({"ray": {"workers": 0}}, "workers, shard_runs and local_cpus must be at least 1"),
        ({"ray": {"address": "10.0.0.1:6379"}}, "address must be 'auto', 'ray://host:port' or empty"),
        ({"ray": {"ledger": "postgresql://u:hunter2@db/x"}}, "must not hold a password"),
        ({"ray": {"wokers": 2}}, "did you mean 'workers'"),
    ],
)
def test_bad_values_are_one_line_errors(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config({**BASE, **table}, "c.toml")
    assert "hunter2" not in str(caught.value)


def test_the_rayjob_example_carries_a_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib
    from pathlib import Path

    import yaml

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as on the image: Ray installed
    for name in ("WANDB_API_KEY", "RUNFERRY_LEDGER_PASSWORD"):
        monkeypatch.setenv(name, "x")
    path = Path(__file__).resolve().parents[2] / "examples" / "ray" / "rayjob.yaml"
    config_map = next(yaml.safe_load_all(path.read_text()))
    config = parse_config(tomllib.loads(config_map["data"]["migration.toml"]), str(path))
    assert (config.transfer.executor, config.ray.address, config.ray.ledger_password_env) == (
        "ray", "auto", "RUNFERRY_LEDGER_PASSWORD")
