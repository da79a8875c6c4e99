"""The aiobotocore client: session, credentials, and the settings that hand retries to our limiter.

One place decides how botocore is configured (no retries of its own, no CRC32 trailers,
payload hashes off the event loop), so every request of the package behaves the same.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from adapters.s3._config import MIB, S3Config
from engine.errors import ConfigError


@asynccontextmanager
async def open_client(config: S3Config) -> AsyncIterator[Any]:
    """An aiobotocore S3 client for ``config``, closed on exit.

    :raises ConfigError: when a variable named by a ``*_env`` key is not set.
    """
    session = get_session()
    if config.profile:
        session.set_config_variable("profile", config.profile)
    credentials = {}
    for arg, env_name in (
        ("aws_access_key_id", config.access_key_id_env),
        ("aws_secret_access_key", config.secret_access_key_env),
        ("aws_session_token", config.session_token_env),
    ):
        if env_name:
            if not os.environ.get(env_name):
                raise ConfigError(f"s3: environment variable {env_name} is not set")
            credentials[arg] = os.environ[env_name]
    client_config = AioConfig(
        retries={"total_max_attempts": 1, "mode": "standard"},  # the limiter retries
        max_pool_connections=max(64, config.part_concurrency * 4),
        s3={"addressing_style": config.addressing_style},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        # botocore >= 1.36 adds CRC32 trailers by default, which several S3-compatible
        # stores reject; we verify with Content-MD5 and ETags instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with session.create_client(
        "s3", region_name=config.region, endpoint_url=config.endpoint_url, config=client_config, **credentials,
    ) as client:
        if (config.endpoint_url or "https").startswith("http://"):
            # Over plain HTTP botocore signs a SHA-256 of every body, on the event loop; an
            # 8 MiB part costs ~20 ms of loop time. Hash it in a thread instead (same signature).
            for operation in ("PutObject", "UploadPart"):
                client.meta.events.register(f"before-sign.s3.{operation}", _hash_payload_in_thread)
        yield client


async def _hash_payload_in_thread(request: Any, **_: Any) -> None:
    """Set the SigV4 payload hash ourselves, computed off the event loop (botocore uses a
    precomputed ``X-Amz-Content-SHA256`` header as is)."""
    body = request.body
    if isinstance(body, (bytes, bytearray)) and "X-Amz-Content-SHA256" not in request.headers:
        if len(body) >= MIB:
            digest = await anyio.to_thread.run_sync(lambda: hashlib.sha256(body).hexdigest())
        else:
            digest = hashlib.sha256(body).hexdigest()
        request.headers["X-Amz-Content-SHA256"] = digest
