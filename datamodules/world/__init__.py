"""The synthetic knowledge world: fictional people, their biographies, and QA in a chat format.

`WorldConfig` -> `build_world(config)` (pure, deterministic) -> `World`, whose splits
(`splits.SPLITS`) render as JSONL records; `materialize_world(config, cache_dir)` writes them with
a trained byte-level BPE tokenizer, cached by fingerprint. `tiny_model_config` sizes a Llama that
learns the world in minutes on a CPU.
"""

from datamodules.world import instructions, skills, tasks, web  # noqa: F401  (registers splits)
from datamodules.world.chat import (
    ASSISTANT,
    END,
    PAD,
    SPECIAL_TOKENS,
    USER,
    exact_match,
    format_chat,
    format_prompt,
    normalize_answer,
)
from datamodules.world.config import WorldConfig
from datamodules.world.datamodule import WorldDataModule
from datamodules.world.generator import GENERATOR_VERSION, Entity, World, build_world
from datamodules.world.materialize import WorldArtifacts, materialize_world, world_fingerprint
from datamodules.world.model import tiny_model_config
from datamodules.world.splits import SPLITS, SplitSpec, register_split, render_split
from datamodules.world.templates import ATTRIBUTES, AttributeSpec

__all__ = [
    "ASSISTANT",
    "ATTRIBUTES",
    "END",
    "GENERATOR_VERSION",
    "PAD",
    "SPECIAL_TOKENS",
    "SPLITS",
    "USER",
    "AttributeSpec",
    "Entity",
    "SplitSpec",
    "World",
    "WorldArtifacts",
    "WorldConfig",
    "WorldDataModule",
    "build_world",
    "exact_match",
    "format_chat",
    "format_prompt",
    "materialize_world",
    "normalize_answer",
    "register_split",
    "render_split",
    "tiny_model_config",
    "world_fingerprint",
]
