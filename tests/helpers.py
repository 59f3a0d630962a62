"""Small builders shared by tests: tiny model configs, fixed batches, a trainer factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def fixed_batch(tokenizer: Any, texts: list[str], length: int = 24) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels = input ids (padding ignored) and per-row positions."""
    encoded = tokenizer(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )
    labels = encoded["input_ids"].clone()
    labels[encoded["attention_mask"] == 0] = -100
    positions = torch.arange(length).expand(len(texts), length).clone()
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "position_ids": positions,
        "labels": labels,
    }


def cpu_trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    """A quiet single-process CPU trainer writing under `tmp_path`."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0,
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
