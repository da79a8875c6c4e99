"""Small artifacts a destination run writes itself (W&B's config, summary and non-numeric
history), through the tracking server's artifact proxy.

The non-numeric history is written while chunks arrive, so it cannot be one upload: each
chunk's lines become a part file before the chunk counts as durable, and ``join_parts``
streams the parts, in order, into the final file once the history is complete (re-running it
after a crash writes the same file again; the parts go only after the file is stored).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from adapters.mlflow._client import MlflowRest
from adapters.mlflow._spool import ReplayableStream

_OCTETS = {"Content-Type": "application/octet-stream"}


class SideFiles:
    """One destination run's artifact area; ``url(path)`` is the proxied artifact URL."""

    def __init__(self, rest: MlflowRest, run_id: str, url: Callable[[str], str]) -> None:
        self.rest = rest
        self.run_id = run_id
        self.url = url

    async def put(self, path: str, data: bytes) -> None:
        await self.rest.http.upload("PUT", self.url(path), lambda: data, headers=_OCTETS, size=len(data))

    async def parts(
        self, folder: str, span_of: Callable[[str], tuple[int, int] | None]
    ) -> list[tuple[tuple[int, int], str]]:
        """``((start, end), path)`` of the parts stored under ``folder``, in order."""
        found = []
        for entry in await self.rest.list_artifacts(self.run_id, folder):
            span = span_of(entry.get("path", ""))
            if span is not None and not entry.get("is_dir"):
                found.append((span, entry["path"]))
        return sorted(found)

    async def exists(self, path: str) -> bool:
        folder = path.rpartition("/")[0]
        return any(e.get("path") == path for e in await self.rest.list_artifacts(self.run_id, folder))

    async def delete(self, path: str) -> None:
        await self.rest.http.request_json("DELETE", self.url(path))

    async def join_parts(self, parts: list[tuple[tuple[int, int], str]], target: str, folder: str) -> None:
        """Stream ``parts`` into ``target`` (one upload), then delete ``folder``."""

        async def joined() -> AsyncGenerator[bytes, None]:
            for _, path in parts:
                async for piece in self.rest.http.download(self.url(path)):
                    yield piece

        stream = ReplayableStream(joined())
        try:
            await self.rest.http.upload("PUT", self.url(target), stream.attempt, headers=_OCTETS)
        finally:
            await stream.aclose()
        if parts:
            await self.delete(folder)
