"""Runs the fake W&B app on 127.0.0.1 in a background thread with its own event loop.

Why: the official SDK is synchronous (and often runs in a subprocess) while runferry is
async; a server on its own thread serves both without sharing an event loop with the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from aiohttp import web

from ._app import CONFIG_KEY, build_app
from . import _persist as persist
from ._faults import Faults
from ._state import ServerState

DEFAULT_API_KEY = hashlib.sha1(b"runferry-test-key").hexdigest()  # 40 chars, like real keys
DEFAULT_KEYS = {DEFAULT_API_KEY: ["runferry", "runferry-team"]}


@dataclass
class WandbServer:
    """Handle of a running server. ``state`` and ``faults`` are live (thread-safe)."""

    base_url: str
    port: int
    api_key: str
    keys: dict[str, list[str]]
    state: ServerState
    faults: Faults
    _stop: callable = field(repr=False, default=None)
    sqlite_path: Path | None = None  # where ``save()`` and ``close()`` keep the data, if anywhere

    def save(self) -> None:
        """Write everything stored to the SQLite file (no-op for an in-memory server)."""
        if self.sqlite_path is not None:
            persist.save(self.state, self.sqlite_path)

    @property
    def entity(self) -> str:
        """Default entity of ``api_key``."""
        return self.keys[self.api_key][0]

    def sdk_env(self, wandb_dir: str) -> dict[str, str]:
        """Environment for an official SDK process pointed at this server."""
        return {
            "WANDB_BASE_URL": self.base_url,
            "WANDB_API_KEY": self.api_key,
            "WANDB_MODE": "online",
            "WANDB_DIR": wandb_dir,
            "WANDB_CACHE_DIR": f"{wandb_dir}/cache",
            "WANDB_CONFIG_DIR": f"{wandb_dir}/config",
            "WANDB_DATA_DIR": f"{wandb_dir}/data",
            "WANDB_ARTIFACT_DIR": f"{wandb_dir}/artifacts",
            "WANDB_SILENT": "true",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "WANDB_DISABLE_JOB_CREATION": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_X_DISABLE_STATS": "true",
            "WANDB__DISABLE_STATS": "true",
            "WANDB_X_DISABLE_MACHINE_INFO": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_DISABLE_SERVICE_TELEMETRY": "true",
        }

    def export_history(self, entity: str, project: str, run: str) -> str | None:
        """Write the run's current history to a parquet export (``parquetHistory`` path)."""
        from ._exports import export_history

        found = self.state.run(entity, project, run)
        if found is None:
            raise KeyError(f"no run {entity}/{project}/{run}")
        return export_history(self.state, found)

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
            self.save()
        self.state.close()


def check_loopback(host: str, allowed_elsewhere: bool) -> None:
    """Refuse (ValueError) to bind anything but a loopback address unless told."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allowed_elsewhere:
        raise ValueError(f"refusing to listen on {host!r}: not a loopback address (pass allow_non_loopback / --allow-non-loopback)")


@contextlib.contextmanager
def start_wandb_server(
    port: int = 0,
    keys: dict[str, list[str]] | None = None,
    *,
    faults: Faults | None = None,
    state: ServerState | None = None,
    sqlite_path: str | Path | None = None,
) -> Iterator[WandbServer]:
    """Start the server, yield its handle, stop it on exit (saving to ``sqlite_path`` if given)."""
    server = launch(port, keys, faults=faults, state=state, sqlite_path=sqlite_path)
    try:
        yield server
    finally:
        server.close()


def launch(
    port: int = 0,
    keys: dict[str, list[str]] | None = None,
    *,
    faults: Faults | None = None,
    state: ServerState | None = None,
    host: str = "127.0.0.1",
    sqlite_path: str | Path | None = None,
    allow_non_loopback: bool = False,
) -> WandbServer:
    """Start the server on a thread and return its handle (call ``close()`` to stop).

    With ``sqlite_path`` the data is loaded from that SQLite file when it exists and saved to
    it on ``save()`` and ``close()`` (blob bytes live in ``<file>.blobs/`` beside it).

    ``host`` must be a loopback address unless ``allow_non_loopback`` (a test server holds
    test keys and accepts any upload: nothing off this machine may reach it by accident)."""
    check_loopback(host, allow_non_loopback)
    keys = {k: list(v) for k, v in (keys or DEFAULT_KEYS).items()}
    sqlite_path = Path(sqlite_path) if sqlite_path is not None else None
    if state is None and sqlite_path is not None:
        state = persist.open_state(sqlite_path)
    state = state or ServerState()
    faults = faults or Faults()
    app = build_app(state, faults, keys, storage_token=secrets.token_hex(16))
    ready = threading.Event()
    info: dict = {}
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        app[CONFIG_KEY]["base_url"] = f"http://{host}:{bound}"
        info["port"] = bound
        info["stop"] = asyncio.Event()
        ready.set()
        try:
            await info["stop"].wait()
        finally:
            await runner.cleanup()

    def thread_main() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surface startup failures to the caller, then re-raise
            info["error"] = exc
            ready.set()
            raise
        finally:
            loop.close()

    thread = threading.Thread(target=thread_main, name="fake-wandb-server", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in info or "port" not in info:
        raise RuntimeError(f"fake W&B server failed to start: {info.get('error')!r}")

    def stop() -> None:
        loop.call_soon_threadsafe(info["stop"].set)
        thread.join(30)

    api_key = next(iter(keys))
    return WandbServer(
        base_url=app[CONFIG_KEY]["base_url"],
        port=info["port"],
        api_key=api_key,
        keys=keys,
        state=state,
        faults=faults,
        _stop=stop,
        sqlite_path=sqlite_path,
    )
