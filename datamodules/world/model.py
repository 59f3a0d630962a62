"""A tiny Llama configuration sized for the synthetic world (the model layer builds it)."""

from __future__ import annotations

from typing import Any


def tiny_model_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    eos_token_id: int | None = 0,
    pad_token_id: int | None = 1,
) -> dict[str, Any]:
    """Keyword arguments for `transformers.LlamaConfig` of a model that trains in minutes on a CPU.

    The dict includes `model_type: llama`, so `AutoConfig.for_model(**d)` works as well as
    `LlamaConfig(**d)`.

    Args:
        vocab_size: Size of the embedding table; use `len(tokenizer)` of the world tokenizer.
        hidden_size: Width of the residual stream.
        num_hidden_layers: Number of decoder blocks.
        num_attention_heads: Attention heads (and key/value heads); must divide `hidden_size`.
        intermediate_size: Width of the SwiGLU MLP.
        max_position_embeddings: Longest sequence the model accepts.
        tie_word_embeddings: Share the input embedding and the LM head (fewer parameters, which
            matters at this size where the embedding is a large share of the model).
        eos_token_id: EOS id; the world tokenizer's `<|endoftext|>` is 0.
        pad_token_id: Padding id; the world tokenizer's `<|pad|>` is 1.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
            f"({num_attention_heads})"
        )
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_attention_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
    }
