"""Tiny aiohttp helpers for talking to the fake server directly (no SDK)."""

from __future__ import annotations

import aiohttp


class FakeClock:
    """Manually advanced clock for rate-limit tests (seconds)."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def auth(key: str) -> dict[str, str]:
    """Headers with HTTP Basic ``api:<key>`` (what the SDK sends)."""
    return {"Authorization": aiohttp.encode_basic_auth("api", key)}


async def gql(session: aiohttp.ClientSession, server, query: str, variables: dict | None = None, key: str | None = None):
    """POST a GraphQL document; returns (status, json body, headers)."""
    async with session.post(
        f"{server.base_url}/graphql",
        json={"query": query, "variables": variables or {}},
        headers=auth(key or server.api_key),
    ) as response:
        return response.status, await response.json(), response.headers


async def file_stream(session, server, run: str, payload: dict, project: str = "proto", entity: str | None = None, key: str | None = None):
    url = f"{server.base_url}/files/{entity or server.entity}/{project}/{run}/file_stream"
    async with session.post(url, json=payload, headers=auth(key or server.api_key)) as response:
        return response.status, await response.json(), response.headers


UPSERT = """
mutation UpsertBucket($name: String, $project: String, $entity: String, $config: JSONString, $tags: [String!]) {
  upsertBucket(input: {name: $name, modelName: $project, entityName: $entity, config: $config, tags: $tags}) {
    bucket { id name displayName historyLineCount project { name entity { name } } }
    inserted
  }
}
"""


async def upsert_run(session, server, name: str, project: str = "proto", entity: str | None = None, key: str | None = None):
    return await gql(session, server, UPSERT, {"name": name, "project": project, "entity": entity or server.entity}, key)
