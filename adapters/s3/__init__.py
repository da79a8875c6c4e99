"""S3-compatible object stores as a place to read and write artifact bytes (aiobotocore).

``S3Store`` streams objects in and out without ever holding more than a few parts in memory:

* ``put_stream``: one ``PutObject`` up to ``multipart_threshold`` (up to ``single_put_threshold``,
  200 MiB, for a source given as an opener that can be read twice, such as a file: read once
  for its MD5, then streamed), otherwise a multipart upload
  whose part size grows with the object (10,000 parts at most), parts sent in parallel, each
  retried on its own, each checked with ``Content-MD5`` and its ETag, the whole checked against
  the multipart ETag; the upload is aborted (shielded from cancellation) if anything fails.
* ``get_stream``: one streamed ``GET`` up to ``ranged_get_threshold`` (no ``HEAD`` before it;
  resumed from the first missing byte if the connection breaks), ranged ``GET``s in parallel
  above it, yielded in order, verified against the object's ETag (plain MD5, or the
  MD5-of-part-MD5s of a multipart object when the pieces can follow the object's own parts).
  A mismatch raises ``TransientError`` after the last byte.
* ``copy``: server-side (``CopyObject``, or parallel ``UploadPartCopy`` above the threshold)
  within one store; ``copy_between`` streams from one store into another.
* ``head``, ``list``, ``delete``, ``list_open_uploads``.

Every request goes through the shared limiter of its *prefix* (``s3://host:port/bucket/seg``,
S3 limits requests per key prefix), with botocore's own retries switched off: throttles (503
SlowDown, 429, throttling codes) slow the prefix's pace, transient failures shrink its
concurrency, and the retry budget bounds retries. Credentials come from the usual AWS chain
(environment variables, ``profile``), or from the variables named by the ``*_env`` keys; an
SSE-C key (``sse_customer_key_env``) goes with every request on an object's bytes or metadata.

Small ``PutObject`` requests (in memory, up to 256 KiB) to an explicit endpoint with path-style
addressing skip botocore's per-call machinery: runferry signs (SigV4) and sends them itself
over its own HTTP/1.1 keep-alive pool (``_http1``), at about a sixth of the client CPU per
request, so many small files can reach a prefix's request limit; the request on the wire is
botocore's (``tests/s3/test_direct.py``).

Layout: ``_config`` (sizes, ``S3Config``), ``_url`` (``S3Url`` and result values), ``_parts``
(part planning, MD5/ETag rules), ``_encryption`` (which requests carry an SSE-C key, when an
ETag is no MD5), ``_errors`` (answer classification lists), ``_client``
(aiobotocore client set-up), ``_sigv4``, ``_http1`` and ``_direct`` (the small PUT sent without botocore),
``_requests`` (lifecycle, limiter, retry loop), ``_listing``,
``_upload``, ``_download``, ``_copy`` (one family of operations each) and ``_store`` (``S3Store``).
"""

from adapters.s3._config import MAX_PART as MAX_PART
from adapters.s3._config import MAX_PARTS as MAX_PARTS
from adapters.s3._config import MIB as MIB
from adapters.s3._config import MIN_PART as MIN_PART
from adapters.s3._config import S3Config as S3Config
from adapters.s3._copy import copy_between as copy_between
from adapters.s3._errors import AUTH_CODES as AUTH_CODES
from adapters.s3._errors import NOT_FOUND_CODES as NOT_FOUND_CODES
from adapters.s3._errors import THROTTLE_CODES as THROTTLE_CODES
from adapters.s3._errors import TRANSIENT_CODES as TRANSIENT_CODES
from adapters.s3._parts import md5_of as md5_of
from adapters.s3._parts import multipart_etag as multipart_etag
from adapters.s3._parts import plan_part_size as plan_part_size
from adapters.s3._parts import plan_ranges as plan_ranges
from adapters.s3._store import S3Store as S3Store
from adapters.s3._url import ObjectInfo as ObjectInfo
from adapters.s3._url import PutResult as PutResult
from adapters.s3._url import S3Url as S3Url

__all__ = [
    "AUTH_CODES",
    "MAX_PART",
    "MAX_PARTS",
    "MIB",
    "MIN_PART",
    "NOT_FOUND_CODES",
    "THROTTLE_CODES",
    "TRANSIENT_CODES",
    "ObjectInfo",
    "PutResult",
    "S3Config",
    "S3Store",
    "S3Url",
    "copy_between",
    "md5_of",
    "multipart_etag",
    "plan_part_size",
    "plan_ranges",
]
