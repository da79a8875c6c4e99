"""Sizes S3 imposes on parts and objects, and ``S3Config``: where a store is and how it moves bytes.

Kept apart so the value objects can be imported (by configuration code, tests, the bench)
without the client machinery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError

MIB = 1 << 20
MIN_PART = 5 * MIB  # S3: every part but the last is at least 5 MiB
MAX_PART = 5 * 1024 * MIB  # S3: at most 5 GiB per part (and per CopyObject)
MAX_PARTS = 10_000


@dataclass(frozen=True, kw_only=True)
class S3Config:
    """Where the store is and how it moves bytes.

    Memory bound per transfer: ``(part_concurrency + 2) * part size`` for uploads and downloads.
    The part size is ``part_size``, grown for objects over ``part_size * 10000`` bytes.
    """

    endpoint_url: str | None = None  # None: AWS S3 of ``region``
    region: str = "us-east-1"
    profile: str | None = None
    access_key_id_env: str = ""  # empty: the usual AWS chain (AWS_ACCESS_KEY_ID, profile...)
    secret_access_key_env: str = ""
    session_token_env: str = ""
    # SSE-C: the variable holding the base64 256-bit customer key; every object request of the
    # store then carries it (uploads, each part, downloads, heads, both sides of copies).
    sse_customer_key_env: str = ""
    sse_customer_algorithm: str = "AES256"
    addressing_style: str = "path"  # path | virtual | auto
    # Small PutObjects (up to 256 KiB, in memory) to an explicit endpoint with path-style
    # addressing are signed and sent by runferry itself instead of botocore (``_direct``):
    # about a sixth of the client CPU per request, so many small files reach a prefix's request
    # limit. RUNFERRY_S3_DIRECT_PUT=0 sends them through botocore (a store that balks at them).
    direct_put: bool = field(default_factory=lambda: os.environ.get("RUNFERRY_S3_DIRECT_PUT", "1") != "0")
    # Streamed PutObjects carry the CRC-32 runferry already computes (``x-amz-checksum-crc32``,
    # kept by the store beside the object), and GETs ask for a stored full-object CRC-32: an
    # object that has one is verified by it, at about a quarter of MD5's CPU (a download's
    # largest cost); others by their ETag as before. RUNFERRY_S3_CHECKSUMS=0 sends neither header
    # (a store that refuses them).
    checksums: bool = field(default_factory=lambda: os.environ.get("RUNFERRY_S3_CHECKSUMS", "1") != "0")
    part_size: int = 8 * MIB
    multipart_threshold: int = 8 * MIB
    # Sources that can be read twice (``put_stream`` given an opener, as for files) of a known
    # size up to this go as one streamed PutObject, as rclone's --s3-upload-cutoff: read once
    # for the Content-MD5, once (again on a retry) as the body; the server's cost of a
    # multipart upload is about twice one PUT's. Larger ones, and one-shot streams, go multipart.
    single_put_threshold: int = 200 * MIB
    part_concurrency: int = 8
    copy_threshold: int = 64 * MIB  # server-side copies above this use parallel UploadPartCopy
    # Objects up to this size are read with one streamed GET (as rclone's multi-thread cutoff):
    # one request instead of size/part_size, and no per-range work on the server; larger ones
    # with ``part_concurrency`` ranged GETs in flight.
    ranged_get_threshold: int = 256 * MIB
    max_attempts: int = 10
    limiter_prefix_depth: int = 1  # key segments that make the throttling prefix
    connect_timeout: float = 30.0
    read_timeout: float = 120.0

    @classmethod
    def from_mlflow_env(cls, **overrides: Any) -> S3Config:
        """The store MLflow's own S3 artifact client would use: ``MLFLOW_S3_ENDPOINT_URL`` and
        ``MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE`` (if set) and the usual AWS credential chain; for
        reading and writing ``s3://`` artifact URIs directly."""
        values: dict[str, Any] = {"endpoint_url": os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
        style = os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE")
        if style:
            values["addressing_style"] = style
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART or self.part_size > MAX_PART:
            raise ConfigError(f"s3: part_size must be between {MIN_PART} and {MAX_PART} bytes")
        if self.multipart_threshold < 0 or self.part_concurrency < 1 or self.max_attempts < 1:
            raise ConfigError("s3: multipart_threshold >= 0, part_concurrency >= 1, max_attempts >= 1")
        if self.ranged_get_threshold < 0:
            raise ConfigError("s3: ranged_get_threshold must be >= 0")
        if not 0 <= self.single_put_threshold <= MAX_PART:
            raise ConfigError(f"s3: single_put_threshold must be between 0 and {MAX_PART} bytes (S3's PutObject limit)")
        if self.addressing_style not in ("path", "virtual", "auto"):
            raise ConfigError("s3: addressing_style must be path, virtual or auto")

