"""MLflow's REST API as a handful of async calls over the shared ``HttpClient``.

Why a layer of its own: the source and destination need the same paging loops, the same
encoding of metric values (NaN and infinities travel as the JSON strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"``, which stdlib ``json`` would write as invalid bare literals)
and the same URL rules for proxied artifacts. Nothing here knows about runs as the engine
sees them; ``_source`` and ``_destination`` do the mapping.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from core.protocols import AdapterContext
from adapters.http import Classification, HttpClient, classify_default
from adapters.mlflow._bulk import BULK_PATH
from adapters.mlflow._config import Connection
from core.errors import AuthError

API = "/api/2.0/mlflow/"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/"
VIEW_TYPES = {False: "ACTIVE_ONLY", True: "ALL"}

# Databricks answers some overloads with a 4xx/5xx carrying these codes instead of a plain 429.
_THROTTLE_CODES = (b"REQUEST_LIMIT_EXCEEDED", b"TOO_MANY_REQUESTS")
_TRANSIENT_CODES = (b"TEMPORARILY_UNAVAILABLE",)
# An overloaded SQL store answers 400/500 once a request gave up waiting for its database:
# SQLAlchemy's pool ran dry, or SQLite stayed locked. Nothing was done; slow down and retry.
_OVERLOAD_SIGNS = (b"QueuePool limit", b"database is locked")


def classify_mlflow(status: int, headers: Mapping[str, str], body: bytes) -> Classification:
    """Plain HTTP semantics, plus MLflow/Databricks error codes and SQL-store overloads that
    mean "try again later"; 501 Not Implemented (e.g. multipart on a local artifact store) is
    final, not transient."""
    if status == 501:
        return Classification.FATAL
    verdict = classify_default(status, headers, body)
    head = body[:512]
    if verdict in (Classification.FATAL, Classification.TRANSIENT) and any(sign in head for sign in _OVERLOAD_SIGNS):
        return Classification.THROTTLE
    if verdict is Classification.FATAL:
        if any(code in head for code in _THROTTLE_CODES):
            return Classification.THROTTLE
        if any(code in head for code in _TRANSIENT_CODES):
            return Classification.TRANSIENT
    return verdict


def encode_value(value: float) -> float | str:
    """A metric value as MLflow's JSON wants it (protobuf JSON mapping of doubles)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def decode_value(value: Any) -> float:
    """Inverse of ``encode_value``; ints become floats, absent values are 0.0 (proto default)."""
    if value is None:
        return 0.0
    return float(value)  # float("NaN"), float("Infinity") and float("-Infinity") all parse


def proxied_artifact_path(artifact_uri: str, rel_path: str = "") -> str | None:
    """``mlflow-artifacts:/1/<run>/artifacts`` + ``a b/c.txt`` -> the proxy's URL path, quoted.

    None when the run's artifacts are not served by the tracking server's proxy.
    """
    root = proxied_root(artifact_uri)
    if root is None:
        return None
    full = f"{root}/{rel_path}" if rel_path else root
    return ARTIFACTS_API + "artifacts/" + quote(full, safe="/")


def proxied_root(artifact_uri: str) -> str | None:
    """``mlflow-artifacts:/1/<run>/artifacts`` -> ``1/<run>/artifacts``, the root's path in the
    tracking server's artifact proxy; None when the proxy does not serve the run's artifacts."""
    if not artifact_uri.startswith("mlflow-artifacts:"):
        return None
    return urlsplit(artifact_uri).path.strip("/")


class MlflowRest:
    """One tracking server: JSON calls, paged searches, artifact streams. ``async with`` it."""

    def __init__(
        self, connection: Connection, *, name: str, context: AdapterContext, timeout: float, max_in_flight: int = 6
    ) -> None:
        self.connection = connection
        self.http = HttpClient(
            base_url=connection.base_url,
            name=name,
            context=context,
            headers={"Accept": "application/json", **connection.headers},
            auth=connection.auth,
            classify=classify_mlflow,
            timeout=timeout,
            limit_per_host=max_in_flight,  # more waits for a connection here, not in the server's pool
        )

    async def __aenter__(self) -> MlflowRest:
        await self.http.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.__aexit__(exc_type, exc, tb)

    # -- plain calls ---------------------------------------------------------------------------
    async def get(self, endpoint: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self.http.request_json("GET", API + endpoint, params=params) or {}

    async def post(self, endpoint: str, body: Mapping[str, Any], *, retry_transient: bool = True) -> dict[str, Any]:
        data = orjson.dumps(body)
        return (
            await self.http.request_json(
                "POST",
                API + endpoint,
                data=data,
                headers={"Content-Type": "application/json"},
                retry_transient=retry_transient,
            )
            or {}
        )

    async def check_access(self) -> None:
        """One cheap authenticated call, so bad credentials fail before any work starts."""
        try:
            await self.get("experiments/search", {"max_results": 1})
        except AuthError as exc:
            names = ", ".join(self.connection.credential_names) or "none configured: set token_env or username_env/password_env"
            raise AuthError(f"{exc} (credentials from: {names})") from None

    # -- paged searches -------------------------------------------------------------------------
    async def search_experiments(self, *, include_deleted: bool, page_size: int = 1000) -> AsyncGenerator[dict[str, Any], None]:
        token = None
        while True:
            body: dict[str, Any] = {"max_results": page_size, "view_type": VIEW_TYPES[include_deleted]}
            if token:
                body["page_token"] = token
            page = await self.post("experiments/search", body)
            for experiment in page.get("experiments", ()):
                yield experiment
            token = page.get("next_page_token")
            if not token:
                return

    async def search_runs(
        self,
        experiment_ids: list[str],
        *,
        filter: str = "",
        include_deleted: bool = False,
        page_size: int = 1000,
        first_page_size: int | None = None,
        order_by: tuple[str, ...] = ("attributes.start_time ASC",),
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every matching run (all pages), in a stable order (offset paging needs one). A
        smaller ``first_page_size`` hands out the first runs sooner (a server spends about a
        millisecond a run on a search page), so their reading overlaps the listing of the rest."""
        token = None
        size = min(page_size, first_page_size or page_size)
        while True:
            body: dict[str, Any] = {
                "experiment_ids": experiment_ids,
                "max_results": size,
                "run_view_type": VIEW_TYPES[include_deleted],
                "order_by": list(order_by),
            }
            if filter:
                body["filter"] = filter
            if token:
                body["page_token"] = token
            page = await self.post("runs/search", body)
            for run in page.get("runs", ()):
                yield run
            size = page_size
            token = page.get("next_page_token")
            if not token:
                return

    async def history_page(
        self, run_id: str, key: str, *, page_size: int, token: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a key's full history and the next page's token (None at the end). Old
        servers ignore ``max_results`` and answer everything at once without a token; both
        end the same way."""
        params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": page_size}
        if token:
            params["page_token"] = token
        page = await self.get("metrics/get-history", params)
        return page.get("metrics", []), page.get("next_page_token") or None

    async def history_bulk(self, key: str, run_ids: list[str], max_points: int) -> list[dict[str, Any]]:
        """Every point of ``key`` for these runs, cut at ``max_points`` (see ``_bulk``)."""
        params = [("metric_key", key), ("max_results", max_points), *(("run_id", run_id) for run_id in run_ids)]
        page = await self.http.request_json("GET", BULK_PATH, params=params) or {}
        metrics: list[dict[str, Any]] = page.get("metrics", [])
        return metrics

    async def list_proxied(self, root: str, path: str = "") -> list[dict[str, Any]]:
        """One directory level of the server's artifact proxy: ``path`` under ``root`` (a
        ``proxied_root``), entries named relative to ``root`` (the proxy names them by their
        base name; it never pages)."""
        full = f"{root}/{path}" if path else root
        page = await self.http.request_json("GET", ARTIFACTS_API + "artifacts", params={"path": full}) or {}
        return [{**entry, "path": f"{path}/{entry['path']}" if path else entry["path"]} for entry in page.get("files", ())]

    async def list_artifacts(self, run_id: str, path: str, *, artifact_uri: str = "") -> list[dict[str, Any]]:
        """One directory level, paths relative to the run's artifact root (OSS never pages it;
        follow a token anyway, Databricks does). A root the server's proxy serves
        (``mlflow-artifacts:``, given as ``artifact_uri``) is listed there: the same entries for
        less than half the server's CPU (``artifacts/list`` first looks the run up in the
        database: ~15 against ~6 ms a call on mlflow 3, most of a small run's cost)."""
        root = proxied_root(artifact_uri)
        if root is not None:
            return await self.list_proxied(root, path)
        entries: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"run_id": run_id}
            if path:
                params["path"] = path
            if token:
                params["page_token"] = token
            page = await self.get("artifacts/list", params)
            entries.extend(page.get("files", ()))
            token = page.get("next_page_token")
            if not token:
                return entries
