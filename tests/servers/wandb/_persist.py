"""Keeping the server's data in a SQLite file instead of only in memory.

Why: a test or a bench may want a server that survives a restart (a migration resumed against a
restarted destination, or a seeded server reused across runs). The state is saved as one
snapshot row per stored collection (pickled) in a SQLite file; blob bytes already live in files
under ``blob_dir``, which sits beside the database (``<file>.blobs/``). ``save`` is atomic (one
transaction); ``load`` restores exactly what was saved.
"""

from __future__ import annotations

import itertools
import pickle
import sqlite3
from pathlib import Path

from ._state import ServerState

_STORED = ("runs", "runs_by_id", "blobs", "artifacts", "collections", "collection_types", "multipart", "views", "projects")


def blob_dir_for(path: Path) -> Path:
    return path.with_name(path.name + ".blobs")


def open_state(path: Path) -> ServerState:
    """A state backed by ``path``: loaded from it when it exists, else empty."""
    directory = blob_dir_for(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = ServerState(blob_dir=directory)
    if path.exists():
        load(state, path)
    return state


def save(state: ServerState, path: Path) -> None:
    with state.lock:
        rows = [(name, pickle.dumps(getattr(state, name), protocol=pickle.HIGHEST_PROTOCOL)) for name in _STORED]
        seq = next(state._seq)  # noqa: SLF001 - the counter is part of what is stored
        state._seq = itertools.count(seq)  # noqa: SLF001
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS snapshot (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
        db.executemany("INSERT OR REPLACE INTO snapshot (name, data) VALUES (?, ?)", [*rows, ("seq", pickle.dumps(seq))])


def load(state: ServerState, path: Path) -> None:
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT name, data FROM snapshot"))
    with state.lock:
        for name in _STORED:
            if name in rows:
                setattr(state, name, pickle.loads(rows[name]))
        if "seq" in rows:
            state._seq = itertools.count(pickle.loads(rows["seq"]))  # noqa: SLF001
