"""``[ray]``: where and how a migration with ``[transfer] executor = "ray"`` runs.

Kept free of Ray imports so configuration loading works (and says what is missing) without Ray.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """``[ray]`` (read only when ``[transfer] executor = "ray"``).

    - ``address``: the Ray cluster: ``"auto"`` (the cluster this machine joined with
      ``ray start``), ``"ray://host:10001"`` (Ray Client), or empty (default) to start a local
      cluster for this migration.
    - ``workers``: worker actors, each running the pipeline on one shard at a time (default 4).
    - ``shard_runs``: runs per shard, the unit that is leased and re-leased (default 500).
    - ``ledger``: the ledger store every worker can reach: a directory on a shared volume
      (one JSONL file per shard and lease) or a ``postgresql://`` URI (default
      ``runferry-ledger.d``). Password-free URIs only; put a password in ``ledger_password_env``.
    - ``ledger_password_env``: environment variable holding the PostgreSQL password (optional).
    - ``lease_seconds``: how long a worker's lease on its shard lasts without renewal; a dead
      worker's shard is re-leased after it expires (default 30).
    - ``local_cpus``: CPUs of a local cluster started for this migration (default 4; workers
      take none, they are I/O-bound).
    """

    address: str = ""
    workers: int = 4
    shard_runs: int = 500
    ledger: str = "runferry-ledger.d"
    ledger_password_env: str = ""
    lease_seconds: float = 30.0
    local_cpus: int = 4

    def __post_init__(self) -> None:
        if self.workers < 1 or self.shard_runs < 1 or self.local_cpus < 1:
            raise ValueError("workers, shard_runs and local_cpus must be at least 1")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        if not self.ledger:
            raise ValueError("ledger must name a shared directory or a postgresql:// URI")
        if self.address and not (self.address == "auto" or self.address.startswith("ray://")):
            raise ValueError(f"address must be 'auto', 'ray://host:port' or empty, got {self.address!r}")
        if "@" in self.ledger and ":" in self.ledger.split("@")[0].split("//")[-1]:
            raise ValueError("ledger URI must not hold a password: name it with ledger_password_env")


def require_ray(origin: str) -> None:
    """``executor = "ray"`` needs the ``runferry[ray]`` extra: say so before anything runs."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            f"{origin}: [transfer] executor = \"ray\" needs Ray, which is not installed"
            " — pip install 'runferry[ray]' (or set executor = \"local\")"
        )
