"""Reading back what ``MlflowDestination`` wrote (for ``verify``): the destination server is an
MLflow source with the same credentials, and a destination run id is an MLflow run id."""

from __future__ import annotations

from collections.abc import Callable

from core.protocols import AdapterContext
from adapters.mlflow._config import MlflowDestinationConfig, MlflowSourceConfig
from adapters.mlflow._source import MlflowSource
from core.model import Namespace, RunRef


def readback(config: MlflowDestinationConfig, context: AdapterContext) -> tuple[MlflowSource, Callable[[str, RunRef], RunRef]]:
    reader = MlflowSource(
        MlflowSourceConfig(
            tracking_uri=config.tracking_uri,
            username_env=config.username_env,
            password_env=config.password_env,
            token_env=config.token_env,
            timeout=config.timeout,
        ),
        context,
    )

    def ref_for(dest_id: str, source_ref: RunRef) -> RunRef:
        return RunRef(id=dest_id, namespace=Namespace("", source_ref.namespace.project))

    return reader, ref_for
