"""The lists S3 answers are judged by: throttle, transient, not found and auth codes, and the
network errors worth another attempt.

Kept as commented constants in one place (rclone's per-backend ``retryErrorCodes``), so the
retry loop in ``_requests`` stays generic.
"""

from __future__ import annotations

import ssl

import aiohttp
import anyio
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

# Error codes S3 and compatible stores use to say "slow down" (botocore's throttling list,
# plus the 503 SlowDown of S3 and B2); they are retried through the limiter's pacing.
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
     "RequestThrottledException", "TooManyRequests", "TooManyRequestsException",
     "RequestLimitExceeded", "BandwidthLimitExceeded", "ProvisionedThroughputExceededException",
     "EC2ThrottledException", "PriorRequestNotComplete"}
)
# Worth another attempt: the server failed or the bytes were damaged on the way (BadDigest).
TRANSIENT_CODES = frozenset(
    {"InternalError", "RequestTimeout", "RequestTimeoutException", "ServiceUnavailable",
     "BadDigest", "IncompleteBody", "XAmzContentSHA256Mismatch", "OperationAborted"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound", "404"})
AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "403", "401"}
)
NETWORK_ERRORS = (
    EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
    ResponseStreamingError, IncompleteReadError, SSLError, aiohttp.ClientError, TimeoutError, ConnectionError,
)


def certificate_refused(exc: BaseException) -> bool:
    """Whether a network error is a TLS certificate that failed verification (a wrong CA bundle
    or endpoint: no later attempt can succeed), through botocore's wrapping or aiohttp's (each
    raises its own error while handling the one below)."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unwrap(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group's failure (cancellations are its echo)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return unwrap(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]
