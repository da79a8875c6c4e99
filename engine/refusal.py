"""What the command line says, in one line, when a command stops on an error, and its exit code.

Why: an operator needs the file, key or endpoint and the fix, not a Python traceback (``--debug``
shows that). Exit codes follow the README: 2 for configuration and credentials (raised before
anything was written, see ``engine/preflight.py``), 130 for an interrupt, 1 for anything else
(a full disk, a source that failed mid-way: re-running the same command resumes).
"""

from __future__ import annotations

from core.errors import AuthError, ConfigError, RunferryError
from engine.preflight import DiskFullError, is_disk_full


def _innermost(exc: BaseException) -> BaseException:
    """The first meaningful exception inside task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        preferred: list[BaseException] = [e for e in exc.exceptions if isinstance(e, (ConfigError, AuthError))]
        others: list[BaseException] = [e for e in exc.exceptions if not isinstance(e, KeyboardInterrupt)]
        exc = (preferred or others or list(exc.exceptions))[0]
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:600] if text else type(exc).__name__


def refusal(exc: BaseException) -> tuple[int, str]:
    """``(exit code, one line)`` for an exception that ended a command."""
    inner = _innermost(exc)
    if isinstance(inner, KeyboardInterrupt):
        return 130, "interrupted — run the same command again to resume"
    if isinstance(inner, ConfigError):
        return 2, f"configuration error: {_first_line(inner)}"
    if isinstance(inner, AuthError):
        return 2, f"credentials rejected: {_first_line(inner)}"
    if isinstance(inner, DiskFullError) or is_disk_full(inner):
        return 1, f"disk full: {_first_line(inner)} — free space, then run the same command again to resume"
    if isinstance(inner, RunferryError):
        return 1, f"stopped: {_first_line(inner)} — run the same command again to resume once this is fixed"
    if isinstance(inner, OSError):
        return 1, f"stopped: {inner.strerror or _first_line(inner)}{f' ({inner.filename})' if inner.filename else ''}"
    return 1, f"internal error: {type(inner).__name__}: {_first_line(inner)} (run with --debug for the traceback)"

