"""MixCPTModule: LSSD through the fused loss equals a naive full-logit reference, per source too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from common import ConfigError
from lightning_modules import MixCPTModule
from lightning_modules.mix_cpt import lssd_source_mask
from losses import LossSpec
from losses.reference import swap_teacher_logits
from tests.helpers import TINY_LLAMA

IGNORE = -100
LENGTH = 20


def mix_module(tokenizer_dir: Path, **kwargs: Any) -> MixCPTModule:
    """A built MixCPTModule whose student has moved away from its frozen teacher."""
    module = MixCPTModule(
        model_config=TINY_LLAMA, tokenizer=str(tokenizer_dir), attn_implementation="sdpa", **kwargs
    )
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return module


def make_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Three packed rows (positions restart per document), padding, some ignored labels."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, vocab, (3, LENGTH), generator=generator)
    labels = input_ids.clone()
    positions = torch.zeros_like(input_ids)
    for row, lengths in enumerate([[8, 12], [20], [6, 9]]):
        start = 0
        for length in lengths:
            positions[row, start : start + length] = torch.arange(length)
            if start > 0:
                labels[row, start] = IGNORE
            start += length
        positions[row, start:] = torch.arange(LENGTH - start)
        labels[row, start:] = IGNORE
    labels[1, 4] = IGNORE
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": positions,
        "source_index": torch.tensor([0, 1, 0]),
    }


def full_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    return out.logits[:, :-1].double()


def naive_losses(
    module: MixCPTModule, batch: dict[str, torch.Tensor], lssd_rows: torch.Tensor, swap: bool
) -> dict[str, torch.Tensor]:
    """Σ CE over every target and Σ KL(swapped teacher ‖ student) over the LSSD rows' targets."""
    spec = module.loss_spec
    student = full_logits(module.model, batch)
    with torch.no_grad():
        teacher = full_logits(module.teacher.model, batch)
    targets = batch["labels"][:, 1:]
    valid = targets != IGNORE
    ce = F.cross_entropy(
        student[valid], targets[valid], reduction="none"
    )  # every target gets CE in `add` mode (and in plain rows in `replace` mode)
    rows = torch.arange(targets.shape[0])[:, None].expand_as(targets)[valid]
    distilled = lssd_rows[rows]
    t = teacher[valid]
    if swap:
        t = swap_teacher_logits(t, targets[valid])
    log_p = F.log_softmax(t / spec.temperature, dim=-1)
    log_q = F.log_softmax(student[valid] / spec.temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "ce": ce.sum(),
        "ce_distilled": ce[distilled].sum(),
        "ce_plain": ce[~distilled].sum(),
        "kl": kl[distilled].sum(),
    }


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_add_mode_on_every_source_equals_ce_plus_alpha_swapped_kl(
    tiny_tokenizer_dir, temperature
) -> None:
    module = mix_module(tiny_tokenizer_dir, alpha=0.7, temperature=temperature)
    batch = make_batch(module.model.config.vocab_size)
    losses = module.compute_losses(batch)
    naive = naive_losses(module, batch, torch.ones(3, dtype=torch.bool), swap=True)
    torch.testing.assert_close(losses["ce"].double(), naive["ce"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["kl"].double(), naive["kl"], rtol=1e-5, atol=1e-5)
    expected = naive["ce"] + 0.7 * naive["kl"]
    torch.testing.assert_close(losses["loss"].double(), expected, rtol=1e-5, atol=1e-5)


def test_the_swap_changes_the_loss_and_the_unswapped_ablation_is_plain_self_distillation(
    tiny_tokenizer_dir,
) -> None:
    swapped = mix_module(tiny_tokenizer_dir)
    plain = mix_module(tiny_tokenizer_dir, logit_swap=False)
    batch = make_batch(swapped.model.config.vocab_size)
    kl_swapped = swapped.compute_losses(batch)["kl"].double()
    kl_plain = plain.compute_losses(batch)["kl"].double()
    naive = naive_losses(plain, batch, torch.ones(3, dtype=torch.bool), swap=False)
    torch.testing.assert_close(kl_plain, naive["kl"], rtol=1e-5, atol=1e-5)
    assert abs(kl_swapped - kl_plain) > 1e-3  # far beyond round-off: the swap changed the target


def test_replace_mode_distils_toward_a_teacher_whose_argmax_is_the_label(
    tiny_tokenizer_dir,
) -> None:
    module = mix_module(tiny_tokenizer_dir, mode="replace")
    assert module.loss_spec.ce_weight == 0.0 and module.loss_spec.kl_weight == 1.0
    batch = make_batch(module.model.config.vocab_size)
    targets = batch["labels"][:, 1:]
    valid = targets != IGNORE
    with torch.no_grad():
        teacher = full_logits(module.teacher.model, batch)[valid]
    swapped = swap_teacher_logits(teacher, targets[valid])
    assert torch.equal(swapped.argmax(-1), targets[valid])  # every position, swapped or not
    assert (teacher.argmax(-1) != targets[valid]).any()  # the swap did something here

    losses = module.compute_losses(batch)
    losses["loss"].backward()
    fused = {n: p.grad.clone() for n, p in module.model.named_parameters()}
    module.model.zero_grad()
    naive = naive_losses(module, batch, torch.ones(3, dtype=torch.bool), swap=True)
    naive["kl"].backward()
    torch.testing.assert_close(losses["loss"].double(), naive["kl"], rtol=1e-5, atol=1e-5)
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(fused[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_lssd_only_on_the_selected_sources(tiny_tokenizer_dir, mode) -> None:
    module = mix_module(tiny_tokenizer_dir, mode=mode, lssd_sources=["domain"])
    module._lssd_source_mask = lssd_source_mask(["domain"], ["domain", "general"])
    batch = make_batch(module.model.config.vocab_size)
    losses = module.compute_losses(batch)
    lssd_rows = batch["source_index"] == 0
    naive = naive_losses(module, batch, lssd_rows, swap=True)
    ce_weight = 1.0 if mode == "add" else 0.0
    expected = ce_weight * naive["ce_distilled"] + naive["ce_plain"] + naive["kl"]
    torch.testing.assert_close(losses["loss"].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["ce"].double(), naive["ce"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["kl"].double(), naive["kl"], rtol=1e-5, atol=1e-5)

    losses["loss"].backward()
    fused = {n: p.grad.clone() for n, p in module.model.named_parameters()}
    module.model.zero_grad()
    expected.backward()
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(fused[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_batch_without_lssd_rows_is_plain_ce(tiny_tokenizer_dir) -> None:
    module = mix_module(tiny_tokenizer_dir, lssd_sources=["domain"])
    module._lssd_source_mask = lssd_source_mask(["domain"], ["domain", "general"])
    batch = make_batch(module.model.config.vocab_size)
    batch["source_index"] = torch.ones(3, dtype=torch.long)
    losses = module.compute_losses(batch)
    plain = module.student_loss(batch, spec=LossSpec(), use_teacher=False)
    torch.testing.assert_close(losses["loss"], plain["loss"])
    assert float(losses["kl"]) == 0.0


def test_per_row_sums_and_the_teachers_rows(tiny_tokenizer_dir) -> None:
    module = mix_module(tiny_tokenizer_dir)
    batch = make_batch(module.model.config.vocab_size)
    out = module.student_loss(batch, spec=LossSpec(), per_row=True)
    targets = batch["labels"][:, 1:]
    for name, model in (("row_ce", module.model), ("teacher_row_ce", module.teacher.model)):
        logits = full_logits(model, batch)
        nll = F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        ).sum(1)
        torch.testing.assert_close(out[name].double(), nll.detach(), rtol=1e-5, atol=1e-5)
    assert out["row_ce"].requires_grad and not out["teacher_row_ce"].requires_grad
    torch.testing.assert_close(out["ce"], out["row_ce"].sum().detach())


def test_configuration_errors_name_the_key(tiny_tokenizer_dir) -> None:
    with pytest.raises(ConfigError, match=r"model\.init_args\.alpha"):
        MixCPTModule(model_config=TINY_LLAMA, mode="replace", alpha=0.5)
    with pytest.raises(ConfigError, match=r"model\.init_args\.alpha.*CausalLMModule"):
        MixCPTModule(model_config=TINY_LLAMA, alpha=0.0)
    with pytest.raises(ConfigError, match=r"model\.init_args\.mode"):
        MixCPTModule(model_config=TINY_LLAMA, mode="swap")
    with pytest.raises(ConfigError, match=r"model\.init_args\.temperature"):
        MixCPTModule(model_config=TINY_LLAMA, temperature=0.0)
    with pytest.raises(ConfigError, match=r"model\.init_args\.loss"):
        MixCPTModule(model_config=TINY_LLAMA, loss={"ce_weight": 1.0})
    with pytest.raises(ConfigError, match=r"lssd_sources.*unknown.*\['web'\]"):
        lssd_source_mask(["domain", "web"], ["domain", "general"])
    module = MixCPTModule(model_config=TINY_LLAMA)
    assert module.teacher_settings.kind == "frozen" and module.loss_spec.logit_swap
