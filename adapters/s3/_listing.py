"""Metadata and listing: ``head``, ``list``, ``delete``, ``list_open_uploads``.

Small single requests through the retry loop; ``head`` is also what downloads and copies plan from.
"""

from __future__ import annotations

import builtins
import functools

from collections.abc import AsyncGenerator
from typing import Any

from adapters.s3._encryption import etag_is_md5
from adapters.s3._parts import MULTIPART_ETAG
from adapters.s3._requests import RequestCore
from adapters.s3._url import ObjectInfo, S3Url


def info_of(target: S3Url, response: dict[str, Any], request: dict[str, Any]) -> ObjectInfo:
    """The object's size, ETag and metadata from a ``HeadObject`` or ``GetObject`` answer (and
    the ``request`` arguments that got it: an SSE-C key means the ETag is no MD5)."""
    modified = response.get("LastModified")
    return ObjectInfo(
        url=target,
        size=int(response["ContentLength"]),
        etag=str(response.get("ETag", "")).strip('"'),
        last_modified=modified.timestamp() if modified is not None else None,
        metadata=tuple(sorted(response.get("Metadata", {}).items())),
        etag_is_md5=etag_is_md5(request, response),
        crc32=full_object_crc32(response),
    )


def full_object_crc32(response: dict[str, Any]) -> str | None:
    """The CRC-32 of the whole object, if the answer carries one; not a composite of part
    checksums (``value-N``, ``ChecksumType: COMPOSITE``), which no single pass checks. A
    multipart object's checksum counts only when the store says ``FULL_OBJECT`` (moto's HEAD
    drops the ``-N`` and the type of a composite one)."""
    value = response.get("ChecksumCRC32")
    kind = response.get("ChecksumType")
    multipart = MULTIPART_ETAG.match(str(response.get("ETag", "")).strip('"')) is not None
    if not value or "-" in value or kind not in ("FULL_OBJECT", None) or (multipart and kind is None):
        return None
    return str(value)


class Listing(RequestCore):
    """Object metadata, listings and deletes (mixed into ``S3Store``)."""

    async def head(self, url: str | S3Url, *, part_number: int | None = None) -> ObjectInfo:
        """Size, ETag and metadata; ``NotFoundError`` if there is no such object."""
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        extra = dict(self.sse_c) if part_number is None else {**self.sse_c, "PartNumber": part_number}
        response = await self._call(
            target, "HeadObject", lambda: self.client.head_object(Bucket=target.bucket, Key=target.key, **extra)
        )
        return info_of(target, response, self.sse_c)

    async def list(self, url: str | S3Url, *, page_size: int = 1000) -> AsyncGenerator[ObjectInfo, None]:
        """Every object whose key starts with the URL's key, in key order, page by page."""
        prefix = url if isinstance(url, S3Url) else S3Url.parse(url)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": prefix.bucket, "Prefix": prefix.key, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(prefix, "ListObjectsV2", functools.partial(self.client.list_objects_v2, **kwargs))
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    url=S3Url(prefix.bucket, item["Key"]),
                    size=int(item["Size"]),
                    etag=str(item.get("ETag", "")).strip('"'),
                    last_modified=item["LastModified"].timestamp() if item.get("LastModified") else None,
                )
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def delete(self, url: str | S3Url) -> None:
        target = url if isinstance(url, S3Url) else S3Url.parse(url)
        await self._call(target, "DeleteObject", lambda: self.client.delete_object(Bucket=target.bucket, Key=target.key))

    async def list_open_uploads(self, url: str | S3Url) -> builtins.list[tuple[str, str]]:
        """``(key, upload id)`` of multipart uploads begun under the prefix and not finished."""
        prefix = url if isinstance(url, S3Url) else S3Url.parse(url)
        response = await self._call(
            prefix, "ListMultipartUploads",
            lambda: self.client.list_multipart_uploads(Bucket=prefix.bucket, Prefix=prefix.key),
        )
        return [(u["Key"], u["UploadId"]) for u in response.get("Uploads", [])]

