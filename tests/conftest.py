"""Shared test set-up: offline hubs, the Triton interpreter on CPU-only machines, tiny fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# Triton kernels must see TRITON_INTERPRET before they are defined; without a GPU they run interpreted.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest

TINY_CORPUS = [
    "Alice Varen was born in Orlin in 1987. She studied physics at Mereth University.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "The river Tal flows through three cities before it reaches the sea.",
    "Question: Where was Alice Varen born? Answer: Orlin.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) ' \" - appear too.",
]


@pytest.fixture(scope="session", autouse=True)
def shared_gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of dequantized GGUF models for the whole session (`ADAPTLM_GGUF_CACHE`, inherited
    by subprocesses): SmolLM2 is dequantized by the first test that loads it, not by every one, and
    never into the working tree."""
    from lightning_modules.modeling import GGUF_CACHE_ENV

    directory = tmp_path_factory.mktemp("gguf_models")
    os.environ[GGUF_CACHE_ENV] = str(directory)
    return directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is present, with the reason shown."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (vocab 300) trained in-process and saved with `save_pretrained`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    """The tiny tokenizer loaded with `AutoTokenizer`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
