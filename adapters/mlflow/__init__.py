"""MLflow tracking servers (OSS, or Databricks by token) as a migration source and destination.

``MlflowSource`` reads experiments, runs, full metric histories and artifacts over the REST
API; ``MlflowDestination`` writes them back, idempotently (a tag carries the source run's
identity) and resumably (history replays never store a point twice).
"""

from adapters.mlflow._config import MlflowDestinationConfig as MlflowDestinationConfig
from adapters.mlflow._config import MlflowSourceConfig as MlflowSourceConfig
from adapters.mlflow._destination import MlflowDestination as MlflowDestination
from adapters.mlflow._destination import MlflowRunWriter as MlflowRunWriter
from adapters.mlflow._source import MlflowSource as MlflowSource

__all__ = [
    "MlflowDestination",
    "MlflowDestinationConfig",
    "MlflowRunWriter",
    "MlflowSource",
    "MlflowSourceConfig",
]
