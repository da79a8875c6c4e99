"""The deterministic data the SDK write script logs and the tests expect back.

Why: the writer runs in a subprocess (possibly under the wandb 0.27.0 venv), so both sides
import this module (it needs only the standard library) instead of sharing objects.
"""

from __future__ import annotations

import hashlib
import math
import random

HISTORY_RUN = "hist01"
FAILED_RUN = "failed01"
RESUMED_RUN = "resumed01"
GRID_RUNS = [f"grid{i:02d}" for i in range(6)]
GRID_LR = [0.1, 0.03, 0.3, 0.01, 0.2, 0.05]
STEPS = 1500  # more than one scan_history page (1000)
SPECIAL = {10: math.nan, 11: math.inf, 12: -math.inf}
BIG_FILE_BYTES = 12 * 1024 * 1024 + 123

HISTORY_CONFIG = {"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam", "beta": 0.9}}
HISTORY_TAGS = ["base", "hist"]
HISTORY_NOTES = "notes of hist"
HISTORY_SUMMARY_EXTRA = {"best_acc": 0.99, "label": "text"}
SAVED_FILE = ("extra.txt", b"saved run file\nline 2\n")


def history_row(step: int) -> dict:
    row = {"loss": 1.0 / (step + 1), "acc": step / STEPS}
    if step in SPECIAL:
        row["weird"] = SPECIAL[step]
    if step % 100 == 0:
        row["val"] = step * 0.5
    return row


def grid_acc(index: int) -> float:
    return round(0.5 + 0.07 * ((index * 5) % 6), 4)


def grid_tags(index: int) -> list[str]:
    return ["even" if index % 2 == 0 else "odd", "grid"]


def artifact_files() -> dict[str, bytes]:
    rng = random.Random(1234)
    return {
        "a.txt": b"hello artifact\n",
        "sub/b.json": b'{"k": [1, 2, 3]}',
        "c.csv": b"x,y\n1,2\n3,4\n",
        "big.bin": rng.randbytes(BIG_FILE_BYTES),
    }


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
