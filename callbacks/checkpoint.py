"""Crash-safe checkpoints: written beside their target and renamed, and always one at the end of fit.

- `AtomicCheckpointIO` (a `TorchCheckpointIO`) writes `torch.save` into a temporary file beside the
  target, fsyncs it and `os.replace`s it onto the target (`common.atomic.atomic_file`): a crash or a
  full disk leaves the previous checkpoint byte-identical, and no full-size temp file in `$TMPDIR`
  (Lightning's default stages in `$TMPDIR` and moves without fsync: not atomic across filesystems).
- `StepCheckpoint` (a `ModelCheckpoint`) removes what killed writers left in its directory when fit
  starts, and saves the final step when training ends, also when `max_steps` is not a multiple of
  `every_n_train_steps`.

`python -m experiments` installs `AtomicCheckpointIO` when no checkpoint plugin is configured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.atomic import atomic_file, remove_orphans

log = logging.getLogger(__name__)


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes each checkpoint beside its target, fsyncs, and renames it.

    Remote paths (`s3://…`) keep Lightning's own upload.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write `checkpoint` to `path` atomically: the old file or the new one, never a partial one."""
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(str(path).removeprefix("file://"))
        with atomic_file(target) as tmp:
            torch.save(checkpoint, tmp)


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also saves the final step and tidies orphans of killed writers.

    Takes every `ModelCheckpoint` argument. At the start of fit, temporary files that a killed
    process left in `dirpath` are removed; when training ends, the final step is saved (a regular
    and, with `save_last`, the `last.ckpt` checkpoint) unless it was just saved.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve `dirpath` like `ModelCheckpoint`, then remove dead writers' temp files there."""
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and _is_local(self.dirpath):
            remove_orphans(self.dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the final step if the last periodic save was earlier."""
        if (
            not self._should_skip_saving_checkpoint(trainer)
            and self._last_global_step_saved != trainer.global_step
        ):
            candidates = self._monitor_candidates(trainer)
            if self.monitor is None or self.monitor in candidates:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)
