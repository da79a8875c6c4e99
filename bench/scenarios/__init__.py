"""Bench scenarios: one module each with ``main(argv: list[str]) -> int`` (``python -m bench``)."""
