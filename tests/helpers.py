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


TINY_TEXTS = [
    "Alice Varen was born in Orlin in 1987.",
    "Bram Oster works for Kestrel Labs.",
    "The river Tal flows to the sea.",
    "Question: Where was Alice Varen born? Answer: Orlin.",
]


def tiny_module(tokenizer_dir: Path | str, **kwargs: Any):
    """A built `CausalLMModule` with the tiny Llama (AdamW at lr 1e-2 unless `optimizer` is given)."""
    from lightning_modules import CausalLMModule

    kwargs.setdefault("optimizer", lambda params: torch.optim.AdamW(params, lr=1e-2))
    module = CausalLMModule(model_config=TINY_LLAMA, tokenizer=str(tokenizer_dir), **kwargs)
    module.configure_model()
    return module


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


class RecordSteps(pl.Callback):
    """Append, per micro-batch, the rank, step, sample indices and (rank 0) the step's logged loss to JSONL.

    Used by resume and DDP tests through the CLI (`class_path: tests.helpers.RecordSteps`).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        import json

        record = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "sample_index": batch["sample_index"].tolist(),
            "step_weight": float(batch["step_weight"]),
        }
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and trainer.global_rank == 0:
            record["loss"] = float(trainer.callback_metrics["train/loss"])
        with open(f"{self.path}.rank{trainer.global_rank}", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records `RecordSteps` wrote under `path` (every rank), in file order per rank."""
    import json

    records = []
    for file in sorted(path.parent.glob(path.name + ".rank*")):
        records += [json.loads(line) for line in file.read_text().splitlines()]
    return records


def steps_view(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per optimizer step (1-based, after the step): the sorted sample set and rank 0's logged loss."""
    steps: dict[int, dict[str, Any]] = {}
    for r in records:
        entry = steps.setdefault(
            r["global_step"],
            {"samples": [], "loss": None, "tokens": r["step_weight"], "epoch": r["epoch"]},
        )
        entry["samples"] += r["sample_index"]
        if "loss" in r:
            entry["loss"] = r["loss"]
    for entry in steps.values():
        entry["samples"] = sorted(entry["samples"])
    return steps


def write_recording_overlay(out: Path, every_n_train_steps: int) -> Path:
    """A config overlay: checkpoints every `every_n_train_steps` (named `step=N.ckpt`) and a `RecordSteps`."""
    overlay = out / "overlay.yaml"
    overlay.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {out / 'ckpt'}, every_n_train_steps: {every_n_train_steps}, "
        "save_top_k: -1, filename: '{step}'}\n"
        "    - class_path: tests.helpers.RecordSteps\n"
        f"      init_args: {{path: {out / 'records.jsonl'}}}\n"
    )
    return overlay
