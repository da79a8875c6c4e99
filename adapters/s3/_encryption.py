"""Server-side encryption: which request carries the SSE-C key, and when an ETag is no MD5.

With SSE-C (a customer-provided key) S3 stores nothing it could decrypt with, so the key goes
with *every* request that touches the object's bytes or metadata: ``PutObject``,
``CreateMultipartUpload``, each ``UploadPart``, ``CompleteMultipartUpload``, ``GetObject``,
``HeadObject``, and on both sides of ``CopyObject`` / ``UploadPartCopy`` (the ``CopySource*``
copy of the key for the source). A part sent without it is refused (400). The same arguments
given as boto3-style ``extra_args`` of an upload (MLflow's ``MLFLOW_S3_UPLOAD_EXTRA_ARGS``) are
carried to the parts and the completion as s3transfer does (``UPLOAD_PART_ARGS``,
``COMPLETE_MULTIPART_ARGS``).

The ETag of an SSE-C or SSE-KMS object is not the MD5 of its bytes, so neither uploads nor
downloads of such objects compare MD5s with it (``Content-MD5`` still guards every body sent).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Any

from core.errors import ConfigError

SSE_C_ARGS = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5")
# What an UploadPart / CompleteMultipartUpload repeats from the upload's arguments (s3transfer).
PART_ARGS = (*SSE_C_ARGS, "RequestPayer", "ExpectedBucketOwner")
ABORT_ARGS = ("RequestPayer", "ExpectedBucketOwner")
KMS = frozenset({"aws:kms", "aws:kms:dsse"})


def sse_c_from_env(env_name: str, algorithm: str) -> dict[str, Any]:
    """The SSE-C arguments for a key held base64-encoded in ``env_name`` (``{}`` if no name).

    botocore base64-encodes the raw key and adds its MD5 on each request.

    :raises ConfigError: the variable is unset or not a base64 256-bit key (its value is never shown).
    """
    if not env_name:
        return {}
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(f"s3: environment variable {env_name} (SSE-C key) is not set")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"s3: {env_name} must hold a base64-encoded 256-bit key (SSE-C)")
    return {"SSECustomerAlgorithm": algorithm, "SSECustomerKey": key}


def picked(args: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: args[name] for name in names if name in args}


def copy_source_args(sse_c: Mapping[str, Any]) -> dict[str, Any]:
    """The ``CopySourceSSECustomer*`` arguments that unlock an SSE-C source of a copy."""
    return {f"CopySource{name}": value for name, value in sse_c.items() if name in SSE_C_ARGS}


def etag_is_md5(*sources: Mapping[str, Any]) -> bool:
    """Whether an object's ETag can be an MD5 of its bytes, judged by the request arguments and
    the answer (SSE-C or SSE-KMS in either means it is not)."""
    for args in sources:
        if args.get("SSECustomerAlgorithm") or args.get("ServerSideEncryption") in KMS:
            return False
    return True
