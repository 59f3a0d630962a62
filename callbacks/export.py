"""Export the trained model and tokenizer with `save_pretrained`, atomically."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from callbacks._common import get_model, get_tokenizer, run_dir, strategy_kind
from common.atomic import atomic_directory
from common.errors import ConfigError

log = logging.getLogger(__name__)


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def export_pretrained(
    model: nn.Module,
    tokenizer: Any,
    dirpath: str | Path,
    *,
    merge_lora: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save `model` and `tokenizer` with `save_pretrained` into `dirpath` atomically; return it.

    A peft model is merged into a copy of its base weights (`merge_lora=True`: loadable by
    `AutoModelForCausalLM.from_pretrained`) or saved as an adapter (`merge_lora=False`: load it with
    peft). `state_dict` (a full state dict gathered from a sharded model) replaces the model's own
    tensors.
    """
    dirpath = Path(dirpath)
    with atomic_directory(dirpath) as tmp, _no_hub_progress_bars():
        if _is_peft(model):
            if state_dict is not None:
                raise ValueError(
                    "exporting a peft model from a gathered state dict is not supported"
                )
            to_save = copy.deepcopy(model).merge_and_unload() if merge_lora else model
            to_save.save_pretrained(tmp)
        else:
            kwargs = {"state_dict": state_dict} if state_dict is not None else {}
            model.save_pretrained(tmp, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _apply_default_modes(tmp)
    return dirpath


@contextmanager
def _no_hub_progress_bars() -> Iterator[None]:
    """Hide transformers' one-line "Writing model shards" bar; the export is logged instead."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_default_modes(root: Path) -> None:
    """Give every file and directory under `root` the modes a plain `open`/`mkdir` would.

    Some writers (transformers' weight shards) stage through `tempfile`, whose files are 0600;
    an export is meant to be read by others (0644 under the usual umask of 022).
    """
    mask = _umask()
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _submodule_prefix(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise ValueError("the model is not a submodule of the LightningModule")


class ExportCallback(Callback):
    """Save the final model and tokenizer with `save_pretrained` when training ends.

    The export loads with plain `transformers.AutoModelForCausalLM.from_pretrained(dirpath)` and
    `AutoTokenizer.from_pretrained(dirpath)`. It is written into a temp directory beside `dirpath`
    and renamed into place, so a crash never leaves a partial export and an older export is replaced
    only by a complete one. Only global rank 0 writes. Under FSDP (`FSDPStrategy`,
    `ModelParallelStrategy`) the full state dict is gathered from all ranks first; DeepSpeed ZeRO-3
    is not supported. Runs in `on_train_end`, so an interrupted fit exports nothing.

    Args:
        dirpath: where to save the final model; None uses `<run dir>/export`, beside the run's
            `checkpoints/` (the CSV logger's `log_dir`).
        merge_lora: for a LoRA (peft) model, merge the adapters into a copy of the base weights and
            save a plain model; False saves only the adapter (load it with peft).
        export_best: also export whenever the checkpoint callback saves a new best model.
        best_dirpath: where to save the best model; None uses `<run dir>/export_best`.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        merge_lora: bool = True,
        export_best: bool = False,
        best_dirpath: str | None = None,
    ) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.merge_lora = merge_lora
        self.export_best = export_best
        self.best_dirpath = best_dirpath
        self.export_dir: Path | None = None
        self.best_export_dir: Path | None = None
        self._best_exported: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the export paths (a collective) and reject unsupported strategies early."""
        if stage != "fit":
            return
        kind = strategy_kind(trainer.strategy)
        if kind in ("deepspeed_zero3", "unknown"):
            raise ConfigError(
                "trainer.strategy",
                "ExportCallback cannot gather a full state dict under "
                f"{type(trainer.strategy).__name__}; use a single device, DDP, DeepSpeed ZeRO-1/2, "
                "FSDP or ModelParallelStrategy",
            )
        root = run_dir(trainer)
        self.export_dir = Path(self.dirpath) if self.dirpath else root / "export"
        self.best_export_dir = (
            Path(self.best_dirpath) if self.best_dirpath else root / "export_best"
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail now, not after training, if there is no model or tokenizer to export."""
        model = get_model(pl_module)
        get_tokenizer(trainer, pl_module)
        if _is_peft(model) and strategy_kind(trainer.strategy) in ("fsdp", "model_parallel"):
            raise ConfigError(
                "trainer.strategy", "ExportCallback cannot export a sharded LoRA model; use DDP"
            )

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dirpath: Path) -> None:
        """Export to `dirpath`. Every rank must call it (gathering shards is a collective)."""
        model = get_model(pl_module)
        tokenizer = get_tokenizer(trainer, pl_module)
        state_dict = None
        if strategy_kind(trainer.strategy) in ("fsdp", "model_parallel"):
            state_dict = self._gather_full_state_dict(trainer, pl_module, model)
        if trainer.is_global_zero:
            export_pretrained(
                model, tokenizer, dirpath, merge_lora=self.merge_lora, state_dict=state_dict
            )
            log.info("exported model and tokenizer to %s", dirpath)
        trainer.strategy.barrier("ExportCallback.export")

    @staticmethod
    def _gather_full_state_dict(
        trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module
    ) -> dict[str, torch.Tensor]:
        """The model's full (unsharded) state dict on rank 0, on the CPU; empty on other ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        wrapped = trainer.strategy.model
        full = get_model_state_dict(
            wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        prefix = _submodule_prefix(pl_module, model)
        return {key[len(prefix) :]: value for key, value in full.items() if key.startswith(prefix)}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Export the final model.

        In `on_train_end`, not `on_fit_end`: Lightning moves the model to the CPU before the latter.
        """
        assert self.export_dir is not None
        self.export(trainer, pl_module, self.export_dir)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """With `export_best`, export when the checkpoint being saved is a new best one."""
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not self.export_best or not best or best == self._best_exported:
            return
        assert self.best_export_dir is not None
        self.export(trainer, pl_module, self.best_export_dir)
        self._best_exported = best
