"""What the callbacks share: finding the model and tokenizer, the run directory, the strategy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from torch import nn

StrategyKind = Literal["replicated", "fsdp", "model_parallel", "deepspeed_zero3", "unknown"]


def get_model(pl_module: pl.LightningModule) -> nn.Module:
    """The LightningModule's transformers model, `.model` (unwrapped from torch.compile)."""
    model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"{type(pl_module).__name__} has no `.model` module (got {type(model).__name__}); "
            "the adaptlm callbacks need a LightningModule that exposes its transformers model as "
            "`self.model` (built in `configure_model`), like `CausalLMModule`"
        )
    return getattr(model, "_orig_mod", model)


def get_tokenizer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The module's `.tokenizer`, else the datamodule's; a clear error when neither has one."""
    tokenizer = getattr(pl_module, "tokenizer", None)
    if tokenizer is None:
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"neither {type(pl_module).__name__}.tokenizer nor the datamodule's `.tokenizer` "
            "is set; the adaptlm callbacks need the tokenizer to encode prompts and to save it "
            "with the model"
        )
    return tokenizer


def run_dir(trainer: pl.Trainer) -> Path:
    """The run's directory, the one that holds `checkpoints/` (a collective: call it on all ranks).

    Resolved like `ModelCheckpoint` does: `<save_dir>/<name>/<version>` of the first logger (the CSV
    logger's `log_dir`; for W&B `<save_dir>/<project>/<run id>`), else `default_root_dir`.
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        path = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    else:
        path = trainer.default_root_dir
    return Path(trainer.strategy.broadcast(path))


def strategy_kind(strategy: Any) -> StrategyKind:
    """How the strategy holds the weights: a full copy on every rank ("replicated") or sharded."""
    from lightning.pytorch.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
        SingleDeviceStrategy,
    )

    if isinstance(strategy, DeepSpeedStrategy):
        return "deepspeed_zero3" if strategy.zero_stage_3 else "replicated"
    if isinstance(strategy, FSDPStrategy):
        return "fsdp"
    if isinstance(strategy, ModelParallelStrategy):
        return "model_parallel"
    if isinstance(strategy, (DDPStrategy, SingleDeviceStrategy)):
        return "replicated"
    return "unknown"


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put `module` in eval mode and restore every submodule's own train/eval flag afterwards.

    Restoring per submodule (not `module.train()`) keeps deliberately frozen parts (a teacher) in
    eval mode.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
