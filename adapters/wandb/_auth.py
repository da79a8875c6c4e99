"""How runferry authenticates to W&B, shared by the source and the destination.

W&B takes HTTP Basic with user ``api`` and the API key as password (as the SDK sends it).
The key is read from the environment when a session opens and lives only inside the session's
headers: never on objects that get logged, never in messages.
"""

from __future__ import annotations

import base64
import os

from core.errors import ConfigError


def api_key_from_env(variable: str, where: str) -> str:
    """The API key held by ``variable``; ConfigError naming the variable (never a value) if unset."""
    key = os.environ.get(variable, "")
    if not key:
        raise ConfigError(f"{where} environment variable {variable} (api_key_env) is not set or empty — export the API key in it")
    return key


def auth_headers(key: str) -> dict[str, str]:
    """Request headers for the W&B API: Basic ``api:<key>`` and our User-Agent."""
    token = base64.b64encode(f"api:{key}".encode()).decode()
    return {"Authorization": "Basic " + token, "User-Agent": "runferry"}
