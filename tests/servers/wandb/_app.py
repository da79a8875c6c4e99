"""The aiohttp application: auth, faults, GraphQL, file_stream, run-file and storage routes.

Why: one process answers everything the W&B SDK talks to (GraphQL, file_stream and the
presigned object-storage URLs it hands out), so a test needs a single fixture.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import math
import os
import secrets
from typing import Any

from aiohttp import web
from graphql import GraphQLError

from . import _artifacts_api as arts
from . import _runs_api as runs_api
from ._exports import export_history
from ._faults import Faults
from ._gql import Executor, GqlFieldError, UnknownOperation, error_entry, parse_request
from ._state import Blob, ServerState, write_lines

STATE_KEY = web.AppKey("state", ServerState)
FAULTS_KEY = web.AppKey("faults", Faults)
CONFIG_KEY = web.AppKey("config", dict)


class RateLimited(Exception):
    def __init__(self, retry_after: int):
        super().__init__(retry_after)
        self.retry_after = retry_after


def _finite(value: Any) -> Any:
    """Non-finite floats in JSON-typed fields become "NaN"/"Infinity"/"-Infinity" strings
    (strict JSON parsers, e.g. wandb-core's Go decoder, reject bare NaN tokens)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json(body: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(_finite(body), allow_nan=False),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _s3_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(text=body, status=status, content_type="application/xml", headers=headers)


def _target(path: str) -> str:
    if path.startswith("/graphql"):
        return "graphql"
    if path.startswith("/storage/"):
        return "storage"
    if path.endswith("/file_stream"):
        return "filestream"
    return "files"


@web.middleware
async def faults_middleware(request: web.Request, handler):
    faults = request.app[FAULTS_KEY]
    target = _target(request.path)
    if faults.latency_s and target in faults.targets:
        faults.note(f"latency:{target}")
        await asyncio.sleep(faults.latency_s)
    outcome = faults.decide(target)
    if outcome == "drop":
        await request.read()
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()  # aiohttp stops handling this request silently
    if isinstance(outcome, int):
        if target == "storage" and outcome == 503:
            return _s3_error(503, "SlowDown", "Please reduce your request rate.")
        headers = {"Retry-After": "1"} if outcome == 429 else None
        return _json({"errors": [{"message": f"injected fault: HTTP {outcome}"}]}, outcome, headers)
    if target == "storage" and faults.storage_slowdown_rps is not None:
        if faults.rate_limited("storage", "all", faults.storage_slowdown_rps) is not None:
            return _s3_error(503, "SlowDown", "Please reduce your request rate.")
    return await handler(request)


def _caller(request: web.Request) -> tuple[str, tuple[str, ...]] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        _, _, key = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    entities = request.app[CONFIG_KEY]["keys"].get(key)
    if not entities:
        return None
    return entities[0], tuple(entities)


def _unauthorized() -> web.Response:
    return _json(
        {"errors": [{"message": "user is not logged in", "extensions": {"code": "PERMISSION_ERROR"}}]},
        401,
        {"WWW-Authenticate": 'Basic realm="wandb"'},
    )


def _forbidden(path: list | None = None) -> web.Response:
    body: dict[str, Any] = {"errors": [error_entry("permission denied", path, "PERMISSION_ERROR")]}
    body["data"] = {path[0]: None} if path else None
    return _json(body, 403)


def _ctx(request: web.Request, caller: tuple[str, tuple[str, ...]]) -> runs_api.Ctx:
    config = request.app[CONFIG_KEY]
    return runs_api.Ctx(
        state=request.app[STATE_KEY],
        base_url=config["base_url"],
        username=caller[0],
        entities=caller[1],
        storage_token=config["storage_token"],
    )


def root_resolvers(request: web.Request, ctx: runs_api.Ctx) -> dict:
    faults = request.app[FAULTS_KEY]

    def on_create(entity: str, project: str) -> None:
        retry = faults.rate_limited("run_create", (entity, project), faults.run_creation_rps_per_project)
        if retry is not None:
            raise RateLimited(retry)

    def introspect_type(args: dict) -> dict:
        return {"name": args.get("name"), "fields": [], "inputFields": [], "enumValues": []}

    resolvers = {
        "viewer": lambda a: runs_api.viewer(ctx),
        "serverInfo": lambda a: runs_api.server_info(ctx),
        "project": lambda a: runs_api.project_node(ctx, a),
        "model": lambda a: runs_api.project_node(ctx, a),
        "models": lambda a: runs_api.projects_connection(ctx, a),
        "projects": lambda a: runs_api.projects_connection(ctx, a),
        "upsertBucket": lambda a: runs_api.upsert_bucket(ctx, a, on_create),
        "createRunFiles": lambda a: runs_api.create_run_files(ctx, a),
        "markRunFilesUploaded": lambda a: runs_api.mark_run_files_uploaded(ctx, a),
        "entity": lambda a: {"name": ctx.entity(a.get("name")), "organization": None},
        "__type": introspect_type,
    }
    resolvers.update(arts.root_resolvers(ctx))
    return resolvers


async def graphql_handler(request: web.Request) -> web.Response:
    caller = _caller(request)
    if caller is None:
        return _unauthorized()
    raw = await request.read()
    raw = _maybe_gunzip(request, raw)
    payload = json.loads(raw)
    state = request.app[STATE_KEY]
    try:
        parsed = parse_request(payload["query"], payload.get("variables"), payload.get("operationName"))
    except GraphQLError as exc:
        return _json({"errors": [error_entry(f"syntax error: {exc.message}")], "data": None}, 400)
    with state.lock:
        state.request_log.append(("graphql", parsed.name))
        state.documents[parsed.name] = payload["query"]
        state.last_variables[parsed.name] = parsed.variables
    ctx = _ctx(request, caller)
    executor = Executor(parsed, root_resolvers(request, ctx))
    try:
        data = executor.run()
    except UnknownOperation as exc:
        with state.lock:
            state.unknown_operations.append(str(exc))
        print(f"[fake-wandb] {exc}", flush=True)
        return _json({"errors": [error_entry(str(exc), code="UNKNOWN_OPERATION")], "data": None}, 400)
    except runs_api.PermissionDenied:
        first = parsed.operation.selection_set.selections[0]
        return _forbidden([first.name.value])
    except RateLimited as exc:
        return _json(
            {"errors": [error_entry("rate limit exceeded", code="RATE_LIMITED")], "data": None},
            429,
            {"Retry-After": str(exc.retry_after)},
        )
    except GqlFieldError as exc:
        return _json({"errors": [error_entry(str(exc), code=exc.code)], "data": None}, exc.status)
    body: dict[str, Any] = {"data": data}
    if executor.errors:
        body["errors"] = executor.errors
    return _json(body)


def _maybe_gunzip(request: web.Request, raw: bytes) -> bytes:
    """aiohttp already inflates ``Content-Encoding: gzip`` bodies; inflate only if it did not."""
    if request.headers.get("Content-Encoding") == "gzip" and raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return raw


async def file_stream_handler(request: web.Request) -> web.Response:
    caller = _caller(request)
    if caller is None:
        return _unauthorized()
    entity, project, name = (request.match_info[k] for k in ("entity", "project", "run"))
    if entity not in caller[1]:
        return _forbidden()
    state = request.app[STATE_KEY]
    faults = request.app[FAULTS_KEY]
    raw = await request.read()
    run = state.run(entity, project, name)
    if run is None:
        return _json({"error": f"run {entity}/{project}/{name} not found"}, 404)
    limit_key = (entity, project, name)
    retry = faults.rate_limited("filestream", limit_key, faults.filestream_rps_per_run)
    limit_headers = faults.rate_headers("filestream", limit_key, faults.filestream_rps_per_run)
    if retry is not None:
        return _json({"error": "Filestream rate limit exceeded"}, 429, {"Retry-After": str(retry), **limit_headers})
    raw = _maybe_gunzip(request, raw)
    payload = json.loads(raw) if raw else {}
    with state.lock:
        state.request_log.append(("filestream", name))
        for fname, chunk in (payload.get("files") or {}).items():
            offset, content = int(chunk.get("offset", 0)), list(chunk.get("content") or [])
            if fname == "wandb-history.jsonl":
                run.write_history(offset, content)
            elif fname == "wandb-events.jsonl":
                write_lines(run.events, offset, content)
            elif fname == "output.log":
                write_lines(run.logs, offset, content)
            elif fname == "wandb-summary.json":
                if content:
                    run.summary = json.loads(content[-1])
            else:
                state.unknown_operations.append(f"file_stream file {fname!r}")
        if payload.get("uploaded"):
            runs_api.mark_uploaded(state, run, list(payload["uploaded"]))
        if payload.get("preempting"):
            run.preempting = True
        if payload.get("complete"):
            run.exitcode = payload.get("exitcode")
            run.state = "finished" if not run.exitcode else "failed"
        run.heartbeat_at = state.clock()
    if payload.get("complete") and state.export_history_on_finish:
        export_history(state, run)
    return _json({"exitcode": None, "limits": {}}, headers=limit_headers or None)


async def run_file_download(request: web.Request) -> web.StreamResponse:
    caller = _caller(request)
    if caller is None:
        return _unauthorized()
    entity, project, name, path = (request.match_info[k] for k in ("entity", "project", "run", "path"))
    if entity not in caller[1]:
        return _forbidden()
    blob = request.app[STATE_KEY].blob(f"runs/{entity}/{project}/{name}/{path}")
    if blob is None:
        return _json({"error": "file not found"}, 404)
    return web.FileResponse(blob.path)


async def _receive_blob(request: web.Request, state: ServerState, key: str) -> Blob:
    """Stream the request body to disk, hashing as it goes (never whole in memory)."""
    path = state.blob_path(key + "." + secrets.token_hex(4))
    md5 = hashlib.md5()
    size = 0
    with open(path, "wb") as out:
        async for chunk in request.content.iter_chunked(1 << 20):
            md5.update(chunk)
            size += len(chunk)
            out.write(chunk)
    digest = md5.digest()
    return Blob(
        key=key,
        path=path,
        size=size,
        b64md5=base64.b64encode(digest).decode(),
        hexmd5=digest.hex(),
        etag=f'"{digest.hex()}"',
    )


async def storage_put(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    if request.query.get("token") != config["storage_token"]:
        return _s3_error(403, "AccessDenied", "Request has invalid signature")
    state = request.app[STATE_KEY]
    key = request.match_info["key"]
    upload_id = request.query.get("uploadId")
    blob = await _receive_blob(request, state, key)
    expected = request.headers.get("Content-MD5")
    if expected and expected != blob.b64md5:
        os.unlink(blob.path)
        return _s3_error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
    if upload_id:
        with state.lock:
            upload = state.multipart.get(upload_id)
            if upload is None:
                os.unlink(blob.path)
                return _s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
            upload.parts[int(request.query["partNumber"])] = blob
    else:
        with state.lock:
            old = state.blobs.get(key)
            state.blobs[key] = blob
        if old is not None and old.path != blob.path:
            old.path.unlink(missing_ok=True)
        arts.on_blob_stored(state, blob)
    return web.Response(status=200, headers={"ETag": blob.etag})


async def storage_get(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    if request.query.get("token") != config["storage_token"]:
        return _s3_error(403, "AccessDenied", "Request has invalid signature")
    blob = request.app[STATE_KEY].blob(request.match_info["key"])
    if blob is None:
        return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
    return web.FileResponse(blob.path, headers={"ETag": blob.etag})


async def health(request: web.Request) -> web.Response:
    return _json({"ok": True})


def build_app(state: ServerState, faults: Faults, keys: dict[str, list[str]], storage_token: str) -> web.Application:
    app = web.Application(middlewares=[faults_middleware], client_max_size=1 << 40)
    app[STATE_KEY] = state
    app[FAULTS_KEY] = faults
    app[CONFIG_KEY] = {"keys": keys, "base_url": "", "storage_token": storage_token}
    app.router.add_post("/graphql", graphql_handler)
    app.router.add_post("/files/{entity}/{project}/{run}/file_stream", file_stream_handler)
    app.router.add_get("/files/{entity}/{project}/{run}/{path:.+}", run_file_download)
    app.router.add_put("/storage/{key:.+}", storage_put)
    app.router.add_get("/storage/{key:.+}", storage_get)
    app.router.add_get("/healthz", health)
    app.router.add_get("/", health)
    return app
