"""``S3Store``: the operation mixins put together behind one class.

Each operation family lives in its own module (``_listing``, ``_upload``, ``_download``,
``_copy``) on the shared request core (``_requests``); this class only joins them.
"""

from __future__ import annotations

from adapters.s3._config import S3Config
from adapters.s3._copy import Copies
from adapters.s3._download import Downloads


class S3Store(Copies, Downloads):
    """Streams objects in and out of one S3-compatible endpoint (see the ``adapters.s3`` docstring)."""

    Config = S3Config
