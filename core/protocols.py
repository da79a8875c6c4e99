"""The two small interfaces every adapter implements, and what the engine hands them.

The pipeline talks only to these protocols; it never asks which system is behind them.

Lifecycle: an adapter is constructed from its frozen config dataclass and an ``AdapterContext``
(no I/O in ``__init__``), then used as an async context manager: ``__aenter__`` opens sessions and
checks credentials (raise ``core.errors.AuthError`` for rejected credentials, ``ConfigError`` for
unusable settings), ``__aexit__`` closes everything it opened, even on cancellation.

Config convention: each adapter class has a ``Config`` attribute, a ``@dataclass(frozen=True,
kw_only=True)`` whose fields are the TOML keys of its ``[source]`` / ``[destination]`` table
(``type`` excluded). Supported field types: str, int, float, bool, ``str | None`` (and the other
scalars with None), ``list[str]``, ``dict[str, str]``. A field whose name ends in ``_env`` names an
environment variable holding a secret; the config loader checks that it is set (when non-empty)
before anything runs. Secrets are read from ``os.environ`` by the adapter itself and never
stored on objects that get logged. ``Config.__doc__`` documents the keys (README copies it).

Streams are async generators: the engine closes one it stops early (``contextlib.aclosing``), so
an adapter's connection or file is released at once.

Ordering contract for history: ``iter_history(run, start)`` yields the run's points in the same
deterministic order every time, beginning with point index ``start``; chunks carry their offset.

Durability contract for writers: ``checkpoint()`` returns the number of history points (counted
in the source's order) that are durable at the destination, plus an opaque, JSON-serialisable
``state``. The engine records it in the ledger after each ``write_history``. After a crash the
engine calls ``open_run(run, resume=<last checkpoint>)`` and then continues history from
``resume.history_points``; the writer must make anything it wrote beyond that point invisible or
overwrite it idempotently, so that no point is ever stored twice.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from core.model import FileRef, HistoryChunk, Namespace, RunRecord, RunRef

if TYPE_CHECKING:  # types only: at run time core imports nothing of ours
    from ratelimit import Clock, LimiterRegistry

EventHook = Callable[..., None]
"""``hook(name, **fields)``: progress and throttling events (``"throttle"``, ``"retry"``...)."""


def _ignore_event(name: str, **fields: object) -> None:
    return None


def _same_namespace(namespace: Namespace) -> Namespace:
    return namespace


@dataclass(frozen=True, kw_only=True)
class AdapterContext:
    """What the engine gives every adapter: sizing hints, an event hook, shared limiters.

    Frozen: the engine derives a new context (``dataclasses.replace``) rather than changing one
    an adapter already holds.
    """

    chunk_points: int = 100_000
    part_bytes: int = 8 * 1024 * 1024
    events: EventHook = _ignore_event
    limiters: LimiterRegistry | None = None
    """The process-wide ``ratelimit`` registry (one adaptive controller per endpoint, shared by
    every worker); ``None`` means "use your own defaults"."""
    clock: Clock | None = None
    """Time for pacing that is not a limiter's (tests inject a ``FakeClock``); ``None``: real time."""
    source_uri: str = ""
    """The source's ``describe()`` (set by the engine once the source exists): destinations may
    derive stable run ids from it. Empty when the adapter is used on its own."""
    namespace_map: Callable[[Namespace], Namespace] = _same_namespace
    """The engine's ``[[remap]]`` rules: where a source namespace goes. Destinations that link
    to things in other namespaces (W&B artifacts used across projects, reports) map them so."""


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A writer's durable position: history points stored, plus adapter-private state."""

    history_points: int = 0
    state: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """Read-only access to runs. A source never writes to the system it reads."""

    def describe(self) -> str:
        """A stable, secret-free identity of this source (used in ledger keys), e.g. a URI."""
        ...

    async def __aenter__(self) -> Source: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def list_runs(self) -> AsyncGenerator[RunRef, None]:
        """Page through the selected runs (filters pushed down where the system allows)."""
        ...

    async def get_run(self, ref: RunRef) -> RunRecord:
        """Everything about the run except history points and file bytes."""
        ...

    def iter_history(self, run: RunRecord, start: int = 0) -> AsyncGenerator[HistoryChunk, None]:
        """The run's history from point ``start`` on, in chunks of about ``chunk_points``."""
        ...

    def list_files(self, run: RunRecord) -> AsyncGenerator[FileRef, None]:
        """Run files and artifact members (walk the whole tree)."""
        ...

    def read_file(self, run: RunRecord, file: FileRef) -> AsyncGenerator[bytes, None]:
        """Stream the file's bytes in pieces; never the whole file in memory."""
        ...


@runtime_checkable
class RunWriter(Protocol):
    """Writes one run at a destination. Methods may be called concurrently for files; history
    chunks arrive one at a time, in order."""

    dest_id: str
    """The run's identity at the destination (recorded in the ledger)."""

    async def write_history(self, chunk: HistoryChunk) -> None:
        """Store a chunk. May buffer; what is durable is what ``checkpoint()`` says."""
        ...

    async def flush_history(self) -> None:
        """The source has no more points: make everything buffered durable."""
        ...

    def checkpoint(self) -> Checkpoint:
        """What is durable now (see the module docstring)."""
        ...

    async def write_file(self, file: FileRef, data: AsyncIterator[bytes]) -> None:
        """Store a file from a stream of byte pieces. Idempotent: writing it again replaces it."""
        ...

    async def finish(self, run: RunRecord) -> None:
        """All history and files are in: write summary, final state and end time."""
        ...

    async def aclose(self) -> None:
        """Release what the writer holds (called on success and failure alike)."""
        ...


@runtime_checkable
class Destination(Protocol):
    """Where runs go."""

    def describe(self) -> str:
        """A stable, secret-free identity of this destination (used in ledger keys)."""
        ...

    async def __aenter__(self) -> Destination: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def open_run(self, run: RunRecord, resume: Checkpoint | None) -> RunWriter:
        """Find or create the run (idempotently) and return a writer positioned at ``resume``."""
        ...

    async def finalize(self) -> None:
        """Called once after every run was handled (for example to write summary tables)."""
        ...


@dataclass(frozen=True)
class FinishedRun:
    """What the ledger says an earlier migration left at the destination."""

    dest_id: str
    checkpoint: Checkpoint
    files: dict[str, int]


@runtime_checkable
class ReadAhead(Protocol):
    """Optional source capability: told, in order, which runs will be read soon (queued and
    not done yet), a source may fetch their data together with the runs read before them."""

    def expect(self, ref: RunRef) -> None: ...


@runtime_checkable
class RunChecker(Protocol):
    """Optional destination capability: compare a finished run at the destination with what
    the ledger says was written there; an empty list means intact."""

    async def check_run(self, run: RunRecord, finished: FinishedRun) -> list[str]: ...
