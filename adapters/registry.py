"""Which adapter class serves which ``type`` in the config; imported lazily so that one
adapter's dependencies never slow down or break another's."""

from __future__ import annotations

import importlib
from typing import Any

SOURCES: dict[str, str] = {
    "synthetic": "adapters.synthetic:SyntheticSource",
    "local": "adapters.local:LocalSource",
    "mlflow": "adapters.mlflow:MlflowSource",
    "wandb": "adapters.wandb:WandbSource",
}

DESTINATIONS: dict[str, str] = {
    "local": "adapters.local:LocalDestination",
    "mlflow": "adapters.mlflow:MlflowDestination",
    "wandb": "adapters.wandb:WandbDestination",
}

READERS: dict[str, str] = {
    "local": "adapters.local._readback:readback",
    "mlflow": "adapters.mlflow._readback:readback",
    "wandb": "adapters.wandb._readback:readback",
}
"""Destinations that can be read back for ``verify``: ``readback(dest_config, context)`` returns
a Source over the destination and ``ref_for(dest_id, source_ref) -> RunRef``."""

STORED_FLOATS: dict[str, str] = {
    "mlflow": "adapters.mlflow._readback:stored_floats",
}
"""Destinations that hold some floats in a form of their own (MLflow's SQL store: ``±inf`` as
``±DBL_MAX``, ``-0.0`` as ``0.0``): ``stored_floats(float64 array) -> float64 array``, which
``verify`` applies to both sides before it calls a difference the destination's number form."""


def load(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)
