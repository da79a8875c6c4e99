"""Reading back what ``LocalDestination`` wrote (for ``verify``): the export is a local source,
and a destination run id is the run's directory relative to the export root."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.protocols import AdapterContext
from adapters.local._destination import LocalDestinationConfig
from adapters.local._remote import S3Access
from adapters.local._source import LocalSource, LocalSourceConfig
from core.model import RunRef


def readback(config: LocalDestinationConfig, context: AdapterContext) -> tuple[LocalSource, Callable[[str, RunRef], RunRef]]:
    def ref_for(dest_id: str, source_ref: RunRef) -> RunRef:
        return RunRef(id=source_ref.id, namespace=source_ref.namespace, extra=(("local_dir", dest_id),))

    access = {f.name: getattr(config, f.name) for f in dataclasses.fields(S3Access)}  # an s3:// export's store
    return LocalSource(LocalSourceConfig(path=config.path, **access), context), ref_for
