"""The frozen teacher: frozen, outside the optimizer and checkpoints, exact where it should be."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from common import ConfigError
from lightning_modules import CausalLMModule, LoraSettings, TeacherSettings
from lightning_modules.modeling import decoder_hidden_states, output_head
from losses import LossSpec
from tests.helpers import TINY_LLAMA, TINY_TEXTS, cpu_trainer, fixed_batch, tiny_module


def distilling(tokenizer_dir, kind: str = "frozen", **kwargs) -> CausalLMModule:
    return tiny_module(
        tokenizer_dir,
        teacher=TeacherSettings(kind=kind),
        loss=LossSpec(ce_weight=1.0, kl_weight=0.5, temperature=2.0),
        **kwargs,
    )


def teacher_state(module: CausalLMModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.teacher.model.named_parameters()}


def fit_steps(module, tmp_path, tokenizer, steps: int = 3, ckpt_path: str | None = None):
    batch = fixed_batch(tokenizer, TINY_TEXTS)
    trainer = cpu_trainer(tmp_path, max_steps=steps)
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None), ckpt_path=ckpt_path)
    return trainer


def test_frozen_teacher_never_changes_and_is_outside_optimizer_and_checkpoint(
    tmp_path, tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    module = distilling(tiny_tokenizer_dir, total_steps=3)
    initial = teacher_state(module)
    student_before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    assert initial.keys() == student_before.keys()
    for name, value in initial.items():  # a copy of the initial student
        assert torch.equal(value, student_before[name]), name
    trainer = fit_steps(module, tmp_path, tiny_tokenizer)
    for name, value in teacher_state(module).items():
        assert torch.equal(value, initial[name]), name
    assert any(not torch.equal(p, student_before[n]) for n, p in module.model.named_parameters()), (
        "the student did not train"
    )
    assert not module.teacher.model.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in module.teacher.parameters()}
    assert not any("teacher" in name for name in module.state_dict())
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]  # plain hparams: loads weights_only
    assert saved.keys() == module.state_dict().keys()
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in module.parameters())

    # a resume rebuilds the teacher from the initial student, not from the trained weights
    resumed = distilling(tiny_tokenizer_dir, total_steps=4)
    fit_steps(resumed, tmp_path / "resumed", tiny_tokenizer, steps=4, ckpt_path=str(path))
    for name, value in teacher_state(resumed).items():
        assert torch.equal(value, initial[name]), name


def test_kl_to_an_identical_teacher_is_zero_and_gradients_match_plain_ce(
    tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    module = distilling(tiny_tokenizer_dir)
    plain = tiny_module(tiny_tokenizer_dir)
    losses = module.compute_losses(batch)
    assert set(losses) == {"loss", "ce", "kl"}
    assert abs(float(losses["kl"])) < 1e-5
    reference = plain.compute_losses(batch)
    torch.testing.assert_close(losses["ce"], reference["ce"], rtol=1e-6, atol=1e-6)
    losses["loss"].backward()
    reference["loss"].backward()
    grads = dict(plain.model.named_parameters())
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_teacher_is_eval_mode_without_gradients_even_while_the_student_trains(
    tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    config = {**TINY_LLAMA, "attention_dropout": 0.5}
    module = CausalLMModule(
        model_config=config,
        tokenizer=str(tiny_tokenizer_dir),
        teacher=TeacherSettings(kind="frozen"),
        loss=LossSpec(kl_weight=1.0),
    )
    module.configure_model()
    module.lm.train()
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    first = module.teacher.hidden_states(batch["input_ids"], batch["position_ids"])
    second = module.teacher.hidden_states(batch["input_ids"], batch["position_ids"])
    assert not first.requires_grad
    assert torch.equal(first, second)  # no dropout in the teacher
    student_a = decoder_hidden_states(module.model, batch["input_ids"], batch["position_ids"])
    student_b = decoder_hidden_states(module.model, batch["input_ids"], batch["position_ids"])
    assert not torch.equal(student_a, student_b)  # the student does use dropout


def test_adapters_disabled_teacher_is_exactly_the_base_model(
    tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    module = tiny_module(
        tiny_tokenizer_dir,
        lora=lora,
        teacher=TeacherSettings(kind="adapters_disabled"),
        loss=LossSpec(kl_weight=1.0),
    )
    base = tiny_module(tiny_tokenizer_dir)  # same init_seed: the same base weights
    with torch.no_grad():  # make the adapters non-trivial (LoRA's B starts at zero)
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    module.lm.train()
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    teacher = module.teacher.hidden_states(batch["input_ids"], batch["position_ids"])
    with torch.no_grad():
        reference = decoder_hidden_states(base.model, batch["input_ids"], batch["position_ids"])
        student = decoder_hidden_states(module.model, batch["input_ids"], batch["position_ids"])
    assert torch.equal(teacher, reference)
    assert not torch.allclose(student, reference, atol=1e-3)
    assert module.teacher.parameters() == []  # no extra weights
    assert torch.equal(module.teacher.head()[0], output_head(base.model)[0])
    assert all(m.training for m in module.model.modules())  # modes restored after the pass
    assert any(p.requires_grad for p in module.model.parameters())


def test_eight_bit_teacher_is_close_to_fp32(tiny_tokenizer_dir, tiny_tokenizer) -> None:
    """LLM.int8 with threshold 0 (every column quantized): documented tolerance on the log-probs."""
    pytest.importorskip("bitsandbytes")
    fp32 = distilling(tiny_tokenizer_dir)
    int8 = tiny_module(
        tiny_tokenizer_dir,
        teacher=TeacherSettings(kind="frozen_8bit", int8_threshold=0.0),
        loss=LossSpec(kl_weight=1.0),
    )
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in int8.teacher.model.modules())
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    outputs = []
    for module in (fp32, int8):
        hidden = module.teacher.hidden_states(batch["input_ids"], batch["position_ids"])
        weight, _ = module.teacher.head()
        outputs.append(torch.log_softmax(hidden @ weight.T, dim=-1))
    reference, quantized = outputs
    mask = batch["attention_mask"].bool()
    kl = (reference.exp() * (reference - quantized)).sum(-1)[mask]
    assert float(kl.max()) < 1e-3, float(kl.max())
    assert float((reference - quantized).abs()[mask].max()) < 0.1


def test_teacher_settings_are_validated(tiny_tokenizer_dir) -> None:
    with pytest.raises(ConfigError, match=r"model.init_args.loss.kl_weight"):
        CausalLMModule(model_config=TINY_LLAMA, loss=LossSpec(kl_weight=1.0))
    with pytest.raises(ConfigError, match=r"teacher.kind': adapters_disabled needs a LoRA"):
        CausalLMModule(model_config=TINY_LLAMA, teacher=TeacherSettings(kind="adapters_disabled"))
    with pytest.raises(ConfigError, match=r"teacher.model_name_or_path'.*does not exist|not a dir"):
        CausalLMModule(
            model_config=TINY_LLAMA, teacher=TeacherSettings(model_name_or_path="/no/such/dir")
        )


def test_teacher_from_its_own_directory(tmp_path, tiny_tokenizer_dir, tiny_tokenizer) -> None:
    other = tiny_module(tiny_tokenizer_dir, init_seed=7)
    other.model.save_pretrained(tmp_path / "teacher")
    module = tiny_module(
        tiny_tokenizer_dir,
        teacher=TeacherSettings(model_name_or_path=str(tmp_path / "teacher")),
        loss=LossSpec(kl_weight=1.0),
    )
    for name, param in module.teacher.model.named_parameters():
        assert torch.equal(param, dict(other.model.named_parameters())[name]), name
    losses = module.compute_losses(fixed_batch(tiny_tokenizer, TINY_TEXTS))
    assert float(losses["kl"]) > 0.0
