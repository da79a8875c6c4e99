"""A run's console log -> ``output.log`` lines for file_stream (pure: splitting and batching).

Why: W&B shows a run's console output (the "Logs" tab, ``Run.console_logs()``) from the
``output.log`` lines a run streams, and keeps the file ``output.log`` among the run files (the
SDK uploads it when the run ends). The writer does both: it streams the source's log line by
line at explicit offsets from 0, then uploads the same bytes as the run file. Lines are
addressed by offset, so a resumed migration that sends the log again overwrites the same lines:
never a duplicate.

Rules:

- A line is the text between two ``\\n`` (the newline itself is not part of it, as in the
  SDK's lines); a last line without a newline is a line too; ``\\r`` and other characters are
  kept as they are (progress bars stay what the source recorded). The run file keeps the exact
  bytes.
- Bytes are decoded as UTF-8, invalid sequences replaced by U+FFFD (JSON text cannot carry
  them; the run file still has them).
- Lines are sent verbatim, without the import-time timestamp prefix the SDK adds to live output
  (the source recorded none, and an invented time would be wrong).
- A line longer than ``line_cap`` characters (W&B drops lines near 10 MiB) is cut into pieces
  of ``line_cap``; each cut is counted.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import orjson

CONSOLE_FILE = "output.log"
"""W&B's name for a run's console log, in file_stream and among the run files."""


def line_cap(content_budget: int) -> int:
    """Longest line sent as one: a line's JSON text is at most 6 bytes per character
    (``\\u00XX`` escapes), so a capped line always fits in one request."""
    return max(1024, content_budget // 6)


class LineSplitter:
    """Byte pieces -> lines (see the module rules), incrementally; memory = one partial line."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.cuts = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""

    def feed(self, piece: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(piece)
        *lines, self._partial = text.split("\n")
        out = [cut for line in lines for cut in self._cut(line)]
        if len(self._partial) > self.cap:  # a very long line is cut as it streams in
            keep = len(self._partial) % self.cap or self.cap
            head, self._partial = self._partial[:-keep], self._partial[-keep:]
            out.extend(head[i : i + self.cap] for i in range(0, len(head), self.cap))
            self.cuts += len(head) // self.cap
        return out

    def finish(self) -> list[str]:
        text = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return list(self._cut(text)) if text else []

    def _cut(self, line: str) -> Iterator[str]:
        if len(line) <= self.cap:
            yield line
            return
        self.cuts += (len(line) - 1) // self.cap
        for i in range(0, len(line), self.cap):
            yield line[i : i + self.cap]


class LineBatcher:
    """Groups lines into request-sized batches (JSON content under ``budget`` bytes)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lines: list[str] = []
        self._size = 0

    def add(self, line: str) -> list[str] | None:
        """Take a line; return a full batch when this line does not fit in the current one."""
        cost = len(orjson.dumps(line)) + 1
        full = None
        if self._lines and self._size + cost > self.budget:
            full, self._lines, self._size = self._lines, [], 0
        self._lines.append(line)
        self._size += cost
        return full

    def rest(self) -> list[str] | None:
        full, self._lines, self._size = self._lines, [], 0
        return full or None
