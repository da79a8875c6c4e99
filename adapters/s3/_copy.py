"""Copies: server-side within one store (``CopyObject`` or parallel ``UploadPartCopy``), streamed between two.

A server-side copy moves no bytes through this process; ``copy_between`` falls back to
streaming only when the two stores cannot see each other's objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from adapters.s3._config import MAX_PART, MIN_PART
from adapters.s3._encryption import copy_source_args
from adapters.s3._errors import unwrap
from adapters.s3._listing import Listing
from adapters.s3._parts import MD5_HEX, plan_part_size, plan_ranges
from adapters.s3._upload import Uploads
from adapters.s3._url import ObjectInfo, PutResult, S3Url
from core.errors import FatalError

if TYPE_CHECKING:
    from adapters.s3._store import S3Store


class Copies(Uploads, Listing):
    """``copy`` within the store (mixed into ``S3Store``)."""

    async def copy(self, source: str | S3Url, destination: str | S3Url) -> PutResult:
        """Server-side copy within this store: ``CopyObject`` up to ``copy_threshold``,
        parallel ``UploadPartCopy`` above it (the upload aborted on failure). With an SSE-C key,
        source and copy are both encrypted with it."""
        src = source if isinstance(source, S3Url) else S3Url.parse(source)
        dst = destination if isinstance(destination, S3Url) else S3Url.parse(destination)
        info = await self.head(src)
        copy_source = {"Bucket": src.bucket, "Key": src.key}
        keys = {**self.sse_c, **copy_source_args(self.sse_c)}
        if info.size <= min(max(self.config.copy_threshold, MIN_PART), MAX_PART):

            async def attempt() -> Any:
                return await self.client.copy_object(
                    Bucket=dst.bucket, Key=dst.key, CopySource=copy_source, CopySourceIfMatch=f'"{info.etag}"',
                    **keys,
                )

            response = await self._call(dst, "CopyObject", attempt)
            etag = str(response.get("CopyObjectResult", {}).get("ETag", "")).strip('"')
            if info.etag_is_md5 and MD5_HEX.match(info.etag) and MD5_HEX.match(etag) and etag != info.etag:
                raise FatalError(f"{self.name}: copy {src} -> {dst}: ETag {etag} != source {info.etag}", adapter=self.name)
            return PutResult(dst, info.size, etag, 0)
        return await self._copy_multipart(src, dst, info, copy_source, keys)

    async def _copy_multipart(
        self, src: S3Url, dst: S3Url, info: ObjectInfo, copy_source: dict[str, str], keys: dict[str, Any]
    ) -> PutResult:
        part_size = plan_part_size(info.size, self.config.part_size)
        ranges = plan_ranges(info.size, part_size)
        created = await self._call(
            dst, "CreateMultipartUpload",
            lambda: self.client.create_multipart_upload(Bucket=dst.bucket, Key=dst.key, **self.sse_c),
        )
        upload_id = created["UploadId"]
        try:
            etags: dict[int, str] = {}
            limit = anyio.Semaphore(self.config.part_concurrency)

            async def copy_part(number: int, start: int, end: int) -> None:
                async with limit:
                    response = await self._call(
                        dst, f"UploadPartCopy {number}",
                        lambda: self.client.upload_part_copy(
                            Bucket=dst.bucket, Key=dst.key, UploadId=upload_id, PartNumber=number,
                            CopySource=copy_source, CopySourceRange=f"bytes={start}-{end}",
                            CopySourceIfMatch=f'"{info.etag}"', **keys,
                        ),
                    )
                    etags[number] = str(response["CopyPartResult"]["ETag"])

            try:
                async with anyio.create_task_group() as tg:
                    for number, (start, end) in enumerate(ranges, start=1):
                        tg.start_soon(copy_part, number, start, end)
            except BaseExceptionGroup as group:
                raise unwrap(group) from None
            ordered = sorted(etags)
            response = await self._call(
                dst, "CompleteMultipartUpload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=dst.bucket, Key=dst.key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in ordered]},
                    **self.sse_c,
                ),
            )
            copied = await self.head(dst)
            if copied.size != info.size:
                raise FatalError(f"{self.name}: copy {src} -> {dst}: {copied.size} bytes != {info.size}", adapter=self.name)
            return PutResult(dst, info.size, str(response.get("ETag", "")).strip('"'), len(ordered))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(dst, upload_id)
            raise


async def copy_between(source: S3Store, source_url: str | S3Url, destination: S3Store, destination_url: str | S3Url) -> PutResult:
    """Copy one object: server-side when both stores share the endpoint, streamed otherwise."""
    if source is destination or source.same_endpoint(destination):
        return await destination.copy(source_url, destination_url)
    info = await source.head(source_url)
    stream = source.get_stream(source_url)
    try:
        return await destination.put_stream(destination_url, stream, size=info.size)
    finally:
        await stream.aclose()

