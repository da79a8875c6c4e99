"""TOML configuration -> frozen, validated objects, before anything runs.

Every error is one line that names the file, the key and the fix, and raises ``ConfigError``
(the CLI turns it into exit code 2). Adapter tables are validated against the adapter's own
``Config`` dataclass (see ``adapters/base.py``): unknown keys are rejected with a did-you-mean,
types are checked, and every ``*_env`` key must name an environment variable that is set.

Memory bound of a migration (what ``[transfer]`` controls), roughly::

    peak ≈ start-up (~100 MB: Python, Arrow, HTTP clients)
         + memory_budget                          (history chunks' Arrow bytes + file pieces in flight)
         + one chunk or piece per run in flight   (each run may overdraw by one, so it always progresses)
         + run_queue × (size of one run's metadata)

Runs are admitted while their seats (256 KiB plus the chunk their source is building) fit in
``memory_budget`` (``engine/admission.py``), so many small runs run side by side and a few huge
ones take the budget between them. With the defaults (24 MiB budget, at most 64 runs) the
bound holds independent of how many runs there are, how long they are or how large files are
(``python -m bench memory_scaling`` measures peak RSS).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from adapters import registry
from core.errors import ConfigError
from scaleout.config import RayConfig, require_ray

SECRET_WORDS = ("api_key", "token", "password", "secret")


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """``[transfer]``: how the migration runs.

    - ``ledger``: path of the append-only journal (relative paths are relative to the working
      directory). Default ``runferry-ledger.jsonl``.
    - ``incremental``: skip runs the ledger says are done, resume unfinished ones from their
      cursors (default true). ``false`` redoes every run from the start.
    - ``artifacts``: move run files and artifacts (default true).
    - ``runs_concurrency``: at most this many runs in flight at once; default 0 = automatic:
      runs start while ``memory_budget`` has room and no endpoint is throttling or saturated,
      up to 64 at once.
    - ``memory_budget``: bytes of history chunks and file pieces in flight across all runs,
      default 24 MiB (25165824). Big runs take more of it and admit fewer peers.
    - ``file_workers``: concurrent file/artifact transfers across all runs, default 8.
    - ``chunk_points``: history points per chunk, default 100,000.
    - ``queue_chunks``: chunks buffered between a run's reader and writer, default 4.
    - ``run_queue``: run references buffered ahead of the workers, default 64.
    - ``part_bytes``: piece size for streamed files and multipart parts, default 8 MiB.
    - ``max_runs``: stop after this many selected runs (0 = all), default 0.
    - ``executor``: ``"local"`` (default: this process) or ``"ray"`` (shards leased to worker
      actors on a Ray cluster, configured by the ``[ray]`` table; needs ``runferry[ray]``).
    """

    ledger: str = "runferry-ledger.jsonl"
    incremental: bool = True
    artifacts: bool = True
    runs_concurrency: int = 0
    memory_budget: int = 24 * 1024 * 1024
    file_workers: int = 8
    chunk_points: int = 100_000
    queue_chunks: int = 4
    run_queue: int = 64
    part_bytes: int = 8 * 1024 * 1024
    max_runs: int = 0
    executor: str = "local"

    def __post_init__(self) -> None:
        for name in ("memory_budget", "file_workers", "chunk_points", "queue_chunks", "run_queue", "part_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.runs_concurrency < 0:
            raise ValueError("runs_concurrency must be 0 (automatic) or positive")
        if self.max_runs < 0:
            raise ValueError("max_runs must be 0 (all) or positive")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be \"local\" or \"ray\", got {self.executor!r}")


@dataclass(frozen=True, kw_only=True)
class Remap:
    """``[[remap]]``: move runs of namespace ``from`` to namespace ``to`` ("entity/project")."""

    source: str
    target: str


@dataclass(frozen=True, kw_only=True)
class Config:
    """A validated migration configuration."""

    path: str
    source_type: str
    source: object
    destination_type: str
    destination: object
    transfer: TransferConfig = field(default_factory=TransferConfig)
    remap: tuple[Remap, ...] = ()
    ratelimit: dict[str, object] = field(default_factory=dict)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def ledger_path(self) -> Path:
        return Path(self.transfer.ledger)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file. Raises ``ConfigError`` with a one-line message."""
    origin = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{origin}: file not found — pass the path of a TOML config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML ({exc}) — fix the syntax at that line") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 (byte {exc.start}) — save the file as UTF-8 text") from None
    except IsADirectoryError:
        raise ConfigError(f"{origin}: is a directory — pass the path of a TOML config file") from None
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read ({exc.strerror})") from None
    return parse_config(data, origin)


def parse_config(data: Mapping[str, object], origin: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    _reject_unknown(origin, "", data, ["source", "destination", "transfer", "remap", "ratelimit", "ray"])
    source_type, source = _adapter_table(origin, "source", data, registry.SOURCES)
    destination_type, destination = _adapter_table(origin, "destination", data, registry.DESTINATIONS)
    transfer = _build(origin, "[transfer]", TransferConfig, _table(origin, "transfer", data.get("transfer", {})))
    ratelimit = _table(origin, "[ratelimit]", data.get("ratelimit", {}))
    ray = _build(origin, "[ray]", RayConfig, _table(origin, "[ray]", data.get("ray", {})))
    if transfer.executor == "ray":
        require_ray(origin)
    from ratelimit import LimiterRegistry

    try:  # validate now, fail early; ratelimit knows nothing of our error tree
        LimiterRegistry.from_mapping(ratelimit, origin=f"{origin}: [ratelimit]")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    remaps = []
    raw_remap = data.get("remap", [])
    if not isinstance(raw_remap, list):
        raise ConfigError(f"{origin}: 'remap' must be an array of tables — write [[remap]] sections")
    for i, item in enumerate(raw_remap):
        where = f"[[remap]] #{i + 1}"
        item = _table(origin, where, item)
        _reject_unknown(origin, where, item, ["from", "to"])
        for key in ("from", "to"):
            parts = item[key].split("/") if isinstance(item.get(key), str) else []
            if len(parts) != 2 or not all(part.strip() for part in parts):
                raise ConfigError(
                    f"{origin}: {where} key '{key}' must be a string 'entity/project' (two non-empty parts; '*' matches any)"
                )
        remaps.append(Remap(source=item["from"], target=item["to"]))
    return Config(
        path=origin,
        source_type=source_type,
        source=source,
        destination_type=destination_type,
        destination=destination,
        transfer=transfer,
        remap=tuple(remaps),
        ratelimit=ratelimit,
        ray=ray,
    )


def _adapter_table(origin: str, section: str, data: Mapping[str, object], known: dict[str, str]) -> tuple[str, object]:
    if section not in data:
        raise ConfigError(f"{origin}: missing [{section}] table — add one with type = one of {sorted(known)}")
    table = dict(_table(origin, section, data[section]))
    kind = table.pop("type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"{origin}: [{section}] needs key 'type' = one of {sorted(known)}")
    if kind not in known:
        raise ConfigError(f"{origin}: [{section}] type '{kind}' is unknown{_did_you_mean(kind, known)} (known: {', '.join(sorted(known))})")
    try:
        cls = registry.load(known[kind])
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{origin}: [{section}] type '{kind}' is not available in this installation ({exc})") from None
    return kind, _build(origin, f"[{section}]", cls.Config, table)


def _table(origin: str, where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {where} must be a table, got {type(value).__name__}")
    return value


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def _reject_unknown(origin: str, where: str, table: Mapping[str, object], allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            prefix = f"{where} " if where else ""
            hint = _did_you_mean(key, allowed)
            if not hint and any(word in key for word in SECRET_WORDS):
                env_keys = [a for a in allowed if a.endswith("_env")]
                hint = " — secrets never go in the file: put the secret in an environment variable" + (
                    f" and name it with '{env_keys[0]}'" if env_keys else ""
                )
            if not hint:
                hint = f" — allowed keys: {', '.join(allowed)}"
            raise ConfigError(f"{origin}: {prefix}unknown key '{key}'{hint}")


def _build(origin: str, where: str, cls: type, table: dict[str, Any]) -> Any:
    """Check ``table`` against the dataclass ``cls`` and construct it."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _reject_unknown(origin, where, table, fields)
    hints = typing.get_type_hints(cls)
    missing = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in table
    ]
    if missing:
        raise ConfigError(f"{origin}: {where} missing required key '{missing[0]}'")
    values: dict[str, Any] = {}
    for key, value in table.items():
        expected = hints[key]
        if not _matches(value, expected):
            raise ConfigError(
                f"{origin}: {where} key '{key}' must be {_describe(expected)}, got {type(value).__name__} {value!r}"[:300]
            )
        if isinstance(value, list):
            value = tuple(value) if _origin_is(expected, tuple) else list(value)
        values[key] = value
    for key, value in {**{k: getattr(f, "default", None) for k, f in fields.items()}, **values}.items():
        if key.endswith("_env") and isinstance(value, str) and value and value not in os.environ:
            raise ConfigError(
                f"{origin}: {where} key '{key}' names environment variable {value}, which is not set — export it before running"
            )
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{origin}: {where} {exc}") from None


def _origin_is(tp: Any, cls: type) -> bool:
    return typing.get_origin(tp) is cls


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        key_t, val_t = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_matches(k, key_t) and _matches(v, val_t) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "absent"
    if origin in (list, tuple):
        return f"an array of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))
