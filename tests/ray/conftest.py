"""One local Ray cluster for the whole session (Ray is optional: these tests skip without it).

``num_cpus=4`` (workers take none), no dashboard, a 100 MB object store, temporary files under
pytest's temporary directory, workers importing this checkout (PYTHONPATH), and
``RAY_AUTH_MODE=disabled`` (else this Ray writes ``~/.ray/auth_token``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test,ray]' to run tests/ray")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp = Path("/tmp") / f"rf-ray-{os.getpid()}"  # Ray's socket paths must stay short
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _temp_dir=str(temp),
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        yield
    finally:
        ray.shutdown()
