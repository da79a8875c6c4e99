"""A loopback stand-in for a Databricks workspace, in front of a real ``mlflow server``.

What it does like a workspace (and what the MLflow client and our source see):

- Every API call needs ``Authorization: Bearer <token>``: none is a 401, a wrong one a 403,
  both with Databricks' JSON error bodies (``error_code`` + ``message``).
- ``/api/2.0/mlflow/*`` is forwarded to the real server. The UI-internal ``/ajax-api/*``, the
  ``mlflow-artifacts`` proxy and ``/get-artifact`` are not served (404), as on a workspace's
  public API.
- Runs live under ``dbfs:/databricks/mlflow-tracking/<experiment_id>/<run_id>/artifacts``:
  ``artifact_uri`` is rewritten in ``runs/search`` and ``runs/get`` answers (and ``root_uri``
  in ``artifacts/list``), and ``artifacts/list`` is paged (``list_page_size`` entries a page,
  opaque ``page_token``).
- Artifact bytes are read as ``DatabricksArtifactRepository`` reads them:
  ``POST /api/2.0/mlflow/artifacts/credentials-for-read {run_id, path: [...]}`` answers one
  ``AWS_PRESIGNED_URL`` credential per path, whose ``signed_uri`` points back at this front
  (``/signed/...?X-Expires=..&X-Signature=..``, an HMAC over path and expiry) and whose
  ``headers`` must be sent with the GET. That GET is checked like a presigned S3 URL: wrong or
  missing signature or required header 403, past its expiry 403, and an ``Authorization``
  header next to the signature 400 ("Only one auth mechanism allowed"), all with S3's XML
  error bodies. The bytes are streamed from the real server's proxied artifacts.

Knobs for tests (all thread-safe to set between requests): ``expire_next`` / ``corrupt_next``
(the next N credentials are issued already expired / with a bad signature), ``url_ttl``
(seconds; negative issues only expired URLs), ``clock`` (the front's notion of now),
``list_pages_followed`` (``artifacts/list`` requests that carried a page token),
``fail(path_part, *answers)`` (scripted answers instead of forwarding, e.g. Databricks'
``REQUEST_LIMIT_EXCEEDED``). ``requests`` records ``(method, path, carried Authorization)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
from aiohttp import web

from tests.servers.loop_thread import ForwardingServer

API = "/api/2.0/mlflow/"
SIGNED = "/signed/"
REQUIRED_HEADER = ("x-amz-server-side-encryption", "AES256")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "authorization"}


@dataclass(frozen=True)
class Answer:
    """Answer this instead of forwarding (scripted through ``fail``)."""

    status: int
    body: bytes = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected"}'
    headers: dict[str, str] = field(default_factory=dict)


def request_limit_exceeded(retry_after: str = "0") -> Answer:
    """Databricks' answer to too many requests."""
    return Answer(
        429,
        b'{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Too many requests. Please wait and try again."}',
        {"Retry-After": retry_after},
    )


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error_code": code, "message": message}, status=status)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")


class DatabricksFront(ForwardingServer):
    def __init__(self, upstream: str, token: str, *, list_page_size: int = 2, url_ttl: float = 900.0) -> None:
        super().__init__("databricks-front")
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.list_page_size = list_page_size
        self.url_ttl = url_ttl
        self.clock: Callable[[], float] = time.time
        self.expire_next = 0
        self.corrupt_next = 0
        self.requests: list[tuple[str, str, bool]] = []
        self.list_pages_followed = 0
        self._secret = secrets.token_bytes(32)
        self._faults: dict[str, deque[Answer]] = defaultdict(deque)
        self._lock = threading.Lock()

    # -- test knobs -------------------------------------------------------------------------------
    def fail(self, path_part: str, *answers: Answer) -> None:
        with self._lock:
            self._faults[path_part].extend(answers)

    def count(self, path_part: str) -> int:
        with self._lock:
            return sum(1 for _, path, _ in self.requests if path_part in path)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.expire_next = self.corrupt_next = self.list_pages_followed = 0
            self.url_ttl = 900.0
            self.clock = time.time

    def sign(self, path: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    # -- serving ----------------------------------------------------------------------------------
    def _scripted(self, request: web.Request) -> Answer | None:
        with self._lock:
            self.requests.append((request.method, request.path, "Authorization" in request.headers))
            for part, queue in self._faults.items():
                if part in request.path and queue:
                    return queue.popleft()
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        scripted = self._scripted(request)
        if request.path.startswith(SIGNED):
            if scripted is not None:
                return web.Response(status=scripted.status, body=scripted.body, headers=scripted.headers)
            return await self._signed_get(request)
        if request.path.startswith("/.well-known/"):  # SDK host metadata: not offered here
            return _json_error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {request.path}'")
        refused = self._check_token(request)
        if refused is not None:
            return refused
        if scripted is not None:
            await request.read()
            return web.Response(status=scripted.status, body=scripted.body, headers=scripted.headers)
        path = request.path
        if not path.startswith(API):  # /ajax-api, /api/2.0/mlflow-artifacts, /get-artifact, ...
            return _json_error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {path}'")
        endpoint = path[len(API) :]
        if endpoint == "artifacts/credentials-for-read":
            return await self._credentials_for_read(request)
        if endpoint == "artifacts/list":
            return await self._list_artifacts(request)
        status, headers, payload = await self._forward(request)
        if status == 200 and endpoint in ("runs/search", "runs/get"):
            document = orjson.loads(payload)
            for run in document.get("runs", ()) if endpoint == "runs/search" else [document.get("run", {})]:
                info = run.get("info", {})
                if "run_id" in info:
                    info["artifact_uri"] = self.dbfs_root(info["experiment_id"], info["run_id"])
            payload = orjson.dumps(document)
        return web.Response(status=status, body=payload, headers=headers)

    def _check_token(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _json_error(401, "UNAUTHENTICATED", "Credential was not sent or was of an unsupported type for this API.")
        if not hmac.compare_digest(header[len("Bearer ") :].encode(), self.token.encode()):
            return _json_error(403, "PERMISSION_DENIED", "Invalid access token.")
        return None

    @staticmethod
    def dbfs_root(experiment_id: str, run_id: str) -> str:
        return f"dbfs:/databricks/mlflow-tracking/{experiment_id}/{run_id}/artifacts"

    async def _forward(self, request: web.Request, *, query: Any = None) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        async with self.session.request(
            request.method,
            self.upstream + request.path,
            params=list(request.query.items()) if query is None else query,
            headers=headers,
            data=body,
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return upstream.status, out, payload

    async def _upstream_json(self, endpoint: str, params: dict[str, str]) -> tuple[int, Any]:
        async with self.session.get(self.upstream + API + endpoint, params=params) as upstream:
            return upstream.status, orjson.loads(await upstream.read())

    # -- artifacts/list, paged ----------------------------------------------------------------------
    async def _list_artifacts(self, request: web.Request) -> web.Response:
        token = request.query.get("page_token", "")
        offset = 0
        if token:
            with self._lock:
                self.list_pages_followed += 1
            try:
                offset = int(orjson.loads(base64.urlsafe_b64decode(token))["offset"])
            except (ValueError, KeyError, TypeError):
                return _json_error(400, "INVALID_PARAMETER_VALUE", "Invalid page token")
        query = [(k, v) for k, v in request.query.items() if k != "page_token"]
        status, headers, payload = await self._forward(request, query=query)
        if status != 200:
            return web.Response(status=status, body=payload, headers=headers)
        document = orjson.loads(payload)
        files = document.get("files", [])
        page = files[offset : offset + self.list_page_size]
        out: dict[str, Any] = {"files": page}
        run_id = request.query.get("run_id") or request.query.get("run_uuid", "")
        _, run = await self._upstream_json("runs/get", {"run_id": run_id})
        info = run.get("run", {}).get("info", {})
        if info:
            out["root_uri"] = self.dbfs_root(info["experiment_id"], info["run_id"])
        if offset + self.list_page_size < len(files):
            out["next_page_token"] = base64.urlsafe_b64encode(orjson.dumps({"offset": offset + self.list_page_size})).decode()
        return web.json_response(out)

    # -- credentials-for-read and the signed GETs -----------------------------------------------------
    async def _credentials_for_read(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _json_error(405, "BAD_REQUEST", "credentials-for-read is POST only")
        body = orjson.loads(await request.read() or b"{}")
        run_id = body.get("run_id", "")
        paths = body.get("path", [])
        if isinstance(paths, str):
            paths = [paths]
        if not run_id or not paths:
            return _json_error(400, "INVALID_PARAMETER_VALUE", "run_id and path are required")
        status, run = await self._upstream_json("runs/get", {"run_id": run_id})
        if status != 200:
            return web.json_response(run, status=status)
        root = urlsplit(run["run"]["info"]["artifact_uri"]).path.strip("/")  # mlflow-artifacts:/<exp>/<run>/artifacts
        infos = []
        now = self.clock()
        for rel in paths:
            with self._lock:
                expired, self.expire_next = self.expire_next > 0, max(0, self.expire_next - 1)
                corrupt, self.corrupt_next = self.corrupt_next > 0, max(0, self.corrupt_next - 1)
            expires = int(now - 60 if expired else now + self.url_ttl)
            object_path = SIGNED + quote(f"{root}/{rel}", safe="/")
            signature = self.sign(object_path, expires)
            if corrupt:
                signature = ("0" if signature[0] != "0" else "1") + signature[1:]
            infos.append(
                {
                    "run_id": run_id,
                    "path": rel,
                    "signed_uri": f"{self.url}{object_path}?X-Expires={expires}&X-Signature={signature}",
                    "type": "AWS_PRESIGNED_URL",
                    "headers": [{"name": REQUIRED_HEADER[0], "value": REQUIRED_HEADER[1]}],
                }
            )
        return web.json_response({"credential_infos": infos})

    async def _signed_get(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _s3_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        if "Authorization" in request.headers:
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified")
        expires_text = request.query.get("X-Expires", "")
        signature = request.query.get("X-Signature", "")
        if not expires_text.isdigit() or not signature:
            return _s3_error(403, "AccessDenied", "Query-string authentication requires the Signature and Expires parameters")
        path = request.raw_path.split("?", 1)[0]
        if not hmac.compare_digest(signature, self.sign(path, int(expires_text))):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
        if int(expires_text) < self.clock():
            return _s3_error(403, "AccessDenied", "Request has expired")
        if request.headers.get(REQUIRED_HEADER[0]) != REQUIRED_HEADER[1]:
            return _s3_error(403, "AccessDenied", f"Missing required header for this request: {REQUIRED_HEADER[0]}")
        upstream_path = "/api/2.0/mlflow-artifacts/artifacts/" + quote(unquote(path[len(SIGNED) :]), safe="/")
        headers = {"Range": request.headers["Range"]} if "Range" in request.headers else {}
        async with self.session.get(self.upstream + upstream_path, headers=headers) as upstream:
            if upstream.status == 404:
                return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
            if upstream.status >= 300:
                return _s3_error(upstream.status, "InternalError", (await upstream.read())[:200].decode("utf-8", "replace"))
            response = web.StreamResponse(status=upstream.status)
            for name in ("Content-Length", "Content-Range", "Content-Type"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            if request.method == "GET":
                async for piece in upstream.content.iter_chunked(1 << 16):
                    await response.write(piece)
            await response.write_eof()
            return response
