"""The store's core: one client per ``async with``, and the loop every request goes through.

Every S3 call passes ``_call``: it takes a slot from the limiter of the object's *prefix* (S3
limits requests per key prefix), classifies the answer, and retries what may succeed later
within the attempt limit and the limiter's retry budget. The operation mixins build on this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

from botocore.exceptions import ClientError

from core.protocols import AdapterContext
from adapters.s3._client import open_client
from adapters.s3._config import S3Config
from adapters.s3._direct import DirectPut
from adapters.s3._encryption import sse_c_from_env
from adapters.s3._errors import (
    AUTH_CODES,
    NETWORK_ERRORS,
    NOT_FOUND_CODES,
    THROTTLE_CODES,
    TRANSIENT_CODES,
    certificate_refused,
)
from adapters.s3._url import S3Url
from core.errors import (
    AuthError,
    FatalError,
    NotFoundError,
    RetryableError,
    ThrottledError,
    TransientError,
)
from ratelimit import EndpointLimiter, LimiterRegistry, Retrying, endpoint_of

T = TypeVar("T")


class RequestCore:
    """Client lifecycle, per-prefix limiters and the retry loop (base of ``S3Store``)."""

    def __init__(self, config: S3Config, context: AdapterContext | None = None, *, name: str = "s3") -> None:
        self.config = config
        self.context = context or AdapterContext()
        self.name = name
        self._limiters: LimiterRegistry = self.context.limiters if self.context.limiters is not None else LimiterRegistry()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        # small PutObjects sent without botocore's per-call machinery (None: all through botocore)
        self.direct: DirectPut | None = None
        # SSE-C arguments every object request carries (``{}`` without a customer key)
        self.sse_c: dict[str, Any] = {}
        endpoint = config.endpoint_url or f"https://s3.{config.region}.amazonaws.com"
        self._endpoint = endpoint_of(endpoint).replace("http://", "").replace("https://", "")

    def describe(self) -> str:
        return f"s3 endpoint {self.config.endpoint_url or self.config.region}"

    def same_endpoint(self, other: RequestCore) -> bool:
        """Whether a server-side copy between the two stores is possible."""
        return (self.config.endpoint_url, self.config.region, self.config.profile) == (
            other.config.endpoint_url, other.config.region, other.config.profile
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.sse_c = sse_c_from_env(self.config.sse_customer_key_env, self.config.sse_customer_algorithm)
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(open_client(self.config))
            self.direct = await DirectPut.for_client(self.config, self._client)
            if self.direct is not None:
                stack.push_async_callback(self.direct.aclose)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack, self._client, self.direct = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Store used outside 'async with'")
        return self._client

    # -- the retry loop ------------------------------------------------------------------

    def limiter_for(self, url: S3Url) -> EndpointLimiter:
        segments = url.key.split("/")[:-1][: self.config.limiter_prefix_depth]
        return self._limiters.get("/".join([f"s3://{self._endpoint}", url.bucket, *segments]))

    async def _call(self, url: S3Url, what: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run one S3 request through the prefix's limiter, retrying what may succeed later."""
        limiter = self.limiter_for(url)
        retrying = self.retrying(limiter)
        while True:
            error: RetryableError
            async with limiter.slot() as ticket:
                try:
                    result = await attempt_once()
                    ticket.success()
                    return result
                except ClientError as exc:
                    error = self._client_error(exc, url, what, ticket)
                except NETWORK_ERRORS as exc:
                    if certificate_refused(exc):
                        ticket.success()  # not the server's load: no later attempt can succeed
                        raise FatalError(
                            f"{self.name}: {what} {url}: the endpoint's TLS certificate was refused: {exc}", adapter=self.name
                        ) from exc
                    ticket.failed()
                    error = TransientError(f"{self.name}: {what} {url}: {exc!r}", adapter=self.name)
                    error.__cause__ = exc
                except RetryableError as exc:  # raised by our own checks inside attempt_once
                    ticket.failed()
                    error = exc
            await retrying.wait_or_raise(error, throttled=isinstance(error, ThrottledError))

    def retrying(self, limiter: EndpointLimiter) -> Retrying:
        """The shared retry driver for one request through ``limiter``."""
        return Retrying(limiter, max_attempts=self.config.max_attempts, events=self.context.events)

    def _client_error(self, exc: ClientError, url: S3Url, what: str, ticket: Any) -> RetryableError:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        message = f"{self.name}: {what} {url} -> {status} {code}: {error.get('Message', '')}".rstrip(": ")
        if code in THROTTLE_CODES or status in (429, 503):
            headers = meta.get("HTTPHeaders", {})
            retry_after = None
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(headers.get("retry-after"))
            ticket.throttled(retry_after)
            self.context.events("throttle", endpoint=self.limiter_for(url).endpoint, status=status, retry_after=retry_after)
            failure: RetryableError = ThrottledError(
                message, retry_after=retry_after, adapter=self.name, status=status, code=code
            )
        elif code in TRANSIENT_CODES or status >= 500 or status == 408:
            ticket.failed()
            failure = TransientError(message, adapter=self.name, status=status, code=code)
        else:
            ticket.success()
            if code in NOT_FOUND_CODES or status == 404:
                raise NotFoundError(message, adapter=self.name, status=status, code=code) from exc
            if code in AUTH_CODES or status in (401, 403):
                raise AuthError(message) from exc
            raise FatalError(message, adapter=self.name, status=status, code=code) from exc
        failure.__cause__ = exc
        return failure
