"""``python -m engine export`` with a W&B source: the runs table equals W&B's documented
"export runs to CSV" recipe (``run.summary._json_dict``, ``run.config`` without ``_`` keys,
``run.name``) flattened with ``pandas.json_normalize``, for every run, read through the official
SDK on the same server; and the full histories are in the export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.wandb_source.conftest import ENTITY, KEY_ENV

REPO = Path(__file__).resolve().parents[2]
NAMESPACES = [f"{ENTITY}/alpha", f"{ENTITY}/beta"]


def _same(cell: object, want: object) -> bool:
    if isinstance(want, list):
        return isinstance(cell, str) and json.loads(cell) == want
    if isinstance(want, float) and math.isnan(want):
        return isinstance(cell, float) and math.isnan(cell)
    if want is None:
        return cell is None or (isinstance(cell, float) and math.isnan(cell))
    return cell == want


@pytest.fixture(scope="module")
def exported(sdk_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-export")
    config = root / "export.toml"
    config.write_text(
        f'[source]\ntype = "wandb"\nbase_url = "{sdk_dataset.base_url}"\napi_key_env = "{KEY_ENV}"\n'
        f"namespaces = {json.dumps(NAMESPACES)}\n"
        f'[destination]\ntype = "local"\npath = "{root / "unused"}"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), **{KEY_ENV: sdk_dataset.api_key})
    done = subprocess.run([sys.executable, "-m", "engine", "export", str(config), "--to", str(root / "out"),
                           "--log-format", "plain"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out"


def test_runs_table_follows_the_documented_recipe(exported, public_api):
    table = pd.read_parquet(exported / "runs.parquet")
    csv = pd.read_csv(exported / "runs.csv")
    assert len(csv) == len(table)
    checked = 0
    for path in NAMESPACES:
        for run in public_api.runs(path):
            doc = {"summary": run.summary._json_dict, "name": run.name, "id": run.id,
                   "config": {k: v for k, v in run.config.items() if not k.startswith("_")}}
            want = pd.json_normalize([doc]).iloc[0]  # this run's own columns only
            [row] = table[(table["id"] == want["id"]) & (table["project"] == path.split("/")[1])].to_dict("records")
            assert row["name"] == want["name"]
            for column, value in want.items():
                if column.startswith(("config.", "summary.")):
                    assert column in row, (want["id"], column)
                    assert _same(row[column], value), (want["id"], column, row[column], value)
                    checked += 1
    assert checked > 50


def test_histories_are_in_the_export(exported, public_api):
    files = [p for p in exported.rglob("*.parquet") if p.name != "runs.parquet"]
    assert files, "no history parquet written"
    rows = sum(len(pd.read_parquet(p)) for p in files)
    expected = 0
    for path in NAMESPACES:
        for run in public_api.runs(path):
            for row in run.scan_history():
                expected += sum(1 for k in row if k not in ("_step", "_timestamp", "_runtime"))
            expected += sum(1 for line in run.history(stream="system", samples=1_000_000, pandas=False)
                            for k in line if k.startswith("system."))
    assert rows == expected
