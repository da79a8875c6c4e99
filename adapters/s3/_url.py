"""Which object (``S3Url``), and what the store says about one (``ObjectInfo``, ``PutResult``).

Plain frozen values with no I/O, shared by every other module of the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        """``s3://bucket/key`` (the key may be empty or a prefix). Everything after the bucket is
        the key, ``?`` and ``#`` included: S3 keys are not URL paths (a file ``run#1.png`` is the
        key ``.../run#1.png``, not a fragment)."""
        if url[:5].lower() != "s3://":
            raise ValueError(f"not an s3://bucket/key URL: {url!r}")
        bucket, _, key = url[5:].partition("/")
        if not bucket:
            raise ValueError(f"not an s3://bucket/key URL: {url!r}")
        return cls(bucket, key)

    def joined(self, rel: str) -> S3Url:
        """``rel`` below this key taken as a prefix: ``key/rel`` (just ``rel`` at the bucket's top)."""
        return S3Url(self.bucket, f"{self.key}/{rel}" if self.key else rel)

    def relative(self, key: str) -> str:
        """``key``, an object below this prefix, relative to it (the inverse of ``joined``)."""
        return key[len(self.key) + 1 :] if self.key else key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    url: S3Url
    size: int
    etag: str  # without quotes
    last_modified: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    etag_is_md5: bool = True  # False for SSE-C / SSE-KMS objects: their ETag is no digest of the bytes
    crc32: str | None = None  # the store's full-object CRC-32 (base64, as S3 sends it), if it keeps one


@dataclass(frozen=True, slots=True)
class PutResult:
    url: S3Url
    size: int
    etag: str
    parts: int  # 0 for a single PutObject / CopyObject
