"""`TRAITModule`: TRAIT's two-stage continual pre-training (arXiv 2406.16694).

TRAIT's objective is next-token CE; what it changes is the data and its order. Stage 1 trains on
the original in-domain documents plus the documents selected from a general corpus
(`datamodules.selection`), with general replay; stage 2 on the task-oriented synthetic passages
(`datamodules.synthesis`), optionally with some stage-1 data. The stages are the data module's
`stages` (`PretrainingDataModule`: one ratio per train source and stage, the switch at a
configured optimizer step, exact on resume); this module makes the switch behave like the start of
a new run, as chaining two runs would:

- `schedule: per_stage` restarts the learning-rate schedule (warm-up and decay) at every stage,
  each stage scheduled over its own steps; `whole_run` keeps one schedule over all steps.
- `reset_optimizer` clears the optimizer's state (Adam moments, step counts) at every stage start.

Both are *assumptions* (the paper trains the stages one after the other and publishes neither); the
defaults make one staged run the same recipe as two chained runs. The two-run form is also
supported: train stage 1, export, and start stage 2 from the export (`experiments.trait_table`).
A single-stage ablation is one stage over all sources (or no `stages`).

Logs `train/stage` (the stage's index) and `train/ce/<source>`, each train source's share of the
step's loss (they sum to `train/loss`), from the rows' `source_index`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from common import ConfigError
from lightning_modules.base import KEY, CausalLMModule

log = logging.getLogger(__name__)

StageSchedule = Literal["per_stage", "whole_run"]


class StagedLR(LambdaLR):
    """One learning-rate schedule per stage: stage k's factor at step s is its own schedule's
    factor at `s - start_k`.

    Args:
        optimizer: The optimizer.
        stage_factors: Per stage, one `step -> factor` per parameter group (a `LambdaLR`'s
            `lr_lambdas`, built for that stage's length).
        starts: The first step of every stage (ascending, starting at 0).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        stage_factors: list[list[Callable[[int], float]]],
        starts: list[int],
    ) -> None:
        if not starts or starts[0] != 0 or sorted(starts) != starts:
            raise ValueError(f"stage starts must ascend from 0, got {starts}")
        self.starts = list(starts)
        self.stage_factors = stage_factors

        def factor(group: int) -> Callable[[int], float]:
            def at(step: int) -> float:
                stage = max(i for i, start in enumerate(self.starts) if start <= step)
                return self.stage_factors[stage][group](step - self.starts[stage])

            return at

        super().__init__(optimizer, [factor(g) for g in range(len(optimizer.param_groups))])

    _REBUILT = ("optimizer", "lr_lambdas", "stage_factors")

    def state_dict(self) -> dict[str, Any]:
        """The step counter and learning rates; the factors are rebuilt from the config (a
        checkpoint holds no function, nor the stage schedulers' optimizer)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._REBUILT}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter and learning rates."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in self._REBUILT})


class TRAITModule(CausalLMModule):
    """Staged continual pre-training with CE: TRAIT's stage 1 (in-domain + selected + replay) and
    stage 2 (synthetic passages), switched at the data module's configured step.

    Args:
        schedule: `per_stage` restarts the learning-rate schedule at each stage start, each stage
            scheduled over its own steps (*assumption*: like two chained runs); `whole_run` keeps
            one schedule over the run. Needs a `LambdaLR` schedule (e.g. `WarmupCosineLR`).
        reset_optimizer: Clear the optimizer state at every stage start (*assumption*: like two
            chained runs, each with a fresh optimizer).
        **kwargs: The `CausalLMModule` arguments (model source, dtype, lora, loss, optimizer,
            lr_scheduler, ...).
    """

    def __init__(
        self,
        schedule: StageSchedule = "per_stage",
        reset_optimizer: bool = True,
        **kwargs: Any,
    ) -> None:
        if schedule not in ("per_stage", "whole_run"):
            raise ConfigError(
                f"{KEY}.schedule", f"must be 'per_stage' or 'whole_run', got {schedule!r}"
            )
        super().__init__(**kwargs)
        self.save_hyperparameters("schedule", "reset_optimizer")
        self.schedule = schedule
        self.reset_optimizer = bool(reset_optimizer)
        self.stage_starts: list[tuple[str, int]] = [("", 0)]
        self.source_names: list[str] | None = None
        self._reset_at: int | None = None

    def on_fit_start(self) -> None:
        """Read the stage starts and source names from the data module (one stage without one)."""
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        starts = getattr(datamodule, "train_stage_starts", None)
        self.stage_starts = starts() if callable(starts) else [("", 0)]
        self.source_names = getattr(datamodule, "train_source_names", None)
        if len(self.stage_starts) > 1 and self.trainer.is_global_zero:
            plan = ", ".join(
                f"{name or i} from step {start}"
                for i, (name, start) in enumerate(self.stage_starts)
            )
            log.info(
                "TRAIT stages: %s (of %s steps); schedule %s, optimizer reset %s",
                plan,
                self._total_steps(),
                self.schedule,
                self.reset_optimizer,
            )

    def stage_at(self, step: int) -> int:
        """Index of the stage that optimizer step `step` belongs to."""
        return max(i for i, (_, start) in enumerate(self.stage_starts) if start <= step)

    # ------------------------------------------------------------------ the loss

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """CE sums `{"loss", "ce/<source>"}`: the objective and each train source's part."""
        if "source_index" not in batch or not self.source_names or self.loss_spec.kl_weight:
            return self.student_loss(batch)
        losses = self.student_loss(batch, per_row=True)
        row_ce = losses.pop("row_ce").detach()
        losses.pop("teacher_row_ce", None)
        index = batch["source_index"].to(row_ce.device).long()
        parts = torch.zeros(len(self.source_names), dtype=row_ce.dtype, device=row_ce.device)
        parts.index_add_(0, index, row_ce)
        for i, name in enumerate(self.source_names):
            losses[f"ce/{name}"] = parts[i]
        return losses

    # ------------------------------------------------------------------ the stage switch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """At the first micro-batch of a stage's first step, clear the optimizer state."""
        step = self.trainer.global_step
        if (
            self.reset_optimizer
            and step != self._reset_at
            and step > 0
            and any(start == step for _, start in self.stage_starts[1:])
            and batch_idx % self.trainer.accumulate_grad_batches == 0
        ):
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()
            self._reset_at = step

    def _log_step_losses(self) -> None:
        """The base's step losses, and the stage of the step."""
        super()._log_step_losses()
        stage = float(self.stage_at(self.trainer.global_step))
        self.log("train/stage", stage, on_step=True, rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """The base optimizer and schedule; `per_stage` rebuilds the schedule for every stage."""
        config = super().configure_optimizers()
        starts = self._configured_starts()
        if self.schedule == "whole_run" or len(starts) < 2:
            return config
        optimizer = config["optimizer"]
        total = self._total_steps()
        if total is not None and total <= starts[-1]:
            reached = [start for start in starts if start < total]
            log.warning(
                "trainer.max_steps is %d: the run ends before stage %d starts (step %d); the "
                "schedule covers the %d stage(s) it reaches",
                total,
                len(reached),
                starts[len(reached)],
                len(reached),
            )
            starts = reached
            if len(starts) < 2:
                return config
        ends: list[int | None] = [*starts[1:], total]
        stage_factors = []
        for start, end in zip(starts, ends):
            steps = None if end is None else end - start
            stage_factors.append(list(self._stage_scheduler(optimizer, steps).lr_lambdas))
        staged = StagedLR(optimizer, stage_factors, starts)
        config["lr_scheduler"]["scheduler"] = staged
        return config

    def _stage_scheduler(self, optimizer: torch.optim.Optimizer, steps: int | None) -> LambdaLR:
        """The configured schedule for a stage of `steps` optimizer steps (None: unknown, the
        last stage of a run without `max_steps`)."""
        from lightning_modules.schedulers import WarmupCosineLR

        if self.lr_scheduler_factory is None:
            return WarmupCosineLR(optimizer, total_steps=steps)
        scheduler = self.lr_scheduler_factory(optimizer)
        if not isinstance(scheduler, LambdaLR):
            raise ConfigError(
                f"{KEY}.schedule",
                f"per_stage needs a LambdaLR schedule (e.g. WarmupCosineLR), got "
                f"{type(scheduler).__name__}; use schedule: whole_run",
            )
        if hasattr(scheduler, "total_steps"):
            scheduler.total_steps = steps
        return scheduler

    def _configured_starts(self) -> list[int]:
        """The stage starts (configure_optimizers runs before on_fit_start's hooks see them)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        starts = getattr(datamodule, "train_stage_starts", None)
        if callable(starts):
            self.stage_starts = starts()
        return [start for _, start in self.stage_starts]


__all__ = ["StagedLR", "TRAITModule"]
