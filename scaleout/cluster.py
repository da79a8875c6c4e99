"""Connecting to Ray and making worker actors: the only place the driver touches Ray's API.

``address = ""`` starts a local cluster for this migration (no dashboard, a small object store:
runferry moves data worker -> destination, never through Ray's object store) and shuts it down
at the end; ``"auto"`` / ``"ray://..."`` join an existing one. A process where Ray is already
initialised (tests, notebooks) keeps its cluster. Workers are async actors with ``num_cpus=0``
(I/O-bound; asking for CPUs the cluster lacks would wait forever, silently) and no restarts: a
dead worker is replaced by the scheduler, which knows what its shard needs.
"""

from __future__ import annotations

import logging

import os
from types import TracebackType
from typing import Any, Self

from engine.config import Config
from scaleout.config import RayConfig

LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024


class RayCluster:
    def __init__(self, config: RayConfig) -> None:
        self.config = config
        self._started = False
        self._names: dict[int, str] = {}
        self._actors: list[Any] = []
        self._limiter: Any = None

    def __enter__(self) -> Self:
        import ray

        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else this Ray writes ~/.ray/auth_token
            if self.config.address:
                ray.init(address=self.config.address, logging_level=logging.WARNING)
            else:
                # "local": a new cluster even when RAY_ADDRESS or a `ray start` on this machine
                # would otherwise be joined (where num_cpus is refused)
                ray.init(address="local", num_cpus=self.config.local_cpus, include_dashboard=False,
                         logging_level=logging.WARNING, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
            self._started = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        if self._limiter is not None:
            ray.kill(self._limiter, no_restart=True)
        if self._started:
            ray.shutdown()

    def worker(self, config: Config, name: str, *, kill_at_line: int = 0) -> Any:
        import ray

        from scaleout.limiter import cluster_limiters
        from scaleout.worker import ShardWorker

        remote = ray.remote(ShardWorker).options(num_cpus=0, max_restarts=0, name=name, lifetime=None)
        actor = remote.remote(config, name, limiters=cluster_limiters(config), kill_at_line=kill_at_line)
        self._names[id(actor)] = name
        self._actors.append(actor)
        return actor

    def start_limiter(self, config: Config) -> None:
        """The named limiter authority (``scaleout.limiter``), before any worker looks it up."""
        from scaleout.limiter import start_authority

        self._limiter = start_authority(config)

    def name_of(self, actor: Any) -> str:
        return self._names.get(id(actor), "?")

    def kill(self, actor: Any) -> None:
        import ray

        if actor is not None:
            ray.kill(actor, no_restart=True)
