"""The README stays true: CI runs its test command, and its configuration reference names every key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from adapters import registry
from engine.config import TransferConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    return [line.strip() for line in re.findall(r"```(?:bash|sh)\n(.*?)```", README, re.S) for line in line.splitlines()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_commands = [c for c in _commands() if "pytest" in c]
    assert test_commands, "README has no test command"
    assert test_commands[0] in ci_lines


def test_ci_runs_the_readme_checks_before_the_tests() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    checks = [c for c in _commands() if "mypy" in c]
    assert checks, "README has no lint/type check command"
    assert "ruff check core engine adapters ratelimit scaleout" in checks[0]
    assert checks[0] in ci_lines
    test_command = next(c for c in _commands() if "pytest" in c)
    assert ci_lines.index(checks[0]) < ci_lines.index(test_command)


def test_readme_has_the_quickstart_command() -> None:
    assert any("python -m engine migrate examples/quickstart.toml" in c for c in _commands())
    assert (ROOT / "examples" / "quickstart.toml").exists()


def _adapter_configs() -> list[tuple[str, type]]:
    out = []
    for kind, table in (("source", registry.SOURCES), ("destination", registry.DESTINATIONS)):
        for name, spec in sorted(table.items()):
            try:
                out.append((f"{kind}.{name}", registry.load(spec).Config))
            except (ImportError, AttributeError):
                continue
    return out


@pytest.mark.parametrize(("where", "config_cls"), [("transfer", TransferConfig), *_adapter_configs()])
def test_configuration_reference_names_every_key(where: str, config_cls: type) -> None:
    missing = [f.name for f in dataclasses.fields(config_cls) if f"`{f.name}`" not in README]
    assert not missing, f"README's configuration reference lacks {where} keys {missing}"
