"""Small artifacts a destination run writes itself (W&B's config, summary and non-numeric
history), in the run's artifact area (the tracking server's proxy, or the bucket of an
``s3://`` root: see ``_artifacts``).

The non-numeric history is written while chunks arrive, so it cannot be one upload: each
chunk's lines become a part file before the chunk counts as durable, and ``join_parts``
streams the parts, in order, into the final file once the history is complete (re-running it
after a crash writes the same file again; the parts go only after the file is stored).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from adapters.mlflow._artifacts import ArtifactArea, one_piece


class SideFiles:
    """One destination run's side files, in the area ``area()`` gives (asked at first use, so
    a run that never writes one never needs a writable root)."""

    def __init__(self, area: Callable[[], ArtifactArea]) -> None:
        self._area = area

    async def put(self, path: str, data: bytes) -> None:
        await self._area().write(path, one_piece(data), len(data))

    async def parts(
        self, folder: str, span_of: Callable[[str], tuple[int, int] | None]
    ) -> list[tuple[tuple[int, int], str]]:
        """``((start, end), path)`` of the parts stored under ``folder``, in order."""
        found = []
        for path, is_dir in await self._area().list(folder):
            span = span_of(path)
            if span is not None and not is_dir:
                found.append((span, path))
        return sorted(found)

    async def exists(self, path: str) -> bool:
        folder = path.rpartition("/")[0]
        return any(found == path for found, _ in await self._area().list(folder))

    async def delete(self, path: str) -> None:
        await self._area().delete(path)

    async def join_parts(self, parts: list[tuple[tuple[int, int], str]], target: str, folder: str) -> None:
        """Stream ``parts`` into ``target`` (one upload), then delete ``folder``."""
        area = self._area()

        async def joined() -> AsyncGenerator[bytes, None]:
            for _, path in parts:
                async for piece in area.read(path):
                    yield piece

        await area.write(target, joined(), None)
        if parts:
            await self.delete(folder)
