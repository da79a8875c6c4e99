"""Reading back what ``WandbDestination`` wrote (for ``verify``): the destination server is a W&B
source, and a destination run id is ``entity/project/run``."""

from __future__ import annotations

from collections.abc import Callable

from core.protocols import AdapterContext
from core.model import Namespace, RunRef

from ._config import WandbDestinationConfig
from ._source import WandbSource
from ._source_config import WandbSourceConfig


def readback(config: WandbDestinationConfig, context: AdapterContext) -> tuple[WandbSource, Callable[[str, RunRef], RunRef]]:
    def ref_for(dest_id: str, source_ref: RunRef) -> RunRef:
        entity, project, run = dest_id.split("/", 2)
        return RunRef(id=dest_id, namespace=Namespace(entity, project), name=source_ref.name, extra=(("run_id", run),))

    # namespaces only bound what the source resolves when it opens: the destination entity
    namespaces = [f"{config.entity or '*'}/*"]
    reader = WandbSource(WandbSourceConfig(base_url=config.base_url, api_key_env=config.api_key_env,
                                           namespaces=namespaces), context)
    return reader, ref_for
