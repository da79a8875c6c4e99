"""Small ``PutObject`` requests signed by ``_sigv4`` and sent over ``_http1``'s keep-alive pool.

Why: botocore spends about 0.7 ms of CPU on every request (serialising, endpoint rules, event
hooks, signing, parsing the answer); sent through aiohttp the same request still cost ~0.3 ms
of the client's CPU in all, over ``_http1`` ~0.14 ms (the two measured in turns in one process,
5,000 PUTs a round against the SlowDown bench's sink front). A migration of many small files meets
S3's per-prefix request limits (3,500 PUT/s on AWS; the SlowDown bench's fronts up to 1,000/s
on each of 4 prefixes) only if the client is not the bound, so the small PUT, the one request
such a migration makes by the thousand, goes this way.

It is used only where its request is the one botocore would send: an explicit ``endpoint_url``
(no endpoint rules to apply) with path-style addressing, reached without a proxy, a plain
bucket name, a key without empty or dot segments, a body in memory up to ``MAX_BODY``, and only
arguments it knows the header of (``HEADERS``, ``Metadata``, the SSE-C key). Anything else goes
through botocore. TLS is verified as botocore's client verifies it (its CA bundle:
``AWS_CA_BUNDLE``, the profile's ``ca_bundle``, else certifi's).
Answers come back in botocore's shape, failures as its ``ClientError`` with the same fields,
so ``RequestCore._call`` judges, limits and retries both paths alike. A redirect (an endpoint
that sends us to another region or host) raises ``Redirected``: the request, and every later
one of the store, then goes through botocore, which knows how to follow S3's redirects.
``S3Config.direct_put`` turns it off.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http
import re
import ssl
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote, urlsplit

import anyio.to_thread
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path

from adapters.s3._client import USER_AGENT
from adapters.s3._config import S3Config
from adapters.s3._http1 import Http1Pool
from adapters.s3._sigv4 import SigV4Signer

MAX_BODY = 256 * 1024  # larger bodies: botocore's path, sliced (``SlicedBody``); their overhead is small
ERROR_BODY_LIMIT = 64 * 1024

# PutObject arguments and the header each becomes (botocore's service model for S3).
HEADERS = {
    "ContentMD5": "content-md5",
    "ContentType": "content-type",
    "ContentEncoding": "content-encoding",
    "ContentDisposition": "content-disposition",
    "ContentLanguage": "content-language",
    "CacheControl": "cache-control",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "SSECustomerAlgorithm": "x-amz-server-side-encryption-customer-algorithm",
    "StorageClass": "x-amz-storage-class",
    "ACL": "x-amz-acl",
    "RequestPayer": "x-amz-request-payer",
    "ExpectedBucketOwner": "x-amz-expected-bucket-owner",
    "Tagging": "x-amz-tagging",
}
# The answer's headers botocore names in a PutObject result (the ones our callers read).
RESULT_HEADERS = {
    "etag": "ETag",
    "x-amz-version-id": "VersionId",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-server-side-encryption-customer-key-md5": "SSECustomerKeyMD5",
}
KNOWN_ARGS = frozenset({"Bucket", "Key", "Body", "Metadata", "SSECustomerKey", *HEADERS})
PLAIN_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
HEADER_TEXT = re.compile(r"[\x20-\x7e]*")
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+")
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Redirected(Exception):
    """The endpoint answered with a redirect: botocore's region and endpoint handling must decide."""


class DirectPut:
    """Sends accepted ``PutObject`` calls itself, over its own connection pool."""

    def __init__(
        self, config: S3Config, endpoint_url: str, region: str, credentials: Any, *, tls: ssl.SSLContext | bool = True
    ) -> None:
        parts = urlsplit(endpoint_url)
        # the Host header as botocore signs it: lower case, IPv6 in brackets, no default port
        hostname = parts.hostname or ""
        host = f"[{hostname}]" if ":" in hostname else hostname
        default_port = {"http": 80, "https": 443}[parts.scheme]
        if parts.port is not None and parts.port != default_port:
            host = f"{host}:{parts.port}"
        self._host = host
        self._signer = SigV4Signer(region)
        self._credentials = credentials  # botocore's (refreshable) credentials object
        context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            context = tls if isinstance(tls, ssl.SSLContext) else _tls_context(True) if tls else _unverified()
        self._pool = Http1Pool(
            hostname, parts.port or default_port, tls=context, server_hostname=hostname,
            limit=max(64, config.part_concurrency * 4),
            connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
        )

    @classmethod
    async def for_client(cls, config: S3Config, client: Any) -> Self | None:
        """A ``DirectPut`` beside botocore's ``client``, or None where botocore must decide."""
        endpoint = config.endpoint_url
        if not (config.direct_put and endpoint and config.addressing_style == "path"):
            return None
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or parts.path.strip("/") or parts.query:
            return None
        signer = getattr(client, "_request_signer", None)
        credentials = getattr(signer, "_credentials", None)
        if credentials is None or getattr(signer, "signature_version", "s3v4") not in ("s3v4", "v4"):
            return None  # anonymous or another signature: botocore's business
        # botocore's transport settings for this endpoint; where they cannot be read, or name a
        # proxy, botocore sends
        transport = getattr(getattr(client, "_endpoint", None), "http_session", None)
        verify, proxies = getattr(transport, "_verify", None), getattr(transport, "_proxy_config", None)
        if verify is None or proxies is None or proxies.proxy_url_for(endpoint):
            return None
        tls: ssl.SSLContext | bool = True
        if parts.scheme == "https":
            tls = await anyio.to_thread.run_sync(_tls_context, verify) if verify is not False else _unverified()
        return cls(config, endpoint, client.meta.region_name, credentials, tls=tls)

    async def aclose(self) -> None:
        await self._pool.aclose()

    @staticmethod
    def accepts(args: Mapping[str, Any]) -> bool:
        """Whether this ``PutObject`` can be sent here exactly as botocore would send it."""
        if not KNOWN_ARGS.issuperset(args) or "ContentMD5" not in args:
            return False
        body, key = args["Body"], args["Key"]
        if not isinstance(body, bytes | bytearray | memoryview) or len(body) > MAX_BODY:
            return False
        if not PLAIN_BUCKET.fullmatch(args["Bucket"]) or not key:
            return False
        if any(segment in ("", ".", "..") for segment in key.split("/")):
            return False
        values = [value for name, value in args.items() if name in HEADERS]
        metadata = args.get("Metadata") or {}
        if not all(isinstance(value, str) and HEADER_TEXT.fullmatch(value) for value in [*values, *metadata.values()]):
            return False
        return all(isinstance(name, str) and HEADER_NAME.fullmatch(name) for name in metadata)

    async def put_object(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Send the ``PutObject``; botocore's parsed answer, or its ``ClientError``."""
        path = f"/{args['Bucket']}/{quote(args['Key'].encode(), safe='/~')}"
        headers = {HEADERS[name]: value for name, value in args.items() if name in HEADERS}
        for name, value in (args.get("Metadata") or {}).items():
            headers[f"x-amz-meta-{name}"] = value  # as botocore sends it; signed lower-cased
        key = args.get("SSECustomerKey")
        if key is not None:
            raw = key.encode() if isinstance(key, str) else bytes(key)
            headers["x-amz-server-side-encryption-customer-key"] = base64.b64encode(raw).decode()
            headers["x-amz-server-side-encryption-customer-key-md5"] = base64.b64encode(hashlib.md5(raw).digest()).decode()
        credentials = await self._credentials.get_frozen_credentials()
        self._signer.sign("PUT", self._host, path, headers, credentials, datetime.now(UTC))
        body = args["Body"]
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (
            f"PUT {path} HTTP/1.1\r\nhost: {self._host}\r\nuser-agent: {USER_AGENT}\r\n"
            # as botocore: bytes as stored, never recoded
            f"accept: */*\r\naccept-encoding: identity\r\n{head}content-length: {len(body)}\r\n\r\n"
        ).encode("ascii") + body
        answer = await self._pool.request(request, body_limit=ERROR_BODY_LIMIT)
        if answer.status in REDIRECTS:
            raise Redirected(f"{answer.status} from {self._host}{path}")
        if answer.status >= 300:
            raise _error_answer(answer.status, answer.headers, answer.body)
        result: dict[str, Any] = {RESULT_HEADERS[name]: value for name, value in answer.headers.items() if name in RESULT_HEADERS}
        result["ResponseMetadata"] = {
            "RequestId": answer.headers.get("x-amz-request-id", ""), "HostId": answer.headers.get("x-amz-id-2", ""),
            "HTTPStatusCode": answer.status, "HTTPHeaders": answer.headers, "RetryAttempts": 0,
        }
        return result


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """The context botocore's session verifies the endpoint with (``verify``: True or a CA bundle)."""
    return ssl.create_default_context(cafile=get_cert_path(verify))


def _unverified() -> ssl.SSLContext:
    """botocore's ``verify=False``: TLS without checking the certificate (no CA files read)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _error_answer(status: int, headers: dict[str, str], body: bytes) -> ClientError:
    """botocore's ``ClientError`` for an error answer: S3's XML ``<Error>`` when there is one,
    else (a HEAD-like empty or unreadable body) the status as the code, as botocore does."""
    code, message = str(status), ""
    with contextlib.suppress(ValueError):
        message = http.HTTPStatus(status).phrase
    try:
        root = ElementTree.fromstring(body) if body.strip() else None
    except ElementTree.ParseError:
        root = None
    if root is not None:
        fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in root}
        code, message = fields.get("Code") or code, fields.get("Message", message)
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"RequestId": headers.get("x-amz-request-id", ""), "HTTPStatusCode": status,
                             "HTTPHeaders": headers, "RetryAttempts": 0},
    }
    return ClientError(response, "PutObject")
