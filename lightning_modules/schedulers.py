"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from 0, then cosine decay to `min_lr_ratio` × the base learning rate.

    Args:
        optimizer: The optimizer whose learning rates are scheduled.
        warmup_steps: Optimizer steps of linear warm-up (0 disables it).
        total_steps: Total optimizer steps of the run. `None` means "take `trainer.max_steps`":
            `CausalLMModule` fills it in before the first step (the CLI links it from
            `trainer.max_steps`).
        min_lr_ratio: Final learning rate as a fraction of the base learning rate.
        constant: Keep the learning rate constant after warm-up instead of decaying (for recipes
            that use no scheduler, e.g. DiSC).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        constant: bool = False,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        self.constant = constant
        super().__init__(optimizer, self.lr_factor)

    def lr_factor(self, step: int) -> float:
        """The multiplier of the base learning rate after `step` optimizer steps."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.constant or step == self.warmup_steps:
            return 1.0  # the decay starts at 1 whatever the total, so construction needs no total
        if self.total_steps is None or self.total_steps <= 0:
            raise ValueError(
                "WarmupCosineLR needs total_steps: set trainer.max_steps (or "
                "lr_scheduler.init_args.total_steps), or use constant=True"
            )
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
