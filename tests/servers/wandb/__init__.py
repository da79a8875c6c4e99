"""A W&B-compatible server for tests and benchmarks (placeholder docstring; see below)."""

from ._faults import Faults
from ._server import DEFAULT_API_KEY, DEFAULT_KEYS, WandbServer, launch, start_wandb_server
from ._state import ServerState

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_KEYS",
    "Faults",
    "ServerState",
    "WandbServer",
    "launch",
    "start_wandb_server",
]
