"""Every example configuration in examples/ is valid as shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.setenv(name, "x")
    config = load_config(path)
    assert config.source_type and config.destination_type
