"""Checks that run before the first byte moves, so a refused migration writes nothing.

Why: an operator's typo must cost one clear line, not a half-created destination or a ledger
that later runs have to reason about. ``migrate()`` therefore (1) probes that the ledger and a
local destination can be written by creating and removing a probe next to where they will go,
(2) enters the source and the destination (each checks its server answers and accepts the
credentials, and that what the config names exists), and only then lets the pipeline create
directories, ledger lines or destination runs. Failures of step (2) that are not already
``ConfigError`` / ``AuthError`` (a refused connection after the client's bounded retries, a
404 from a wrong URL) become ``ConfigError`` naming the file, the table, the endpoint and the
fix, so the CLI answers with exit code 2.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any

from core.probe import probe_directory
from core.errors import AuthError, ConfigError, FatalError, NotFoundError, RunferryError, TransferError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def probe_ledger(path: Path, *, origin: str) -> None:
    """The ledger can be appended to: an existing one is opened for append (nothing written),
    a new one's directory accepts a probe file."""
    key = "[transfer] ledger"
    if path.is_dir():
        raise ConfigError(f"{origin}: {key} = {str(path)!r} is a directory — name a file, e.g. {str(path / 'runferry-ledger.jsonl')!r}")
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"{origin}: {key}: cannot append to {str(path)!r} ({exc.strerror or exc}) — fix its permissions or choose another path") from None
        return
    try:
        probe_directory(path.parent, key=key)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause in a few words (connection refused, timed out, the server's words)."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, ConnectionRefusedError) or isinstance(getattr(inner, "os_error", None), ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, TimeoutError):
            return "timed out"
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
        inner = inner.__cause__ or inner.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


@contextlib.asynccontextmanager
async def checked_entry(adapter: Any, *, origin: str, table: str) -> Any:
    """Enter ``adapter`` (source or destination) turning start-up failures into one-line
    ``ConfigError`` / ``AuthError`` that name the config file, the table and the endpoint."""
    where = f"{origin}: [{table}] {adapter.describe()}"
    try:
        await adapter.__aenter__()
    except ConfigError as exc:
        raise ConfigError(_prefixed(where, origin, str(exc))) from None
    except AuthError as exc:
        raise AuthError(
            f"{_prefixed(where, origin, str(exc))} — check the credentials named by the [{table}] *_env keys"
        ) from None
    except (NotFoundError, FatalError) as exc:
        raise ConfigError(f"{where}: unexpected answer ({_reason(exc)}) — is the [{table}] URL right (host, port, path)?") from None
    except TransferError as exc:
        raise ConfigError(
            f"{where}: cannot reach the server ({_reason(exc)}, retries exhausted) — check the [{table}] URL and that the server is running"
        ) from None
    except RunferryError:
        raise
    try:
        yield adapter
    except BaseException as exc:
        await adapter.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        await adapter.__aexit__(None, None, None)


def _prefixed(where: str, origin: str, message: str) -> str:
    """``message`` with the file and table in front, unless it already names the file."""
    return message if message.startswith(origin) else f"{where}: {message}"


class DiskFullError(RunferryError):
    """The disk under the destination (or the ledger) is full: the migration stops, resumable."""

    def __init__(self, destination: str, ledger: Path) -> None:
        super().__init__(f"no space left on device writing to {destination} (ledger {ledger})")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is "no space left on device" / "quota exceeded":
    the migration stops then instead of failing every remaining run the same way."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, BaseExceptionGroup):
            return any(is_disk_full(e) for e in inner.exceptions)
        if isinstance(inner, OSError) and inner.errno in DISK_FULL_ERRNOS:
            return True
        inner = inner.__cause__ or inner.__context__
    return False
