"""AWS Signature Version 4 for S3 requests that runferry sends itself (``_direct``).

botocore signs every request through its event machinery and derives the signing key anew each
time (four HMACs); at a thousand small PUTs a second that is a large share of a core. This is
the same algorithm as botocore's ``S3SigV4Auth`` with an unsigned payload (what our client
configuration asks of botocore too: ``Content-MD5`` guards the bytes), the key derived once per
day and region. ``tests/s3/test_direct.py`` holds it to botocore's signatures.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Protocol

from botocore.credentials import ReadOnlyCredentials

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"


# botocore's frozen credentials (what ``get_frozen_credentials()`` gives), to build one by hand
Credentials = ReadOnlyCredentials


class SigningCredentials(Protocol):
    """What a signature needs; botocore's frozen credentials are signed with as they come."""

    @property
    def access_key(self) -> str: ...

    @property
    def secret_key(self) -> str: ...

    @property
    def token(self) -> str | None: ...


class SigV4Signer:
    """Signs S3 requests for one region, caching the day's signing key."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = hmac.digest(f"AWS4{secret}".encode(), day.encode(), "sha256")
        for part in (self.region, self.service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key = (secret, day, key)
        return key

    def sign(
        self, method: str, host: str, raw_path: str, headers: dict[str, str],
        credentials: SigningCredentials, now: datetime,
    ) -> None:
        """Add ``x-amz-date``, ``x-amz-content-sha256``, the session token and ``authorization``
        to ``headers`` (every header given is signed, by its lower-case name; ``host`` is signed
        but not added: the caller sends the same value).

        ``raw_path`` is the path as sent (already percent-encoded; S3 paths are not normalised);
        the request has no query string (an object PUT).
        """
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers["x-amz-date"] = stamp
        headers["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        signed = {name.lower(): value for name, value in headers.items()}
        signed["host"] = host
        names = sorted(signed)
        canonical_headers = "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names)
        signed_names = ";".join(names)
        canonical = "\n".join((method, raw_path, "", canonical_headers, signed_names, UNSIGNED_PAYLOAD))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self.signing_key(credentials.secret_key, day), to_sign.encode(), "sha256").hexdigest()
        headers["authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={signed_names}, Signature={signature}"
        )
