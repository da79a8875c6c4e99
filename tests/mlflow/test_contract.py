"""The shared adapter contract, run against the real servers.

What MLflow cannot hold exactly is normalised on both sides before comparing, and is documented
in the adapter: non-numeric points (``value_json``) are skipped, timestamps are whole
milliseconds, the SQL store keeps +-inf as +-max float (and SQLite -0.0 as 0.0), and history comes back keys sorted and,
within a key, in the server's (timestamp, step, value) order. Files are checked by the adapter's
own tests (artifact members land under ``<artifact name>/``, so contract file keys differ).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from adapters.mlflow import MlflowDestination, MlflowSource
from core.model import HISTORY_SCHEMA, RunRecord, RunRef
from tests.adapters.contract import (
    DestinationCase,
    DestinationContract,
    SourceCase,
    SourceContract,
    all_refs,
)
from tests.mlflow.helpers import context, dest_config, source_config
from tests.mlflow.seed import Seeded
from tests.servers.mlflow_server import MlflowServer

MAX = np.finfo(np.float64).max


def as_mlflow_keeps_it(table: pa.Table) -> pa.Table:
    table = table.filter(pc.is_valid(table.column("value")))
    values = np.clip(table.column("value").to_numpy(zero_copy_only=False), -MAX, MAX) + 0.0  # -0.0 -> 0.0
    millis = np.round(table.column("timestamp").to_numpy() * 1000.0)
    order = np.lexsort((values.view(np.int64), table.column("step").to_numpy(), millis,
                        np.array(table.column("key").to_pylist(), dtype=object)))
    return pa.table(
        {
            "key": pa.array(np.array(table.column("key").to_pylist(), dtype=object)[order], pa.string()),
            "step": pa.array(table.column("step").to_numpy()[order], pa.int64()),
            "timestamp": pa.array(millis[order] / 1000.0, pa.float64()),
            "value": pa.array(values[order], pa.float64()),
            "value_json": pa.nulls(len(order), pa.string()),
        },
        schema=HISTORY_SCHEMA,
    )


class TestMlflowSourceContract(SourceContract):
    @pytest.fixture
    async def source_case(self, source_server: MlflowServer, seeded: Seeded) -> AsyncIterator[SourceCase]:
        cfg = source_config(source_server.url, experiments=[seeded.edge_name])
        async with MlflowSource(cfg, context(500)) as source:
            yield SourceCase(source=source, max_runs=3)


class TestMlflowDestinationContract(DestinationContract):
    @pytest.fixture
    async def destination_case(self, dest_server: MlflowServer) -> AsyncIterator[DestinationCase]:
        experiment = f"contract-{uuid.uuid4().hex[:8]}-{{experiment}}"
        dest = MlflowDestination(dest_config(dest_server.url, experiment=experiment), context(70))

        @contextlib.asynccontextmanager
        async def open_reader() -> AsyncIterator[MlflowSource]:
            prefix = experiment.split("{")[0]
            async with MlflowSource(source_config(dest_server.url, experiments=[f"{prefix}*"]), context(70)) as reader:
                yield reader

        async def find_run(reader: MlflowSource, written: RunRecord, dest_id: str) -> RunRef:
            matches = [ref for ref in await all_refs(reader) if ref.id == dest_id]
            assert len(matches) == 1
            record = await reader.get_run(matches[0])
            assert record.tags["runferry.source_run_id"] == f"{written.ref.namespace}/{written.ref.id}"
            return matches[0]

        async with dest:
            yield DestinationCase(
                destination=dest,
                open_reader=open_reader,
                find_run=find_run,
                normalise_history=as_mlflow_keeps_it,
                exact_record=False,
                check_files=False,
            )
