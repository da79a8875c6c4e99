"""Local export directories: ``LocalDestination`` writes one, ``LocalSource`` reads it back.

The layout is documented in ``adapters.local._layout``; the format round-trips exactly
(local -> local keeps every field, point and byte).
"""

from adapters.local._destination import LocalDestination as LocalDestination
from adapters.local._destination import LocalDestinationConfig as LocalDestinationConfig
from adapters.local._destination import LocalRunWriter as LocalRunWriter
from adapters.local._source import LocalSource as LocalSource
from adapters.local._source import LocalSourceConfig as LocalSourceConfig

__all__ = ["LocalDestination", "LocalDestinationConfig", "LocalRunWriter", "LocalSource", "LocalSourceConfig"]
