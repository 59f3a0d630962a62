"""Callback test helpers: a minimal causal-LM LightningModule, tiny data, JSONL writers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import cpu_trainer  # noqa: F401  (re-exported for the callback tests)

QA_LINES = [
    ("Question: Where was Alice Varen born? Answer:", " Orlin"),
    ("Question: Who employs Bram Oster? Answer:", " Kestrel Labs"),
]


def tiny_llama(tokenizer: Any, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A 2-layer Llama (hidden 32) over the tiny tokenizer's vocabulary, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings))


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def loader(batches: list[dict[str, torch.Tensor]]) -> DataLoader:
    """A DataLoader yielding the given ready-made batches in order."""
    return DataLoader(batches, batch_size=None, shuffle=False)


class TinyCausalLM(pl.LightningModule):
    """The smallest module with the surface the callbacks use: `.model`, `.tokenizer`."""

    def __init__(
        self,
        tokenizer: Any,
        lr: float = 1e-2,
        seed: int = 0,
        train_batches: list[dict[str, torch.Tensor]] | None = None,
        val_batches: list[dict[str, torch.Tensor]] | None = None,
        lora: bool = False,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.lr = lr
        self.seed = seed
        self.lora = lora
        self.train_batches = train_batches or []
        self.val_batches = val_batches or []
        self.model: torch.nn.Module | None = None
        self.training_flags: list[bool] = []

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = tiny_llama(self.tokenizer, seed=self.seed)
        if self.lora:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
            )
            model = get_peft_model(model, config)
        self.model = model

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.training_flags.append(self.model.training)
        return self.model(**batch).loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return loader(self.train_batches)

    def val_dataloader(self) -> DataLoader:
        return loader(self.val_batches)


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def qa_sequences(tokenizer: Any) -> list[list[int]]:
    """Token ids of `prompt + answer + EOS` for every `QA_LINES` entry, as in training data."""
    return [tokenizer(p + a)["input_ids"] + [tokenizer.eos_token_id] for p, a in QA_LINES]


@pytest.fixture
def module_factory(tiny_tokenizer: Any):
    """Build a `TinyCausalLM` over the tiny tokenizer."""

    def make(**kwargs: Any) -> TinyCausalLM:
        return TinyCausalLM(tiny_tokenizer, **kwargs)

    return make
