"""The direct small PUT (``adapters.s3._direct``) is the request botocore would send.

Held to botocore itself: its SigV4 signer recomputes our signatures, the same PutObject sent
both ways reaches a recording server with the same path, body and headers, error answers
become the same ``ClientError``, and objects written both ways into moto read back alike.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError
from multidict import CIMultiDict

from adapters.s3 import S3Config, S3Store, S3Url
from adapters.s3._direct import MAX_BODY, DirectPut
from adapters.s3._sigv4 import Credentials, SigV4Signer
from core.protocols import AdapterContext
from core.errors import AuthError, FatalError, NotFoundError, TransferError
from ratelimit import FakeClock, LimiterRegistry
from tests.s3.conftest import RECORDER_CREDENTIALS, serving
from tests.servers.s3front import S3Stack
from tests.servers.scripted_http import HANG, RESET, ScriptedServer, reply, truncated

KEY = base64.b64encode(bytes(range(32))).decode()
NOW = datetime(2026, 12, 3, 7, 8, 9, tzinfo=UTC)
# Not re-encoded by S3 paths: '~'; encoded: space, '+', '%', non-ASCII, '=' and '?'
AWKWARD_KEY = "dir one/ü ñ+é%20~x=1?.bin"


def botocore_signature(method: str, url: str, headers: CIMultiDict[str], secret: str, access: str,
                       token: str | None, region: str = "us-east-1") -> str:
    """The signature botocore's S3 signer gives the request's signed headers at the same date,
    as a server checks it (the headers named in ``SignedHeaders``; ``host`` from the URL when
    it was not recorded)."""
    signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(method=method, url=url, headers={name: headers[name] for name in signed if name in headers})
    request.context["timestamp"] = headers["x-amz-date"]
    auth = S3SigV4Auth(BotoCredentials(access, secret, token), "s3", region)
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


def signed_by_us(method: str, host: str, path: str, headers: dict[str, str], credentials: Credentials,
                 region: str = "us-east-1") -> str:
    SigV4Signer(region).sign(method, host, path, headers, credentials, NOW)
    return headers["authorization"].rsplit("Signature=", 1)[1]


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3"])
def test_signatures_equal_botocores(token: str | None, region: str) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = "/bucket/dir%20one/%C3%BC%20%C3%B1%2B%C3%A9%2520~x%3D1%3F.bin"
    headers = {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "Content-Type": "text/plain;  charset=utf-8",
               "x-amz-meta-Owner": "  Ada   Lovelace ", "x-amz-tagging": "a=1&b=2"}
    ours = signed_by_us("PUT", "127.0.0.1:9000", path, headers, credentials, region)
    sent = CIMultiDict(headers)
    assert sent["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert sent["x-amz-date"] == "20261203T070809Z"
    assert (sent.get("x-amz-security-token") == token) if token else "x-amz-security-token" not in sent
    theirs = botocore_signature("PUT", f"http://127.0.0.1:9000{path}", sent, credentials.secret_key,
                                credentials.access_key, token, region)
    assert ours == theirs
    assert sent["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261203/{region}/s3/aws4_request, ")


def test_the_signing_key_is_derived_once_a_day_and_per_secret() -> None:
    signer = SigV4Signer("us-east-1")
    first = signer.signing_key("secret", "20261203")
    assert signer.signing_key("secret", "20261203") is first
    assert signer.signing_key("secret", "20261204") != first
    assert signer.signing_key("other", "20261204") != signer.signing_key("secret", "20261204")


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:9000", "http://LocalHost:80", "https://S3.Example.com:443", "https://s3.example.com:8443",
     "http://[::1]:9000", "https://[::1]"],
)
async def test_the_host_signed_is_botocores(endpoint: str) -> None:
    from botocore.auth import _host_from_url

    direct = DirectPut(S3Config(endpoint_url=endpoint), endpoint, "us-east-1", credentials=None)
    try:
        assert direct._host == _host_from_url(endpoint + "/bucket/key")
    finally:
        await direct.aclose()


# -- on the wire, both ways ----------------------------------------------------------------


def put_args(body: bytes, key: str = AWKWARD_KEY) -> dict[str, Any]:
    return {
        "Bucket": "bucket", "Key": key, "Body": body,
        "ContentMD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        "ContentType": "text/csv", "ContentEncoding": "identity", "CacheControl": "no-cache",
        "Metadata": {"Run-Id": "abc123", "note": "two  spaces"}, "Tagging": "team=ml&x=1",
        "SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64decode(KEY),
        "StorageClass": "STANDARD_IA", "ExpectedBucketOwner": "123456789012",
    }


# signed or sent per request, or botocore's telemetry (amz-sdk-*), which S3 does not read
IGNORED = {"authorization", "x-amz-date", "user-agent", "host", "amz-sdk-invocation-id", "amz-sdk-request"}


async def test_the_same_put_object_goes_out_the_same_both_ways(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder
    body = os.urandom(3000)
    async with S3Store(S3Config(endpoint_url=url)) as s3:
        assert s3.direct is not None
        args = put_args(body)
        assert s3.direct.accepts(args)
        ours = await s3.direct.put_object(args)
        theirs = await s3.client.put_object(**args)
    direct, boto = seen
    for name in ("method", "raw_path", "body"):
        assert direct[name] == boto[name]
    assert direct["raw_path"] == "/bucket/dir%20one/%C3%BC%20%C3%B1%2B%C3%A9%2520~x%3D1%3F.bin"

    def comparable(headers: CIMultiDict[str]) -> dict[str, str]:
        return {k.lower(): v for k, v in headers.items() if k.lower() not in IGNORED}

    assert comparable(direct["headers"]) == comparable(boto["headers"])
    assert direct["headers"]["host"] == boto["headers"]["host"]
    # our signature is the one botocore computes for what we sent
    sent = direct["headers"]
    c = RECORDER_CREDENTIALS
    signature = botocore_signature("PUT", direct["url"], sent, c["AWS_SECRET_ACCESS_KEY"], c["AWS_ACCESS_KEY_ID"],
                                   c["AWS_SESSION_TOKEN"])
    assert sent["authorization"].endswith(f"Signature={signature}")
    assert sent["authorization"].split("Signature=")[0] == boto["headers"]["authorization"].split("Signature=")[0].replace(
        boto["headers"]["x-amz-date"][:8], sent["x-amz-date"][:8]
    )
    # the parsed answers agree on what callers read
    for field in ("ETag", "VersionId"):
        assert ours[field] == theirs[field]
    assert ours["ResponseMetadata"]["HTTPStatusCode"] == theirs["ResponseMetadata"]["HTTPStatusCode"] == 200


async def test_put_stream_of_a_small_object_takes_the_direct_path(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    for direct_put in (True, False):
        async with S3Store(S3Config(endpoint_url=url, direct_put=direct_put)) as s3:
            assert (s3.direct is not None) is direct_put
            await s3.put_stream("s3://bucket/k/obj", one(b"small"))
    ours, theirs = seen
    assert ours["headers"]["user-agent"] == theirs["headers"]["user-agent"].split(" botocore/")[0]
    assert ours["body"] == theirs["body"] == b"small"


@pytest.mark.parametrize(
    "change",
    [
        {"Body": b"x" * (MAX_BODY + 1)},  # large: botocore, sliced
        {"Key": "a/../b"}, {"Key": "a//b"}, {"Key": "dir/"}, {"Key": "./a"},  # S3 keys botocore sends as they are
        {"Bucket": "arn:aws:s3:us-east-1:123456789012:accesspoint/ap"}, {"Bucket": "Bad_Name"},
        {"Metadata": {"name": "naïve"}}, {"Metadata": {"bad name": "x"}}, {"ContentType": "a\nb"},
        {"ChecksumAlgorithm": "CRC32"}, {"SSECustomerKeyMD5": "abc"}, {"WebsiteRedirectLocation": "/x"},
        {"ContentMD5": None},
    ],
)
def test_what_it_does_not_know_goes_through_botocore(change: dict[str, Any]) -> None:
    args = {**put_args(b"body", key="plain/key"), **change}
    if change.get("ContentMD5", "") is None:
        del args["ContentMD5"]
    assert DirectPut.accepts(put_args(b"body", key="plain/key"))
    assert not DirectPut.accepts(args)


@pytest.mark.parametrize(
    "config",
    [
        S3Config(region="eu-west-1"),  # AWS's endpoint rules decide the URL
        S3Config(endpoint_url="http://127.0.0.1:1", addressing_style="virtual"),
        S3Config(endpoint_url="http://127.0.0.1:1", addressing_style="auto"),
        S3Config(endpoint_url="http://127.0.0.1:1/base/path"),
        S3Config(endpoint_url="http://127.0.0.1:1", direct_put=False),
    ],
)
async def test_stores_botocore_must_address_have_no_direct_path(config: S3Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    async with S3Store(config) as s3:
        assert s3.direct is None
    async with S3Store(S3Config(endpoint_url="http://127.0.0.1:1")) as s3:
        assert s3.direct is not None


OBJECT = "/bucket/k/obj"  # the path of s3://bucket/k/obj, path-style


def etag_of(data: bytes) -> dict[str, str]:
    return {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}


async def one_piece(data: bytes = b"data") -> AsyncIterator[bytes]:
    yield data


def store_on(server: ScriptedServer, **config: Any) -> S3Store:
    """A store on the scripted server whose limiter sleeps on a fake clock (backoff costs no time)."""
    limiters = LimiterRegistry(clock=FakeClock(), seed=1)
    return S3Store(S3Config(endpoint_url=server.url, **config), AdapterContext(limiters=limiters))


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (503, b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>", {"Retry-After": "2"}),
        (503, b"", {}),
        (500, b"<Error><Code>InternalError</Code><Message>oops</Message></Error>", {}),
        (429, b"not xml at all", {}),
        (403, b"<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message><RequestId>r1</RequestId></Error>", {"x-amz-request-id": "r1"}),
        (404, b"<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>", {}),
        (400, b"<Error><Code>InvalidArgument</Code><Message>bad</Message></Error>", {}),
    ],
)
async def test_error_answers_become_botocores_client_error(
    scripted: ScriptedServer, status: int, body: bytes, headers: dict[str, str]
) -> None:
    scripted.script(OBJECT, reply(status, body, headers), reply(status, body, headers))
    args = put_args(b"payload", key="k/obj")
    errors = []
    async with store_on(scripted) as s3:
        assert s3.direct is not None
        for send in (lambda: s3.direct.put_object(args), lambda: s3.client.put_object(**args)):  # type: ignore[union-attr]
            with pytest.raises(ClientError) as caught:
                await send()
            errors.append(caught.value.response)
    ours, theirs = errors
    assert ours["Error"]["Code"] == theirs["Error"]["Code"]
    assert ours["Error"].get("Message", "") == theirs["Error"].get("Message", "")
    assert ours["ResponseMetadata"]["HTTPStatusCode"] == theirs["ResponseMetadata"]["HTTPStatusCode"] == status
    for name, value in headers.items():
        assert ours["ResponseMetadata"]["HTTPHeaders"][name.lower()] == value


@pytest.mark.parametrize(
    ("status", "code", "raised"),
    [(403, "AccessDenied", AuthError), (404, "NoSuchBucket", NotFoundError), (400, "InvalidArgument", FatalError)],
)
async def test_a_refused_direct_put_fails_at_once_as_botocores_would(
    scripted: ScriptedServer, status: int, code: str, raised: type[Exception]
) -> None:
    scripted.script(OBJECT, reply(status, f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()))
    async with store_on(scripted) as s3:
        with pytest.raises(raised):
            await s3.put_stream(f"s3:/{OBJECT}", one_piece())
    assert scripted.count(OBJECT) == 1


async def test_faults_cost_an_attempt_each_until_the_attempt_limit(scripted: ScriptedServer) -> None:
    """5xx, SlowDown, a reset, an answer that never comes (read timeout), one cut short of its
    Content-Length and a wrong ETag each cost one attempt; the next one stores the object. Past
    ``max_attempts`` the transfer fails."""
    scripted.script(
        OBJECT, reply(500, b""), reply(503, b"<Error><Code>SlowDown</Code></Error>"), RESET, HANG,
        truncated(b"x" * 10, 100), reply(200, b"", {"ETag": '"00000000000000000000000000000000"'}),
        reply(200, b"", etag_of(b"data")),
    )
    async with store_on(scripted, read_timeout=0.3, max_attempts=7) as s3:
        assert s3.direct is not None
        result = await s3.put_stream(f"s3:/{OBJECT}", one_piece())
        assert result.etag == hashlib.md5(b"data").hexdigest()
        assert scripted.count(OBJECT) == 7
        scripted.script("/bucket/k/other", *[reply(500, b"")] * 7)
        with pytest.raises(TransferError):
            await s3.put_stream("s3://bucket/k/other", one_piece())
    assert scripted.count("/bucket/k/other") == 7
    assert all(" botocore/" not in headers["User-Agent"] for _, _, headers in scripted.requests)


@pytest.mark.parametrize("status", [301, 307])
async def test_a_redirecting_endpoint_is_left_to_botocore(scripted: ScriptedServer, status: int) -> None:
    code = "PermanentRedirect" if status == 301 else "TemporaryRedirect"
    moved = reply(status, f"<Error><Code>{code}</Code><Endpoint>127.0.0.1</Endpoint></Error>".encode(),
                  {"Location": "http://127.0.0.1:1/elsewhere"})
    scripted.script(OBJECT, moved, reply(200, b"", etag_of(b"data")))  # botocore's own request gets the 200
    scripted.script("/bucket/k/obj2", reply(200, b"", etag_of(b"data")))
    async with store_on(scripted) as s3:
        assert s3.direct is not None
        first = await s3.put_stream(f"s3:/{OBJECT}", one_piece())
        assert s3.direct is None
        second = await s3.put_stream("s3://bucket/k/obj2", one_piece())
    assert first.etag == second.etag == hashlib.md5(b"data").hexdigest()
    agents = [headers["User-Agent"] for _, _, headers in scripted.requests]
    assert len(agents) == 3 and " botocore/" not in agents[0]
    assert all(" botocore/" in agent for agent in agents[1:])


async def test_refreshed_credentials_sign_the_next_request(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    """botocore's credentials object is asked on every request, so a refresh (assumed roles,
    instance profiles) reaches the direct path; each request verifies with its own secret."""
    url, seen = recorder

    class Rotating:
        def __init__(self) -> None:
            self.turn = 0

        async def get_frozen_credentials(self) -> Credentials:
            self.turn += 1
            return Credentials(f"AK{self.turn}", f"secret-{self.turn}", f"token-{self.turn}")

    direct = DirectPut(S3Config(endpoint_url=url), url, "us-east-1", Rotating())
    try:
        for _ in range(2):
            await direct.put_object(put_args(b"abc", key="k/obj"))
    finally:
        await direct.aclose()
    for turn, request in enumerate(seen, start=1):
        sent = request["headers"]
        assert sent["x-amz-security-token"] == f"token-{turn}"
        signature = botocore_signature("PUT", request["url"], sent, f"secret-{turn}", f"AK{turn}", f"token-{turn}")
        assert sent["authorization"] == sent["authorization"].split("Signature=")[0] + f"Signature={signature}"
        assert f"Credential=AK{turn}/" in sent["authorization"]


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2036, 1, 1, tzinfo=UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("runferry test CA")).issuer_name(name("runferry test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_tls_is_verified_with_botocores_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS the direct PUT trusts what botocore's client trusts (``AWS_CA_BUNDLE`` here):
    a server whose CA is in the bundle is reached directly; with another bundle both paths refuse it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    ca, cert, key = tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    agents: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        agents.append(request.headers["User-Agent"])
        return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    async def one() -> AsyncIterator[bytes]:
        yield b"secret bytes"

    async with serving(handle, tls=context) as url:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        async with S3Store(S3Config(endpoint_url=url)) as s3:
            assert s3.direct is not None
            await s3.put_stream("s3://bucket/k/obj", one())
        assert len(agents) == 1 and " botocore/" not in agents[0]
        (tmp_path / "other").mkdir()
        other_ca, _, _ = tls_files(tmp_path / "other")
        monkeypatch.setenv("AWS_CA_BUNDLE", str(other_ca))
        for direct_put in (True, False):  # a refused certificate is no network hiccup: one attempt, a clear error
            async with S3Store(S3Config(endpoint_url=url, direct_put=direct_put)) as s3:
                assert (s3.direct is not None) is direct_put
                with pytest.raises(FatalError, match="TLS certificate was refused"):
                    await s3.put_stream("s3://bucket/k/obj", one())
                assert s3.limiter_for(S3Url.parse("s3://bucket/k/obj")).statistics().retries == 0
        assert len(agents) == 1


def test_a_proxy_for_the_endpoint_leaves_the_put_to_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def direct_with(proxy: str | None) -> DirectPut | None:
        if proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy)
        else:
            monkeypatch.delenv("HTTP_PROXY", raising=False)
            monkeypatch.delenv("http_proxy", raising=False)
        async with S3Store(S3Config(endpoint_url="http://127.0.0.1:9")) as s3:
            return s3.direct

    assert asyncio.run(direct_with(None)) is not None
    assert asyncio.run(direct_with("http://127.0.0.1:3128")) is None


# -- against moto ------------------------------------------------------------------------------


async def test_objects_written_directly_read_back_as_botocores_do(front: S3Stack) -> None:
    config = S3Config(endpoint_url=front.moto_url)
    bucket = f"rf-{uuid.uuid4().hex[:12]}"
    keys = ["plain.txt", AWKWARD_KEY, "deep/" * 20 + "leaf", "日本語/ファイル.json", "empty"]
    async with S3Store(config) as ours, S3Store(S3Config(endpoint_url=front.moto_url, direct_put=False)) as theirs:
        assert ours.direct is not None and theirs.direct is None
        await ours.client.create_bucket(Bucket=bucket)
        for key in keys:
            body = b"" if key == "empty" else os.urandom(len(key) * 37)
            args = {**put_args(body), "Bucket": bucket}
            for name in ("SSECustomerAlgorithm", "SSECustomerKey", "StorageClass", "ExpectedBucketOwner"):
                del args[name]  # moto's checks of these differ from S3's; the recorder covers them
            assert ours.direct.accepts({**args, "Key": f"direct/{key}"})
            await ours.direct.put_object({**args, "Key": f"direct/{key}"})
            await theirs.client.put_object(**{**args, "Key": f"boto/{key}"})
            heads = [await ours.client.head_object(Bucket=bucket, Key=f"{way}/{key}") for way in ("direct", "boto")]
            for field in ("ContentType", "ContentEncoding", "CacheControl", "Metadata", "ContentLength", "ETag"):
                assert heads[0].get(field) == heads[1].get(field), (key, field)
            assert heads[0]["Metadata"] == {"run-id": "abc123", "note": "two  spaces"}
            got = await ours.client.get_object(Bucket=bucket, Key=f"direct/{key}")
            async with got["Body"] as stream:
                assert await stream.read() == body
            tags = await ours.client.get_object_tagging(Bucket=bucket, Key=f"direct/{key}")
            assert {t["Key"]: t["Value"] for t in tags["TagSet"]} == {"team": "ml", "x": "1"}
