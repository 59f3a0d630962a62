"""Fixtures for CLI-level tests: a small world shared by the session, a tiny exported base model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.world import WorldConfig, materialize_world

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "experiments" / "configs"
SMALL_WORLD: dict[str, object] = {
    "num_general_entities": 12,
    "num_domain_entities": 12,
    "skills": {"train_per_skill": 30, "test_per_skill": 10},
    "instructions": {
        "num_instructions": 30,
        "num_preference_pairs": 20,
        "format_alignment_pool": 6,
    },
    "web": {"num_documents": 100, "num_pretraining_documents": 20},
    "tasks": {"comparisons_per_split": 8, "same_value_per_split": 4},
}


def _flat(mapping: dict[str, object], prefix: str) -> list[str]:
    args = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            args += _flat(value, f"{prefix}{key}.")
        else:
            args.append(f"--{prefix}{key}={value}")
    return args


@pytest.fixture(scope="session")
def cli_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of worlds and tokenized stores for every CLI test of the session."""
    return tmp_path_factory.mktemp("cli_cache")


@pytest.fixture(scope="session")
def small_world_args(cli_cache: Path) -> list[str]:
    """CLI overrides that point a world experiment at a small world and the session cache."""
    return [
        f"--data.init_args.world_cache_dir={cli_cache / 'worlds'}",
        f"--data.init_args.cache_dir={cli_cache / 'stores'}",
        "--data.init_args.micro_batch_size=4",
        *_flat(SMALL_WORLD, "data.init_args.world."),
    ]


@pytest.fixture(scope="session")
def tiny_base_model(cli_cache: Path) -> Path:
    """A tiny Llama with the small world's tokenizer, saved with `save_pretrained` (a stage-1 stand-in)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    artifacts = materialize_world(WorldConfig(**SMALL_WORLD), cli_cache / "worlds")
    tokenizer = AutoTokenizer.from_pretrained(artifacts.tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = cli_cache / "tiny_base"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
