"""Artifacts of Databricks-hosted runs (``dbfs:/databricks/mlflow-tracking/<exp>/<run>/...``).

A workspace does not serve these bytes through its REST API. It hands out short-lived signed
URLs of the cloud store behind it, as it does for MLflow's own ``DatabricksArtifactRepository``:
``POST /api/2.0/mlflow/artifacts/credentials-for-read {run_id, path: [...]}`` answers one
``ArtifactCredentialInfo`` per path (``signed_uri``, ``type`` such as ``AWS_PRESIGNED_URL``,
and ``headers`` the GET must carry). The file is then one plain GET of the signed URI,
streamed. Credentials are asked per file, just before its GET: they expire within minutes, so
asking for a whole run's files at listing time would hand out URLs that die in the queue.

That GET goes through a client of its own, without the workspace's ``Authorization`` header:
the token must never reach the cloud store (and S3 refuses a presigned URL that comes with a
second credential). A signed URL that is refused (403: expired, or a signature the store does
not accept) is replaced by a fresh one once, before any byte has been yielded; a second refusal
fails the file with a clear message. Throttles and transient failures of either request are
retried by the shared ``HttpClient``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from core.protocols import AdapterContext
from adapters.http import HttpClient, classify_default, redact_url
from adapters.mlflow._client import MlflowRest
from core.errors import AuthError, FatalError

CREDENTIALS_FOR_READ = "artifacts/credentials-for-read"
DBFS_RUN_PREFIX = "dbfs:/databricks/mlflow-tracking/"

# Credential types whose signed URI is read with one plain GET (mlflow:
# DatabricksArtifactRepository._download_from_cloud accepts exactly these four). Proto JSON
# names the enum; a number is accepted too (mlflow/protos/databricks_artifacts.proto).
_PLAIN_GET_TYPES = {
    "AZURE_SAS_URI": 1,
    "AWS_PRESIGNED_URL": 2,
    "GCP_SIGNED_URL": 3,
    "AZURE_ADLS_GEN2_SAS_URI": 4,
}


def is_databricks_run_uri(artifact_uri: str) -> bool:
    """True for the access-controlled run roots a workspace signs URLs for."""
    return artifact_uri.startswith(DBFS_RUN_PREFIX)


@dataclass(frozen=True)
class ReadCredential:
    """One signed URL and the headers its GET must carry; never logged (the URL is a secret)."""

    signed_uri: str
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"ReadCredential({redact_url(self.signed_uri)!r})"


def parse_credential(info: Mapping[str, Any], *, run_id: str, path: str) -> ReadCredential:
    """An ``ArtifactCredentialInfo`` JSON object as a ``ReadCredential``, or a ``FatalError``
    for credential types we cannot read with a plain GET."""
    kind = info.get("type")
    if kind not in _PLAIN_GET_TYPES and kind not in _PLAIN_GET_TYPES.values():
        raise FatalError(
            f"mlflow: databricks artifact {path!r}: credential type {kind!r} is not supported "
            f"(expected one of {', '.join(_PLAIN_GET_TYPES)})",
            adapter="mlflow",
            run=run_id,
        )
    uri = info.get("signed_uri") or ""
    if not uri.startswith(("https://", "http://")):
        raise FatalError(f"mlflow: databricks artifact {path!r}: no usable signed_uri in the answer", adapter="mlflow", run=run_id)
    headers = {h["name"]: h.get("value", "") for h in info.get("headers", ()) if h.get("name")}
    return ReadCredential(uri, headers)


class DatabricksArtifacts:
    """Reads files of Databricks runs through signed URLs. ``async with`` it.

    :param rest: the workspace's REST client (bearer token; asks for credentials)
    :param piece: largest piece yielded while streaming a file
    """

    def __init__(self, rest: MlflowRest, *, context: AdapterContext, timeout: float, piece: int = 1 << 20) -> None:
        self.rest = rest
        self.piece = piece
        # No default headers: the workspace token must not travel to the cloud store.
        self.http = HttpClient(
            base_url="", name="databricks-signed-url", context=context, classify=classify_default, timeout=timeout
        )

    async def __aenter__(self) -> DatabricksArtifacts:
        await self.http.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.__aexit__(exc_type, exc, tb)

    async def credential(self, run_id: str, path: str) -> ReadCredential:
        """A fresh read credential for one file (``path`` relative to the run's artifact root)."""
        # One path asked, one credential answered (paging only splits answers for many paths,
        # and MLflow's client stops at an empty page too); the answer's ``path`` may be spelled
        # relative to another root, so it is not compared.
        page = await self.rest.post(CREDENTIALS_FOR_READ, {"run_id": run_id, "path": [path]})
        infos = page.get("credential_infos") or []
        if infos:
            return parse_credential(infos[0], run_id=run_id, path=path)
        raise FatalError(f"mlflow: databricks gave no read credential for artifact {path!r}", adapter="mlflow", run=run_id)

    async def read(self, run_id: str, path: str) -> AsyncGenerator[bytes, None]:
        """The file's bytes in pieces; one credential refresh when the signed URL is refused."""
        credential = await self.credential(run_id, path)
        for attempt in (1, 2):
            try:
                async for piece in self.http.download(credential.signed_uri, headers=credential.headers, chunk_size=self.piece):
                    yield piece
                return
            except AuthError as exc:  # raised before the first piece: nothing was yielded yet
                if attempt == 2:
                    raise FatalError(
                        f"mlflow: databricks artifact {path!r}: the storage refused a freshly signed URL twice "
                        f"(expired or invalid signature; check the clock and the workspace's storage access): {exc}",
                        adapter="mlflow",
                        run=run_id,
                    ) from exc
                self.http.context.events("signed_url_refreshed", run=run_id, path=path)
                credential = await self.credential(run_id, path)
