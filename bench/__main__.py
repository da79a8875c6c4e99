"""``python -m bench NAME [args]`` runs ``bench/scenarios/NAME.py``'s ``main(argv) -> int``;
``python -m bench`` lists the scenarios with the first line of their docstrings;
``python -m bench report`` renders the table and charts from bench/results/*.json."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.py") if not p.stem.startswith("_"))


def _summary(name: str) -> str:
    """First docstring line, read without importing (a scenario's imports may be heavy)."""
    doc = ast.get_docstring(ast.parse((SCENARIOS / f"{name}.py").read_text()))
    return doc.strip().splitlines()[0] if doc else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = scenario_names()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench NAME [args]   (python -m bench NAME --help for its options)")
        print("       python -m bench report [--out FILE]   (table and charts from bench/results/*.json)\n")
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f"  {name.ljust(width)}  {_summary(name)}")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "report":
        from bench.report import main as report

        return report(rest)
    if name not in names:
        print(f"bench: unknown scenario {name!r}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    from bench.common import compile_sources

    compile_sources()  # runferry's children start from bytecode, as an installed runferry does
    module = importlib.import_module(f"bench.scenarios.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
