"""CausalLMModule on its own: building, learning, optimizer wiring, config errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from common.errors import ConfigError
from lightning_modules import CausalLMModule
from lightning_modules.modeling import LoraSettings, decoder_hidden_states, output_head
from tests.helpers import TINY_LLAMA, TINY_TEXTS, cpu_trainer, fixed_batch, tiny_module


def repeat_loader(batch, n: int) -> DataLoader:
    return DataLoader([batch] * n, batch_size=None)


def test_builds_tiny_model_from_config(tiny_tokenizer_dir, tiny_tokenizer) -> None:
    module = tiny_module(tiny_tokenizer_dir)
    assert module.model.config.vocab_size == len(tiny_tokenizer)
    assert module.model.config.num_hidden_layers == 2
    assert output_head(module.model)[0].shape == (len(tiny_tokenizer), 32)


def test_loss_matches_transformers_cross_entropy(tiny_tokenizer_dir, tiny_tokenizer) -> None:
    module = tiny_module(tiny_tokenizer_dir)
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    summed = module.compute_losses(batch)["loss"]
    tokens = (batch["labels"][:, 1:] != -100).sum()
    reference = module.model(**batch).loss  # transformers' own shifted mean CE
    torch.testing.assert_close(summed / tokens, reference, rtol=1e-5, atol=1e-6)


def test_overfits_one_batch(tmp_path, tiny_tokenizer_dir, tiny_tokenizer) -> None:
    module = tiny_module(tiny_tokenizer_dir, total_steps=60)
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    with torch.no_grad():
        initial = module.compute_losses(batch)["loss"] / (batch["labels"][:, 1:] != -100).sum()
    cpu_trainer(tmp_path, max_steps=60).fit(module, repeat_loader(batch, 60))
    with torch.no_grad():
        final = module.compute_losses(batch)["loss"] / (batch["labels"][:, 1:] != -100).sum()
    assert initial > 4.0
    assert final < 0.3, f"did not overfit: {initial:.3f} -> {final:.3f}"


def test_every_trainable_parameter_changes_after_one_step(
    tmp_path, tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    module = tiny_module(tiny_tokenizer_dir, total_steps=1)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    cpu_trainer(tmp_path, max_steps=1).fit(
        module, repeat_loader(fixed_batch(tiny_tokenizer, TINY_TEXTS), 1)
    )
    unchanged = [
        n
        for n, p in module.model.named_parameters()
        if p.requires_grad and torch.equal(p, before[n])
    ]
    assert not unchanged, f"parameters did not change: {unchanged}"


def test_lora_trains_only_adapters(tmp_path, tiny_tokenizer_dir, tiny_tokenizer) -> None:
    module = tiny_module(
        tiny_tokenizer_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0), total_steps=1
    )
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {
        n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad
    }
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    cpu_trainer(tmp_path, max_steps=1).fit(
        module, repeat_loader(fixed_batch(tiny_tokenizer, TINY_TEXTS), 1)
    )
    params = dict(module.model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    # lora_B starts at zero, so after one step at least every lora_B matrix has moved
    assert all(not torch.equal(params[n], before[n]) for n in trainable if "lora_B" in n)


def test_weight_decay_groups_exclude_norms_biases_and_embeddings(tiny_tokenizer_dir) -> None:
    module = tiny_module(tiny_tokenizer_dir)
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert all("norm" not in names[id(p)] and "embed" not in names[id(p)] for p in decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_eight_bit_adamw_is_a_config_choice(tmp_path, tiny_tokenizer_dir, tiny_tokenizer) -> None:
    bnb = pytest.importorskip("bitsandbytes", reason="quant extra not installed")
    module = tiny_module(
        tiny_tokenizer_dir,
        optimizer=lambda params: bnb.optim.AdamW8bit(params, lr=1e-3),
        total_steps=2,
    )
    before = output_head(module.model)[0].detach().clone()
    cpu_trainer(tmp_path, max_steps=2).fit(
        module, repeat_loader(fixed_batch(tiny_tokenizer, TINY_TEXTS), 2)
    )
    assert isinstance(module.trainer.optimizers[0], bnb.optim.AdamW8bit)
    assert not torch.equal(output_head(module.model)[0], before)


def test_model_source_must_be_exactly_one() -> None:
    with pytest.raises(ConfigError, match="model.init_args.model_name_or_path"):
        CausalLMModule()
    with pytest.raises(ConfigError, match="exactly one"):
        CausalLMModule(model_name_or_path="x", model_config=TINY_LLAMA)


def test_sequence_length_above_model_maximum_is_rejected(tiny_tokenizer_dir) -> None:
    module = CausalLMModule(
        model_config=TINY_LLAMA, tokenizer=str(tiny_tokenizer_dir), max_length=4096
    )
    with pytest.raises(
        ConfigError, match=r"data.init_args.max_length.*max_position_embeddings=128"
    ):
        module.configure_model()


def test_flash_attention_without_cuda_is_a_clear_error(tiny_tokenizer_dir) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    module = CausalLMModule(
        model_config=TINY_LLAMA,
        tokenizer=str(tiny_tokenizer_dir),
        attn_implementation="flash_attention_2",
    )
    with pytest.raises(ConfigError, match="attn_implementation.*flash-attn"):
        module.configure_model()


def test_loads_local_save_pretrained_directory(
    tmp_path, tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    source = tiny_module(tiny_tokenizer_dir)
    source.model.save_pretrained(tmp_path / "student")
    tiny_tokenizer.save_pretrained(tmp_path / "student")
    loaded = CausalLMModule(model_name_or_path=str(tmp_path / "student"))
    loaded.configure_model()
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    torch.testing.assert_close(
        loaded.compute_losses(batch)["loss"], source.compute_losses(batch)["loss"]
    )


def test_warmup_cosine_schedule_shape() -> None:
    from lightning_modules.schedulers import WarmupCosineLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    factors = [sched.lr_factor(s) for s in range(25)]
    assert factors[0] == pytest.approx(0.2) and factors[3] == pytest.approx(0.8)
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert factors[20] == pytest.approx(0.1) and factors[24] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineLR(opt, total_steps=None).lr_factor(1)


def test_packed_documents_do_not_attend_to_each_other(tiny_tokenizer_dir, tiny_tokenizer) -> None:
    module = tiny_module(tiny_tokenizer_dir)
    first = tiny_tokenizer(TINY_TEXTS[0], add_special_tokens=False)["input_ids"] + [
        tiny_tokenizer.eos_token_id
    ]
    second = tiny_tokenizer(TINY_TEXTS[1], add_special_tokens=False)["input_ids"] + [
        tiny_tokenizer.eos_token_id
    ]
    pad = [tiny_tokenizer.pad_token_id] * 3
    packed = torch.tensor([first + second + pad])
    positions = torch.tensor([list(range(len(first))) + list(range(len(second))) + list(range(3))])
    batch = {
        "input_ids": packed,
        "position_ids": positions,
        "attention_mask": torch.ones_like(packed),
    }
    with torch.no_grad():
        together = decoder_hidden_states(module.model, **batch)[0]
        alone = decoder_hidden_states(module.model, torch.tensor([second]))[0]
    span = slice(len(first), len(first) + len(second))
    torch.testing.assert_close(together[span], alone, rtol=1e-5, atol=1e-5)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path, monkeypatch, tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    from fsspec.implementations.local import LocalFileOpener

    module = tiny_module(tiny_tokenizer_dir, total_steps=1)
    trainer = cpu_trainer(tmp_path, max_steps=1)
    trainer.fit(module, repeat_loader(fixed_batch(tiny_tokenizer, TINY_TEXTS), 1))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    good = path.read_bytes()

    def write_half_then_fail(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(LocalFileOpener, "write", write_half_then_fail, raising=False)
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint(path)
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint(tmp_path / "new.ckpt")
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert not (tmp_path / "new.ckpt").exists()
    assert "state_dict" in torch.load(path, weights_only=False)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(
    tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    results = []
    for checkpointing in (False, True):
        module = tiny_module(tiny_tokenizer_dir, gradient_checkpointing=checkpointing)
        module.model.train()
        loss = module.compute_losses(batch)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.model.named_parameters()}))
    (plain_loss, plain_grads), (ckpt_loss, ckpt_grads) = results
    assert module.model.is_gradient_checkpointing
    torch.testing.assert_close(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
