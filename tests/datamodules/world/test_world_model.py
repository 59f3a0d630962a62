"""`tiny_model_config` builds a working Llama on the world tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from datamodules.world import WorldArtifacts, format_chat, tiny_model_config


def test_tiny_llama_runs_on_world_tokens(small_artifacts: WorldArtifacts) -> None:
    tokenizer = small_artifacts.load_tokenizer()
    kwargs = tiny_model_config(len(tokenizer))
    config = LlamaConfig(**kwargs)
    assert AutoConfig.for_model(**kwargs).to_dict() == config.to_dict()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    batch = tokenizer(
        [format_chat("Where was X born?", "Orlin"), "A biography."],
        padding=True,
        return_tensors="pt",
    )
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny_model_config(300, hidden_size=64, num_attention_heads=5)
