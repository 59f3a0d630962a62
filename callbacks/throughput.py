"""Training throughput: tokens/s and samples/s over all ranks, and model FLOPs utilization."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from callbacks._common import get_model
from common.errors import ConfigError

log = logging.getLogger(__name__)

_now = time.perf_counter

# Dense (no sparsity) peak FLOP/s of one GPU from NVIDIA's data sheets, by matmul precision.
# Matched against `torch.cuda.get_device_name()` in order: first match wins.
PEAK_FLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("h200", "nvl"), {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    (("h200",), {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (("h100", "nvl"), {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    (("h100", "pcie"), {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    (("h100",), {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (("a100",), {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
]


def peak_flops_for(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a known GPU (A100, H100, H200) at a Lightning precision, else None."""
    name = device_name.lower()
    if "16" in precision:
        column = "bf16"
    elif "32" in precision:
        column = "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    else:
        return None
    for keys, table in PEAK_FLOPS:
        if all(key in name for key in keys):
            return table[column]
    return None


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in matrix multiplies.

    All of them but an untied input embedding table: a lookup costs no FLOPs, while a table tied to
    the LM head is a matmul and counts once.
    """
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embedding, nn.Embedding):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied = head is not None and getattr(head, "weight", None) is embedding.weight
        if not tied:
            total -= embedding.num_embeddings * embedding.embedding_dim
    return total


def training_flops_per_token(n_params: int, n_layers: int, hidden_size: int, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward): `6·N + 12·layers·hidden·seq_len`.

    `6·N` covers the weight matmuls, the second term attention scores and values (PaLM, app. B).
    """
    return 6.0 * n_params + 12.0 * n_layers * hidden_size * seq_len


def count_batch(batch: Any) -> tuple[int, int, int]:
    """`(tokens, samples, width)` of a batch: non-padding tokens from `attention_mask` when present,
    else every position of `input_ids`."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError(
            "ThroughputCallback expects batches as dicts with 'input_ids' (and optionally "
            f"'attention_mask'), got {type(batch).__name__}"
        )
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    tokens = int(mask.sum().item()) if mask is not None else input_ids.numel()
    return tokens, input_ids.shape[0], input_ids.shape[-1]


class ThroughputCallback(Callback):
    """Tokens/s, samples/s, time per optimizer step and, when the peak FLOP/s is known, MFU.

    Measured with `time.perf_counter` over windows of whole optimizer steps (data loading included),
    after `warmup_steps` steps that are left out; counts are summed over all ranks. Logged every
    `log_every_n_steps` steps as `throughput/tokens_per_sec`, `throughput/samples_per_sec`,
    `throughput/tokens_per_sec_per_device`, `throughput/step_time` and `throughput/mfu`. Tokens are
    the non-padding tokens (`attention_mask`). MFU = achieved model FLOP/s per device / peak FLOP/s,
    with training FLOPs per token `6·N + 12·layers·hidden·seq_len` (N: parameters in matmuls,
    seq_len: the batch's padded width); without `peak_flops` it is reported on CUDA devices of a
    known kind only (A100, H100, H200; dense bf16/tf32/fp32 peaks by the trainer's precision), never
    on CPU.

    Args:
        log_every_n_steps: log every this many optimizer steps.
        warmup_steps: optimizer steps at the start of training left out of the measurement
            (compilation, allocator and cache warm-up).
        peak_flops: peak FLOP/s of one device, for MFU; None looks it up for known GPUs.
    """

    def __init__(
        self, log_every_n_steps: int = 10, warmup_steps: int = 2, peak_flops: float | None = None
    ) -> None:
        super().__init__()
        if log_every_n_steps < 1:
            raise ConfigError(
                "ThroughputCallback.log_every_n_steps",
                f"must be at least 1, got {log_every_n_steps}",
            )
        if warmup_steps < 0:
            raise ConfigError(
                "ThroughputCallback.warmup_steps", f"must be at least 0, got {warmup_steps}"
            )
        if peak_flops is not None and peak_flops <= 0:
            raise ConfigError(
                "ThroughputCallback.peak_flops", f"must be positive, got {peak_flops}"
            )
        self.log_every_n_steps = log_every_n_steps
        self.warmup_steps = warmup_steps
        self.peak_flops = peak_flops
        self.last_metrics: dict[str, float] = {}
        self.last_window: dict[str, float] = {}
        self._peak: float | None = None
        self._shape: tuple[int, int, int] | None = None  # (matmul params, layers, hidden)
        self._open_at = 0
        self._last_step = 0
        self._reset_window(None)

    def _reset_window(self, start: float | None, step: int = 0) -> None:
        self._window_start = start
        self._window_step = step
        self._tokens = 0
        self._samples = 0
        self._flops = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count the model's parameters and look up the device's peak FLOP/s once."""
        model = get_model(pl_module)
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", None)
        hidden = getattr(config, "hidden_size", None)
        if layers is None or hidden is None:
            log.info(
                "model config has no num_hidden_layers/hidden_size: MFU counts only 6·N per token"
            )
        self._shape = (matmul_parameters(model), layers or 0, hidden or 0)
        self._peak = self.peak_flops
        if self._peak is None and pl_module.device.type == "cuda":
            name = torch.cuda.get_device_name(pl_module.device)
            self._peak = peak_flops_for(name, str(trainer.precision))
            if self._peak is None:
                log.info(
                    "no peak FLOP/s known for %r at precision %s: MFU not reported",
                    name,
                    trainer.precision,
                )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._open_at = trainer.global_step + self.warmup_steps
        self._last_step = trainer.global_step
        self._reset_window(None)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # `global_step` only changes at optimizer-step boundaries: a window holds whole steps.
        if self._window_start is None and trainer.global_step >= self._open_at:
            self._sync(pl_module)
            self._reset_window(_now(), trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._window_start is not None:
            tokens, samples, width = count_batch(batch)
            self._tokens += tokens
            self._samples += samples
            if self._shape is not None:
                self._flops += tokens * training_flops_per_token(*self._shape, seq_len=width)
        stepped = trainer.global_step != self._last_step
        self._last_step = trainer.global_step
        if (
            stepped
            and self._window_start is not None
            and trainer.global_step > self._window_step
            and trainer.global_step % self.log_every_n_steps == 0
        ):
            self._close_window(trainer, pl_module)

    def _close_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        end = _now()
        assert self._window_start is not None
        elapsed = end - self._window_start
        steps = trainer.global_step - self._window_step
        local = torch.tensor(
            [self._tokens, self._samples, self._flops], dtype=torch.float64, device=pl_module.device
        )
        tokens, samples, flops = (
            trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        ).tolist()
        world = trainer.world_size
        metrics = {
            "throughput/tokens_per_sec": tokens / elapsed,
            "throughput/samples_per_sec": samples / elapsed,
            "throughput/tokens_per_sec_per_device": tokens / elapsed / world,
            "throughput/step_time": elapsed / steps,
        }
        if self._peak is not None:
            metrics["throughput/mfu"] = flops / elapsed / world / self._peak
        self.last_metrics = metrics
        self.last_window = {
            "tokens": tokens,
            "samples": samples,
            "flops": flops,
            "elapsed": elapsed,
            "steps": steps,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._reset_window(end, trainer.global_step)

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        """Wait for queued GPU work so the clock measures it, not just its launch."""
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
