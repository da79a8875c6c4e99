"""One error tree for the whole engine, so callers catch by meaning, not by library.

::

    RunferryError
    ├── ConfigError            bad configuration or missing secret (exit code 2; nothing written)
    ├── AuthError              credentials rejected by a source or destination (exit code 2)
    └── TransferError          something went wrong moving data (carries adapter / run context)
        ├── RetryableError     worth another attempt
        │   ├── ThrottledError       the endpoint asked us to slow down (429, 503 SlowDown);
        │   │                        ``retry_after`` in seconds when it said so
        │   └── TransientError       5xx, connection reset, timeout, truncated body
        ├── FatalError         retrying cannot help (4xx other than 401/403/404/429, bad data)
        └── NotFoundError      the thing does not exist (404); adapters decide what that means

Adapters translate their library's exceptions into these at their boundary (``raise ... from
exc``), and keep the original on ``__cause__``. Retry loops that give up raise the last
``RetryableError`` they saw.
"""

from __future__ import annotations


class RunferryError(Exception):
    """Base of every error runferry raises on purpose."""


class ConfigError(RunferryError):
    """Configuration is invalid; the message names the file, the key and the fix."""


class AuthError(RunferryError):
    """A source or destination rejected our credentials (401/403)."""


class TransferError(RunferryError):
    """Moving data failed. ``adapter`` and ``run`` say where, when known; ``status`` (the HTTP
    status) and ``code`` (the server's error code, e.g. MLflow's ``RESOURCE_ALREADY_EXISTS``
    or S3's ``SlowDown``) say what the server answered, so callers never match message text."""

    def __init__(
        self,
        message: str,
        *,
        adapter: str | None = None,
        run: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.adapter = adapter
        self.run = run
        self.status = status
        self.code = code


class RetryableError(TransferError):
    """Another attempt may succeed."""


class ThrottledError(RetryableError):
    """The endpoint asked us to slow down; ``retry_after`` (seconds) when it said how long."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        adapter: str | None = None,
        run: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, adapter=adapter, run=run, status=status, code=code)
        self.retry_after = retry_after


class TransientError(RetryableError):
    """5xx, connection reset, timeout or truncated body."""


class FatalError(TransferError):
    """Retrying cannot help."""


class NotFoundError(TransferError):
    """The requested object does not exist."""
