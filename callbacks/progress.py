"""A progress bar counted in optimizer steps, for step-budgeted runs (`trainer.max_steps`).

Lightning's bar counts batches per epoch and reads `Epoch 42/-2` when a run is bounded by
`max_steps` instead of epochs; this one reads `step 120/200` for the whole run.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """One training bar over the whole run: `global_step / max_steps` (epochs when `max_steps` is unset).

    Args:
        refresh_rate: update the bar every this many optimizer steps.
        process_position: the bar's line, for several bars in one terminal.
        leave: keep finished validation bars on screen.
    """

    def _by_steps(self, trainer: pl.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def init_train_tqdm(self) -> Any:
        """The training bar: `step n/max_steps` from its first line (a resumed run starts at n)."""
        if not self._by_steps(self.trainer):
            return super().init_train_tqdm()
        return Tqdm(
            desc="step",
            total=self.trainer.max_steps,
            initial=self.trainer.global_step,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Keep one bar across epochs when counting steps."""
        if not self._by_steps(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Advance to `global_step`, with the logged metrics as the postfix."""
        if not self._by_steps(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and step != bar.n and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()
