"""Fixtures for CLI-level tests: a small world shared by the session, a tiny exported base model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.world import WorldConfig, materialize_world

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "experiments" / "configs"
SMALL_WORLD = {"num_general_entities": 12, "num_domain_entities": 12}


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
        *(f"--data.init_args.world.{key}={value}" for key, value in SMALL_WORLD.items()),
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
