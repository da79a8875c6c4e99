"""W&B destination: MLflow (or any source) -> W&B runs, history, files and artifacts.

Public names: ``WandbDestination`` (the adapter, ``type = "wandb"``) and its ``Config``.

What goes where (see ``_mapping.py`` and ``_lines.py`` for the exact rules):

- run: ``UpsertBucket`` with a deterministic id (source id, or a hash of source URI + id), display
  name, config in ``{"key": {"value": v}}`` form (+ ``source_tags``, ``runferry_source``,
  ``_wandb.start_time``), tags within 64 characters, notes, group, job type, commit, host,
  program;
- history: ``wandb-history.jsonl`` lines through file_stream at explicit offsets, one line per
  step (``_step``, original ``_timestamp``, ``_runtime``), NaN/Infinity kept; several values of
  one key at one step become extra lines with the same ``_step`` (counted: ``collision``);
- summary + exit state in the last file_stream request (finished 0, failed 1, killed 255 +
  state "killed", running left running);
- files: run files via ``CreateRunFiles`` + PUT + ``MarkRunFilesUploaded``; artifacts with the
  full protocol (``_artifacts.py``), members staged on local disk until committed.
"""

from ._config import WandbDestinationConfig
from ._destination import WandbDestination

WandbDestination.Config = WandbDestinationConfig

__all__ = ["WandbDestination", "WandbDestinationConfig"]
