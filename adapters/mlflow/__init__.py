"""MLflow tracking servers (OSS, or Databricks by token) as a migration source and destination.

``MlflowSource`` reads experiments, runs, full metric histories and artifacts over the REST
API; ``MlflowDestination`` writes them back, idempotently (a tag carries the source run's
identity) and resumably (history replays never store a point twice).
"""

from importlib import import_module
from typing import Any

# Imported on first use (PEP 562): a migration that reads MLflow never loads the writer's
# modules, and one that writes it never loads the reader's.
_HOME = {
    "MlflowDestinationConfig": "_config",
    "MlflowSourceConfig": "_config",
    "MlflowDestination": "_destination",
    "MlflowRunWriter": "_writer",
    "MlflowSource": "_source",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = [
    "MlflowDestination",
    "MlflowDestinationConfig",
    "MlflowRunWriter",
    "MlflowSource",
    "MlflowSourceConfig",
]
