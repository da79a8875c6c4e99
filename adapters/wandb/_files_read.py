"""A W&B run's files: the ``RunFiles`` listing, streamed downloads, and the console log.

Files are listed with the SDK's ``RunFiles`` operation (``run.files()``), paged by cursor, names
as the server sorts them. Bytes come from the file's ``url`` (``{base}/files/{entity}/{project}/
{run}/{name}``) with the W&B credentials, as ``File.download()`` fetches them: unlike the
presigned ``directUrl`` it does not expire between listing and reading. The console log is the
run file ``output.log``; a run that has log lines but no such file (a crashed or still running
run) gets one rebuilt from ``logLines`` pages, each line as the SDK's legacy text
(``[ERROR ]<timestamp> [[label] ]content``, or the bare content when the server gives no time).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncGenerator
from typing import Any

from adapters.http import HttpClient
from core.errors import NotFoundError

from . import _read_ops
from ._page_points import loads

CONSOLE_FILE = "output.log"
METADATA_FILE = "wandb-metadata.json"
_PIECE = 1 << 20
_METADATA_LIMIT = 4 << 20
_LOG_PAGE = 1000


def hex_md5(b64: Any) -> str | None:
    """W&B gives base64 MD5s; FileRef wants hex (None when absent or malformed)."""
    if not b64:
        return None
    try:
        raw = base64.b64decode(str(b64), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


async def file_nodes(
    api: HttpClient, entity: str, project: str, run: str, *, per_page: int, names: list[str] | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    """The run's file nodes (``id name url directUrl sizeBytes md5 ...``), page by page."""
    variables = {"entity": entity, "project": project, "name": run, "fileLimit": per_page, "fileNames": names or [],
                 "upload": False}

    def connection(data: dict[str, Any]) -> dict[str, Any] | None:
        node = (data.get("project") or {}).get("run")
        return None if node is None else node.get("files") or {}

    try:
        async for node in _read_ops.edges_of(api, _read_ops.RUN_FILES, variables, name="RunFiles",
                                             cursor_var="fileCursor", connection=connection):
            yield node
    except LookupError:
        raise NotFoundError(f"wandb: run {entity}/{project}/{run} not found", adapter="wandb",
                            run=f"{entity}/{project}/{run}") from None


async def file_url(api: HttpClient, entity: str, project: str, run: str, name: str) -> str | None:
    async for node in file_nodes(api, entity, project, run, per_page=1, names=[name]):
        if node.get("name") == name:
            return node.get("url")
    return None


async def download(api: HttpClient, url: str) -> AsyncGenerator[bytes, None]:
    async for piece in api.download(url, chunk_size=_PIECE):
        yield piece


async def read_metadata(api: HttpClient, entity: str, project: str, run: str) -> dict[str, Any]:
    """``wandb-metadata.json`` (host, program, git...) when the run has it, else ``{}``."""
    url = await file_url(api, entity, project, run, METADATA_FILE)
    if url is None:
        return {}
    body = bytearray()
    async for piece in download(api, url):
        body += piece
        if len(body) > _METADATA_LIMIT:
            return {}
    try:
        doc = loads(bytes(body))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def log_line_text(node: dict[str, Any]) -> str:
    """One ``logLines`` node back in the SDK's legacy ``output.log`` form."""
    content = str(node.get("line") or "")
    stamp = node.get("timestamp")
    if not stamp:
        return content
    label = node.get("label") or ""
    prefix = "ERROR " if str(node.get("level") or "").lower() == "error" else ""
    return f"{prefix}{stamp} " + (f"[{label}] " if label else "") + content


async def console_from_log_lines(api: HttpClient, entity: str, project: str, run: str) -> AsyncGenerator[bytes, None]:
    """``output.log`` rebuilt from ``logLines`` pages (one page of text at a time)."""
    variables = {"entity": entity, "project": project, "runName": run, "first": _LOG_PAGE}
    nodes = _read_ops.edges_of(api, _read_ops.RUN_CONSOLE_LOG_PAGE, variables, name="RunConsoleLogPage",
                               cursor_var="after",
                               connection=lambda d: ((d.get("project") or {}).get("run") or {}).get("logLines") or {})
    page: list[str] = []
    async for node in nodes:
        page.append(log_line_text(node) + "\n")
        if len(page) >= _LOG_PAGE:
            yield "".join(page).encode()
            page = []
    if page:
        yield "".join(page).encode()
