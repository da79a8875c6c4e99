"""One local Ray cluster for the whole session (Ray is optional: these tests skip without it).

``num_cpus=4`` (workers take none), no dashboard, a 100 MB object store, temporary files under
pytest's temporary directory, workers importing this checkout (PYTHONPATH), and
``RAY_AUTH_MODE=disabled`` (else this Ray writes ``~/.ray/auth_token``), on loopback only. The
W&B key the tests' servers accept is set in the job's environment, so worker actors find it as a
user's cluster would (secrets as environment variables on every worker).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Loopback only: without this Ray binds its head node (GCS, raylet, workers) to the machine's
# routable address. Read when Ray is imported, so set before that.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
NO_RAY = "Ray is not installed: pip install -e '.[test,ray]' to run tests/ray"
"""Each test module starts with ``pytest.importorskip("ray", reason=NO_RAY)`` (a skip raised here,
in a conftest, would stop pytest instead of skipping)."""

ROOT = Path(__file__).resolve().parents[2]
WANDB_KEY_ENV = "RUNFERRY_RAY_TEST_WANDB_KEY"
WANDB_KEY = "e" * 12 + "runferryraytests" + "0" * 12
WANDB_ENTITY = "scale"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ[WANDB_KEY_ENV] = WANDB_KEY
    temp = Path("/tmp") / f"rf-ray-{os.getpid()}"  # Ray's socket paths must stay short
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _temp_dir=str(temp),
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), WANDB_KEY_ENV: WANDB_KEY}},
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)  # Ray leaves its session files behind
