"""Dependencies run one way: core <- ratelimit-free adapters <- engine (issue #14).

``core`` (model, errors, protocols) and ``ratelimit`` import nothing of ours; adapters never
import the engine; the ledger never imports adapters. Checked on the source (``ast``), so a
function-local import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"core", "engine", "adapters", "ratelimit", "bench"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages of ours that ``path`` imports (relative imports stay in its package)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for block in ast.walk(tree):  # ``if TYPE_CHECKING:`` imports are annotations, not dependencies
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize(
    ("files", "allowed"),
    [
        ("core/**/*.py", {"core"}),
        ("ratelimit/**/*.py", {"ratelimit"}),
        ("adapters/**/*.py", {"core", "adapters", "ratelimit"}),
        ("engine/ledger.py", {"core", "engine"}),  # engine.ledger_writer only (below)
        ("engine/ledger_writer.py", set()),
    ],
)
def test_imports_run_one_way(files: str, allowed: set[str]) -> None:
    paths = sorted(ROOT.glob(files))
    assert paths, files
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - allowed)
        for path in paths
        if imported_packages(path) - allowed
    }
    assert offenders == {}


def test_the_ledger_imports_of_the_engine_only_its_writer() -> None:
    tree = ast.parse((ROOT / "engine" / "ledger.py").read_text())
    engine_modules = {node.module for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("engine")}
    assert engine_modules == {"engine.ledger_writer"}
