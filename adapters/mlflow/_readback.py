"""Reading back what ``MlflowDestination`` wrote (for ``verify``): the destination server is an
MLflow source with the same credentials, and a destination run id is an MLflow run id.

Two things the destination wrote on purpose are read back as what they stand for, so that
``verify`` compares like with like:

- runs from W&B (tag ``wandb.run_id``) are read through ``_wandb``'s mapping backwards: the
  side files (``wandb/config.json``, ``wandb/summary.json``, ``wandb/history_nonnumeric.jsonl``)
  are not run files, and the non-numeric history lines are history points again (their value's
  JSON text exactly as the source gave it);
- ``stored_floats``: the SQL store keeps ``±inf`` as ``±DBL_MAX`` and SQLite keeps ``-0.0`` as
  ``0.0`` (README "what cannot be carried exactly"); verify applies it to both sides before it
  calls such a difference the destination's number form rather than a loss.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncGenerator, Callable

import numpy as np

from core.protocols import AdapterContext
from adapters.mlflow import _wandb
from adapters.mlflow._config import MlflowDestinationConfig, MlflowSourceConfig
from adapters.mlflow._source import MlflowSource
from core.model import FileRef, HistoryChunk, Namespace, RunRecord, RunRef, history_batch

_SIDE_FILES = frozenset({_wandb.CONFIG_ARTIFACT, _wandb.SUMMARY_ARTIFACT, _wandb.NONNUMERIC_ARTIFACT})
_VALUE_MARK = ',"value":'


def stored_floats(values: np.ndarray) -> np.ndarray:
    """``values`` (float64) as an MLflow SQL store holds them: ``±inf`` as ``±DBL_MAX``,
    ``-0.0`` as ``0.0``; everything else (NaN included) unchanged."""
    held = np.where(np.isinf(values), np.copysign(sys.float_info.max, values), values)
    held[held == 0.0] = 0.0  # -0.0 == 0.0: both become +0.0
    return held


def nonnumeric_point(line: str) -> tuple[str, int, float, float | None, str | None]:
    """``(key, step, timestamp, value, value_json)`` of one ``history_nonnumeric.jsonl`` line
    (``_wandb.nonnumeric_line`` backwards). The value's text is cut out of the line as it is,
    not re-encoded: ``,"value":`` cannot occur in the JSON-encoded key before it (its quote
    would be escaped), so its first occurrence ends the head."""
    head, _, text = line.rstrip("\n").partition(_VALUE_MARK)
    text = text[:-1]  # the closing brace of the line's object
    fields = json.loads(head + "}")
    parsed = json.loads(text)
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):  # a number whose key MLflow cannot hold
        return fields["key"], int(fields["step"]), float(fields["timestamp"]), float(parsed), text if isinstance(parsed, int) else None
    return fields["key"], int(fields["step"]), float(fields["timestamp"]), None, text


def _lines(piece: bytes, tail: bytes) -> tuple[list[str], bytes]:
    """The complete lines of ``tail + piece`` and what is left of an unfinished last line."""
    *complete, rest = (tail + piece).split(b"\n")
    return [line.decode("utf-8") for line in complete if line], rest


class MlflowReadback(MlflowSource):
    """An MLflow destination read back for ``verify`` (see the module docstring)."""

    async def iter_history(self, run: RunRecord, start: int = 0) -> AsyncGenerator[HistoryChunk, None]:
        end = start
        async with contextlib.aclosing(super().iter_history(run, start)) as chunks:
            async for chunk in chunks:
                end = chunk.end
                yield chunk
        if _from_wandb(run):
            async with contextlib.aclosing(self._nonnumeric(run, end)) as rest:
                async for chunk in rest:
                    yield chunk

    async def _nonnumeric(self, run: RunRecord, offset: int) -> AsyncGenerator[HistoryChunk, None]:
        size = max(1, self.context.chunk_points)
        rows: list[tuple[str, int, float, float | None, str | None]] = []
        tail = b""
        async with contextlib.aclosing(self.read_file(run, FileRef(path=_wandb.NONNUMERIC_ARTIFACT))) as pieces:
            async for piece in pieces:
                lines, tail = _lines(piece, tail)
                rows.extend(nonnumeric_point(line) for line in lines)
                while len(rows) >= size:
                    yield HistoryChunk(history_batch(*zip(*rows[:size], strict=True)), offset)
                    offset += size
                    del rows[:size]
        if tail.strip():
            rows.append(nonnumeric_point(tail.decode("utf-8")))
        if rows:
            yield HistoryChunk(history_batch(*zip(*rows, strict=True)), offset)

    async def list_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        side = _from_wandb(run)
        async with contextlib.aclosing(super().list_files(run)) as files:
            async for file in files:
                if side and (file.path in _SIDE_FILES or file.path.startswith(_wandb.NONNUMERIC_PARTS + "/")):
                    continue
                yield file


def _from_wandb(run: RunRecord) -> bool:
    return "wandb.run_id" in run.tags


def readback(config: MlflowDestinationConfig, context: AdapterContext) -> tuple[MlflowSource, Callable[[str, RunRef], RunRef]]:
    reader = MlflowReadback(
        MlflowSourceConfig(
            tracking_uri=config.tracking_uri,
            username_env=config.username_env,
            password_env=config.password_env,
            token_env=config.token_env,
            timeout=config.timeout,
        ),
        context,
    )

    def ref_for(dest_id: str, source_ref: RunRef) -> RunRef:
        return RunRef(id=dest_id, namespace=Namespace("", source_ref.namespace.project))

    return reader, ref_for
