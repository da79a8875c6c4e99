"""Buffered history points in compact columns, shared by the line assembler (``_lines``) and
the sorted runs it spills to disk (``_spill``); its own module so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(slots=True)
class Points:
    """Compact columns of buffered points: keys as int32 indices into a ``KeyTable``."""

    key: np.ndarray  # int32
    step: np.ndarray  # int64
    ts: np.ndarray  # float64
    value: np.ndarray  # float64 (NaN where value_json holds the value)
    value_json: pa.Array | None  # string, null where the value is numeric; None = all numeric

    def __len__(self) -> int:
        return len(self.step)

    def take(self, index: np.ndarray) -> Points:
        json_part = None if self.value_json is None else self.value_json.take(pa.array(index))
        return Points(self.key[index], self.step[index], self.ts[index], self.value[index], json_part)

    def head(self, n: int) -> Points:
        json_part = None if self.value_json is None else self.value_json.slice(0, n)
        return Points(self.key[:n], self.step[:n], self.ts[:n], self.value[:n], json_part)

    def tail(self, n: int) -> Points:
        json_part = None if self.value_json is None else self.value_json.slice(n)
        return Points(self.key[n:], self.step[n:], self.ts[n:], self.value[n:], json_part)

    @staticmethod
    def concat(parts: list[Points]) -> Points:
        if len(parts) == 1:
            return parts[0]
        json_part = None
        if any(p.value_json is not None for p in parts):
            json_part = pa.concat_arrays(
                [p.value_json if p.value_json is not None else pa.nulls(len(p), pa.string()) for p in parts]
            )
        return Points(
            np.concatenate([p.key for p in parts]),
            np.concatenate([p.step for p in parts]),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.value for p in parts]),
            json_part,
        )
