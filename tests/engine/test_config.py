"""Config validation: every mistake is one line naming the file, the key and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters import registry
from engine.config import ConfigError, TransferConfig, load_config, parse_config


@dataclass(frozen=True, kw_only=True)
class _DemoConfig:
    """Demo adapter keys."""

    url: str
    pages: int = 10
    ratio: float = 0.5
    names: list[str] | None = None
    labels: dict[str, str] | None = None
    verbose: bool = False
    api_key_env: str = ""


class DemoAdapter:
    Config = _DemoConfig


@pytest.fixture(autouse=True)
def demo_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.SOURCES, "demo", f"{__name__}:DemoAdapter")
    monkeypatch.setitem(registry.DESTINATIONS, "demo", f"{__name__}:DemoAdapter")


def doc(**overrides: object) -> dict:
    base: dict = {"source": {"type": "demo", "url": "http://127.0.0.1:1"}, "destination": {"type": "demo", "url": "x"}}
    base.update(overrides)
    return base


def test_a_valid_document_becomes_frozen_objects() -> None:
    config = parse_config(
        doc(
            transfer={"incremental": False, "chunk_points": 5000},
            remap=[{"from": "a/b", "to": "c/d"}],
            source={"type": "demo", "url": "u", "pages": 3, "ratio": 2, "names": ["x"], "labels": {"k": "v"}},
        ),
        "c.toml",
    )
    assert config.source == _DemoConfig(url="u", pages=3, ratio=2, names=["x"], labels={"k": "v"})
    assert config.transfer == TransferConfig(incremental=False, chunk_points=5000)
    assert config.remap[0].source == "a/b" and config.remap[0].target == "c/d"
    with pytest.raises(AttributeError):
        config.transfer.incremental = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (doc(source={"type": "demo", "ulr": "x"}), "c.toml: [source] unknown key 'ulr' — did you mean 'url'?"),
        (doc(transfer={"incremntal": True}), "c.toml: [transfer] unknown key 'incremntal' — did you mean 'incremental'?"),
        (doc(source={"type": "demo", "url": "u", "pages": "10"}), "c.toml: [source] key 'pages' must be an integer, got str '10'"),
        (doc(source={"type": "demo", "url": "u", "verbose": 1}), "c.toml: [source] key 'verbose' must be true or false, got int 1"),
        (doc(source={"type": "demo"}), "c.toml: [source] missing required key 'url'"),
        (doc(source={"type": "dmeo", "url": "u"}), "c.toml: [source] type 'dmeo' is unknown — did you mean 'demo'?"),
        ({"destination": {"type": "demo", "url": "u"}}, "c.toml: missing [source] table"),
        (doc(extra=1), "c.toml: unknown key 'extra'"),
        (doc(transfer={"runs_concurrency": -1}), "c.toml: [transfer] runs_concurrency must be 0 (automatic) or positive"),
        (doc(transfer={"memory_budget": 0}), "c.toml: [transfer] memory_budget must be at least 1"),
        (doc(ratelimit={"initial_concurrency": "many"}), "c.toml: [ratelimit]"),
        (doc(ratelimit={"max_concurency": 3}), "c.toml: [ratelimit]: unknown key 'max_concurency'"),
        (doc(remap=[{"from": "a", "to": "c/d"}]), "c.toml: [[remap]] #1 key 'from' must be a string 'entity/project'"),
        (
            doc(source={"type": "demo", "url": "u", "api_key": "s3cret"}),
            "c.toml: [source] unknown key 'api_key' — did you mean 'api_key_env'?",
        ),
    ],
)
def test_mistakes_give_one_line_naming_file_and_key(document: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(document, "c.toml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert "s3cret" not in str(err.value)


def test_a_secret_env_var_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNFERRY_TEST_KEY", raising=False)
    document = doc(destination={"type": "demo", "url": "u", "api_key_env": "RUNFERRY_TEST_KEY"})
    with pytest.raises(ConfigError, match="names environment variable RUNFERRY_TEST_KEY, which is not set"):
        parse_config(document, "c.toml")
    monkeypatch.setenv("RUNFERRY_TEST_KEY", "k")
    assert parse_config(document, "c.toml").destination.api_key_env == "RUNFERRY_TEST_KEY"


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\ntype = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML \("):
        load_config(bad)
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(tmp_path / "nope.toml")
