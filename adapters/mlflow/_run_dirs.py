"""Which runs of an experiment have any artifact, from ONE listing of the experiment's root.

Why: a server that proxies artifacts (``mlflow server --serve-artifacts``) keeps a run's files
under ``<experiment root>/<run_id>/artifacts/``, and that directory only exists once the run
logged something (on local disk and in S3-backed proxies alike: a prefix without objects is no
directory). Listing the experiment's root once tells which runs have none, and spares the
tracking server one artifact listing per such run (~6 ms of its CPU each on mlflow 3; most runs
of a sweep have no files).

A run is judged on that evidence only when nothing can have reached it since the listing:

- its ``artifact_uri`` is exactly ``<its experiment's artifact_location>/<run_id>/artifacts``
  and that location is served by the proxy (``mlflow-artifacts:/...``);
- it is terminal (FINISHED, FAILED or KILLED) and its end time (the server's clock) is more
  than ``SKEW_MARGIN`` before the listing was requested (our clock, read just before the
  request went out: the server's snapshot is taken after that, however long it takes).

Every other run is listed on its own, as is a run whose directory the listing shows. An
experiment whose listing is refused (400/403/404...) is listed run by run; transient errors
are retried by the ``HttpClient`` and, if they persist, fail the run as a run's own listing
would. The limit, as for any snapshot: a file logged to an already-finished run after the
listing is not seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from adapters.mlflow._client import MlflowRest, proxied_root
from core.errors import AuthError, FatalError, NotFoundError
from core.model import RunRecord, RunState
from core.protocols import EventHook

SKEW_MARGIN = 300.0
"""Seconds a run must have ended before the listing: covers a server clock ahead of ours."""

_TERMINAL = frozenset({RunState.FINISHED, RunState.FAILED, RunState.KILLED})


@dataclass(frozen=True)
class _Listing:
    taken_at: float  # our wall clock just before the request went out
    run_ids: frozenset[str]  # the run directories under the experiment's root


class RunsWithArtifacts:
    """Per experiment, the run directories under its proxied root, listed lazily and once."""

    def __init__(
        self,
        rest: MlflowRest,
        experiments: Iterable[dict[str, Any]],
        *,
        events: EventHook,
        wall_clock: Callable[[], float] = time.time,
        margin: float = SKEW_MARGIN,
    ) -> None:
        self._rest = rest
        self._events = events
        self.wall_clock = wall_clock
        self.margin = margin
        self._locations = {
            str(e["experiment_id"]): location.rstrip("/")
            for e in experiments
            if proxied_root(location := str(e.get("artifact_location") or ""))  # "" is the whole store
        }
        self._listings: dict[str, _Listing | None] = {}  # None: refused, list run by run
        self._locks: dict[str, anyio.Lock] = {}

    async def surely_empty(self, run: RunRecord) -> bool:
        """True when the run has no artifact for sure (see the module docstring); False means
        "list it": it has some, or nothing here can tell."""
        experiment_id = str(run.system.get("experiment_id", ""))
        location = self._locations.get(experiment_id)
        if location is None or run.state not in _TERMINAL or run.end_time is None:
            return False
        if run.system.get("artifact_uri") != f"{location}/{run.ref.id}/artifacts":
            return False
        if run.end_time + self.margin >= self.wall_clock():
            return False  # ended too recently: a listing taken now could not tell either
        listing = await self._listing(experiment_id, location)
        return listing is not None and run.end_time + self.margin < listing.taken_at and run.ref.id not in listing.run_ids

    async def _listing(self, experiment_id: str, location: str) -> _Listing | None:
        if experiment_id in self._listings:
            return self._listings[experiment_id]
        async with self._locks.setdefault(experiment_id, anyio.Lock()):  # one request for all who ask
            if experiment_id not in self._listings:
                self._listings[experiment_id] = await self._take(experiment_id, location)
            return self._listings[experiment_id]

    async def _take(self, experiment_id: str, location: str) -> _Listing | None:
        root = proxied_root(location)
        assert root  # only proxied locations are kept
        taken_at = self.wall_clock()
        try:
            entries = await self._rest.list_proxied(root)
        except (AuthError, NotFoundError, FatalError) as exc:
            self._events("mlflow_experiment_listing_refused", experiment=experiment_id, error=type(exc).__name__)
            return None
        return _Listing(taken_at, frozenset(str(e["path"]) for e in entries if e.get("is_dir")))
