"""The ``adapters.s3`` facade: every public name is exported, and each one resolves."""

from __future__ import annotations

import adapters.s3

# The names importers use (adapters/mlflow, bench, tests); the package split must keep them.
USED = {"MAX_PARTS", "MIB", "MIN_PART", "S3Config", "S3Store", "S3Url", "copy_between",
        "multipart_etag", "plan_part_size", "plan_ranges"}


def test_all_names_resolve_and_cover_what_importers_use() -> None:
    public = {name for name in vars(adapters.s3) if not name.startswith("_")} - {"annotations"}
    assert set(adapters.s3.__all__) == public
    assert USED <= public
    for name in adapters.s3.__all__:
        assert getattr(adapters.s3, name) is not None
