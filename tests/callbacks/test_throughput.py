"""ThroughputCallback: token counting, windows after warm-up, accumulation, FLOPs and MFU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import Logger

import callbacks.throughput as throughput
from callbacks import ThroughputCallback
from callbacks.throughput import (
    count_batch,
    matmul_parameters,
    peak_flops_for,
    training_flops_per_token,
)
from common.errors import ConfigError
from tests.callbacks.conftest import cpu_trainer, pad_batch, tiny_llama


class RecordingLogger(Logger):
    """Keeps every `log_metrics` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def ragged_batches(n: int) -> list[dict[str, torch.Tensor]]:
    """Batch `i` holds 2 rows of lengths `3 + i` and `5 + 2i` (right-padded to the longer)."""
    return [pad_batch([[5] * (3 + i), [6] * (5 + 2 * i)], pad_id=1) for i in range(n)]


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """`perf_counter` advancing by exactly 1 s per reading, so rates are exact."""
    readings: list[float] = []

    def now() -> float:
        readings.append(float(len(readings)))
        return readings[-1]

    monkeypatch.setattr(throughput, "_now", now)
    return readings


def test_count_batch_uses_attention_mask_else_numel() -> None:
    batch = pad_batch([[5, 5, 5], [6] * 7], pad_id=1)
    assert count_batch(batch) == (10, 2, 7)
    assert count_batch({"input_ids": batch["input_ids"]}) == (14, 2, 7)
    with pytest.raises(ValueError, match="dicts with 'input_ids'"):
        count_batch((batch["input_ids"],))


def test_matmul_parameters_skip_only_an_untied_embedding(tiny_tokenizer: Any) -> None:
    untied = tiny_llama(tiny_tokenizer)
    total = sum(p.numel() for p in untied.parameters())
    assert matmul_parameters(untied) == total - len(tiny_tokenizer) * 32
    tied = tiny_llama(tiny_tokenizer, tie_word_embeddings=True)
    assert matmul_parameters(tied) == sum(p.numel() for p in tied.parameters())  # counted once


def test_peak_flops_table() -> None:
    assert peak_flops_for("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989.4e12
    assert peak_flops_for("NVIDIA H100 PCIe", "16-mixed") == 756e12
    assert peak_flops_for("NVIDIA H200", "bf16-true") == 989.4e12
    assert peak_flops_for("NVIDIA H200 NVL", "bf16-mixed") == 835e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB", "bf16-mixed") == 312e12
    assert peak_flops_for("Tesla T4", "16-mixed") is None
    assert peak_flops_for("NVIDIA A100-SXM4-80GB", "64-true") is None


@pytest.mark.parametrize("accumulate", [1, 2])
def test_windows_count_tokens_after_warmup(
    module_factory, tmp_path: Path, fake_clock: list[float], accumulate: int
) -> None:
    """Warm-up steps are left out; each window holds whole optimizer steps and their exact tokens."""
    batches = ragged_batches(6 * accumulate)
    logger = RecordingLogger()
    callback = ThroughputCallback(log_every_n_steps=2, warmup_steps=2, peak_flops=1e12)
    trainer = cpu_trainer(
        tmp_path,
        max_steps=6,
        logger=logger,
        callbacks=[callback],
        accumulate_grad_batches=accumulate,
    )
    module = module_factory(train_batches=batches)
    trainer.fit(module)

    calls = [(step, m) for step, m in logger.calls if "throughput/tokens_per_sec" in m]
    assert [step for step, _ in calls] == [4, 6]
    model = module.model
    n_params = matmul_parameters(model)
    for (_, metrics), first_step in zip(calls, (2, 4)):
        window = batches[first_step * accumulate : (first_step + 2) * accumulate]
        tokens = sum(int(b["attention_mask"].sum()) for b in window)
        flops = sum(
            int(b["attention_mask"].sum())
            * training_flops_per_token(n_params, 2, 32, b["input_ids"].shape[1])
            for b in window
        )
        assert metrics["throughput/tokens_per_sec"] == tokens  # elapsed is exactly 1 s per window
        assert metrics["throughput/tokens_per_sec_per_device"] == tokens
        assert metrics["throughput/samples_per_sec"] == 2 * len(window)
        assert metrics["throughput/step_time"] == 0.5
        assert metrics["throughput/mfu"] == pytest.approx(flops / 1e12)
    assert len(fake_clock) == 3  # one reading opens the first window, one closes each window


def test_no_mfu_on_cpu_without_peak(module_factory, tmp_path: Path) -> None:
    logger = RecordingLogger()
    callback = ThroughputCallback(log_every_n_steps=1, warmup_steps=1)
    trainer = cpu_trainer(tmp_path, max_steps=3, logger=logger, callbacks=[callback])
    trainer.fit(module_factory(train_batches=ragged_batches(3)))
    logged = [m for _, m in logger.calls if "throughput/tokens_per_sec" in m]
    assert len(logged) == 2
    assert all("throughput/mfu" not in m and m["throughput/tokens_per_sec"] > 0 for m in logged)
    assert callback.last_window["tokens"] == 8 + 3 * 2


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="log_every_n_steps"):
        ThroughputCallback(log_every_n_steps=0)
    with pytest.raises(ConfigError, match="peak_flops"):
        ThroughputCallback(peak_flops=-1.0)
