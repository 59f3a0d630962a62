"""TALRModule: per-document detached token weights in the one fused forward equal a naive reference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from common import ConfigError
from lightning_modules import TALRModule, TeacherSettings
from lightning_modules.talr import per_sequence_statistic, sequence_ids, talr_token_weights
from losses import LossSpec
from tests.helpers import TINY_LLAMA, cpu_trainer

IGNORE = -100
LENGTH = 24


def talr_module(tokenizer_dir: Path, **kwargs: Any) -> TALRModule:
    kwargs.setdefault("optimizer", lambda params: torch.optim.AdamW(params, lr=1e-2))
    module = TALRModule(
        model_config=TINY_LLAMA, tokenizer=str(tokenizer_dir), attn_implementation="sdpa", **kwargs
    )
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread the NLLs, so that weights differ between tokens and documents
        for p in module.model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return module


# Per row: the document lengths (then padding up to LENGTH); targets of even and odd counts.
PACKED_ROWS = [[7, 9, 8], [5, 10, 4], [12, 6]]
UNPACKED_ROWS = [[15], [24], [9]]


def make_batch(vocab: int, rows: list[list[int]], packed: bool) -> dict[str, torch.Tensor]:
    """Rows of documents (positions restarting per document, first token of a later one ignored),
    trailing padding as one pseudo-segment, a few more ignored labels, random `loss_weights`."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, vocab, (len(rows), LENGTH), generator=generator)
    labels = input_ids.clone()
    positions = torch.zeros_like(input_ids)
    attention = torch.zeros_like(input_ids)
    for r, lengths in enumerate(rows):
        start = 0
        for length in lengths:
            positions[r, start : start + length] = torch.arange(length)
            attention[r, start : start + length] = 1
            if start > 0:
                labels[r, start] = IGNORE
            start += length
        positions[r, start:] = torch.arange(LENGTH - start)
        input_ids[r, start:] = 1
        labels[r, start:] = IGNORE
    labels[0, 3] = labels[1, 8] = labels[2, 14] = IGNORE  # e.g. masked prompt tokens
    weights = torch.rand(labels.shape, generator=generator) + 0.5
    weights[labels == IGNORE] = 0.0
    batch = {"input_ids": input_ids, "labels": labels, "loss_weights": weights}
    if packed:
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = attention
    return batch


def python_median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def reference(
    module: TALRModule,
    batch: dict[str, torch.Tensor],
    rows: list[list[int]],
    constant_weights: dict[tuple[int, int], float] | None = None,
    detach: bool = True,
    statistic: str = "mean",
) -> tuple[torch.Tensor, dict[tuple[int, int], float]]:
    """Σ lw·w·nll from full logits, each document run alone; `w = clamp(exp(-nll/τ), 0.01)` with τ
    the mean or median of the document's target NLLs (python loop), detached — or given as
    constants."""
    total = torch.zeros(())
    used: dict[tuple[int, int], float] = {}
    for r, lengths in enumerate(rows):
        start = 0
        for length in lengths:
            ids = batch["input_ids"][r, start : start + length]
            labels = batch["labels"][r, start : start + length]
            logits = module.model(input_ids=ids[None]).logits[0, :-1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll = {}
            for t in range(length - 1):
                label = int(labels[t + 1])
                if label != IGNORE:
                    nll[start + t] = -logp[t, label]
            values = [float(v) for v in nll.values()]
            tau = python_median(values) if statistic == "median" else sum(values) / len(values)
            for column, value in nll.items():
                if constant_weights is not None:
                    w = constant_weights[(r, column)]
                else:
                    w_tensor = torch.exp(-(value.detach() if detach else value) / tau)
                    w_tensor = w_tensor.clamp_min(0.01)
                    w = w_tensor if not detach else float(w_tensor)
                used[(r, column)] = float(torch.as_tensor(w).detach())
                total = total + float(batch["loss_weights"][r, column + 1]) * w * value
            start += length
    return total, used


def grads(module: TALRModule, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.model.zero_grad(set_to_none=True)
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in module.model.named_parameters()}
    module.model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, grad in expected.items():  # sums, not means: round-off relative to the largest entry
        scale = float(grad.abs().max())
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("statistic", ["mean", "median"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one_document_per_row"])
def test_loss_and_gradients_equal_the_naive_reference(
    packed, statistic, tiny_tokenizer_dir
) -> None:
    module = talr_module(tiny_tokenizer_dir, tau_statistic=statistic)
    rows = PACKED_ROWS if packed else UNPACKED_ROWS
    batch = make_batch(module.model.config.vocab_size, rows, packed)
    parts = module.compute_losses(batch)
    expected, weights = reference(module, batch, rows, statistic=statistic)
    assert 0.01 < min(weights.values()) < max(weights.values()) < 1.0  # weights really vary
    torch.testing.assert_close(parts["loss"], expected, rtol=2e-5, atol=1e-5)
    lw = batch["loss_weights"]
    mean_weight = sum(float(lw[r, c + 1]) * w for (r, c), w in weights.items())
    torch.testing.assert_close(parts["talr_mean_weight"].item(), mean_weight, rtol=1e-5, atol=0)
    with torch.no_grad():
        logits = module.model(
            input_ids=batch["input_ids"],
            position_ids=batch.get("position_ids"),
            attention_mask=batch.get("attention_mask"),
        ).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none"
        )
    torch.testing.assert_close(parts["ce"], (ce * lw[:, 1:]).sum(), rtol=2e-5, atol=1e-5)
    assert not parts["ce"].requires_grad and not parts["talr_mean_weight"].requires_grad
    assert_same_grads(grads(module, parts["loss"]), grads(module, expected))


def test_weights_are_detached(tiny_tokenizer_dir) -> None:
    module = talr_module(tiny_tokenizer_dir)
    batch = make_batch(module.model.config.vocab_size, PACKED_ROWS, packed=True)
    seen = []

    def spy(nll, valid, positions):
        seen.append(nll.requires_grad)
        return talr_token_weights(nll, valid, positions)

    got = grads(module, module.student_loss(batch, token_weight_fn=spy)["loss"])
    assert seen == [False]
    _, weights = reference(module, batch, PACKED_ROWS)
    constant, _ = reference(module, batch, PACKED_ROWS, constant_weights=weights)
    assert_same_grads(got, grads(module, constant))  # Σ w·∇nll, w constant
    attached, _ = reference(module, batch, PACKED_ROWS, detach=False)
    through = grads(module, attached)  # what a non-detached weight would give: different
    assert any(not torch.allclose(got[n], through[n], rtol=1e-3, atol=1e-6) for n in got)


def test_equal_nlls_give_exp_minus_one_and_unlikely_tokens_hit_the_floor(
    tiny_tokenizer_dir,
) -> None:
    # Through the model: a zero final norm makes every logit 0, so every NLL is log V = τ.
    module = talr_module(tiny_tokenizer_dir)
    with torch.no_grad():
        module.transformer_model().model.norm.weight.zero_()
    batch = make_batch(module.model.config.vocab_size, PACKED_ROWS, packed=True)
    seen = {}

    def spy(nll, valid, positions):
        seen["weights"] = talr_token_weights(nll, valid, positions)
        seen["valid"] = valid
        seen["nll"] = nll
        return seen["weights"]

    parts = module.student_loss(batch, token_weight_fn=spy)
    valid = seen["valid"]
    vocab = module.model.config.vocab_size
    torch.testing.assert_close(
        seen["nll"][valid], torch.full_like(seen["nll"][valid], math.log(vocab))
    )
    torch.testing.assert_close(
        seen["weights"][valid], torch.full_like(seen["weights"][valid], math.exp(-1))
    )
    assert (seen["weights"][~valid] == 0).all()
    lw = batch["loss_weights"][:, 1:][valid].sum()
    torch.testing.assert_close(parts["token_weight"], math.exp(-1) * lw)
    torch.testing.assert_close(parts["loss"], math.exp(-1) * parts["ce"])

    # Constructed NLLs: one very unlikely token (nll 30 ≫ τ) gets the floor, 0.01.
    nll = torch.tensor([[0.5, 1.0, 30.0, 1.5, 2.0, 2.0, 2.0]])
    positions = torch.tensor([[1, 2, 3, 4, 0, 1, 2]])  # two documents: 4 and 3 targets
    valid = torch.ones_like(nll, dtype=torch.bool)
    weights = talr_token_weights(nll, valid, positions, tau_statistic="median")
    tau = 1.25  # median of (0.5, 1.0, 1.5, 30.0): the mean of the two middle values
    expected = [math.exp(-0.5 / tau), math.exp(-1.0 / tau), 0.01, math.exp(-1.5 / tau)]
    expected += [math.exp(-1)] * 3
    torch.testing.assert_close(weights, torch.tensor([expected]))
    by_mean = talr_token_weights(nll, valid, positions)  # default: τ = 8.25, the mean
    torch.testing.assert_close(by_mean[0, 2], torch.tensor(math.exp(-30 / 8.25)))
    floor = talr_token_weights(nll, valid, positions, min_weight=0.2, tau_statistic="median")
    assert floor[0, 2] == pytest.approx(0.2) and floor[0, 0] == weights[0, 0]
    # τ = 0 (a document predicted perfectly) is guarded: weight 1 at NLL 0, the floor elsewhere
    perfect = talr_token_weights(
        torch.tensor([[0.0, 0.0, 0.0, 0.3]]), valid[:, :4], None, tau_statistic="median"
    )
    torch.testing.assert_close(perfect, torch.tensor([[1.0, 1.0, 1.0, 0.01]]))
    assert torch.isfinite(perfect).all()


def test_per_sequence_median_is_nanquantile() -> None:
    generator = torch.Generator().manual_seed(3)
    values = torch.rand(3, 31, generator=generator) * 5
    valid = torch.rand(3, 31, generator=generator) > 0.2
    positions = torch.tensor(
        [list(range(10)) + list(range(11)) + list(range(10))] * 2 + [list(range(31))]
    )
    sequences = sequence_ids(values.shape, positions, values.device)
    median = per_sequence_statistic(values, valid, sequences)
    mean = per_sequence_statistic(values, valid, sequences, "mean")
    for seq in sequences.unique():
        members = (sequences == seq) & valid
        if not members.any():
            continue
        padded = torch.where(sequences == seq, values, torch.nan)
        padded = torch.where(valid, padded, torch.nan)
        expected = torch.nanquantile(padded.flatten(), 0.5)
        torch.testing.assert_close(median[members], expected.expand(int(members.sum())))
        torch.testing.assert_close(mean[members], values[members].mean().expand_as(mean[members]))
    assert (median[~valid] == 0).all()


def test_parameters_change_after_a_training_step(tmp_path, tiny_tokenizer_dir) -> None:
    module = talr_module(tiny_tokenizer_dir, total_steps=1)
    batch = make_batch(module.model.config.vocab_size, PACKED_ROWS, packed=True)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    cpu_trainer(tmp_path, max_steps=1).fit(module, DataLoader([batch], batch_size=None))
    unchanged = [
        n
        for n, p in module.model.named_parameters()
        if p.requires_grad and torch.equal(p, before[n])
    ]
    assert not unchanged, f"parameters did not change: {unchanged}"
    logged = module.trainer.callback_metrics
    assert {"train/loss", "train/ce", "train/talr_mean_weight"} <= set(logged)
    assert 0.01 <= float(logged["train/talr_mean_weight"]) <= 1.0
    assert float(logged["train/loss"]) < float(logged["train/ce"])


def test_teacher_and_kl_are_config_errors(tiny_tokenizer_dir) -> None:
    with pytest.raises(ConfigError, match="model.init_args.teacher"):
        TALRModule(model_config=TINY_LLAMA, teacher=TeacherSettings(kind="frozen"))
    with pytest.raises(ConfigError, match="model.init_args.teacher"):
        TALRModule(model_config=TINY_LLAMA, teacher={"kind": "frozen"})
    with pytest.raises(ConfigError, match="model.init_args.loss.kl_weight"):
        TALRModule(model_config=TINY_LLAMA, loss=LossSpec(kl_weight=0.1))
    with pytest.raises(ConfigError, match="model.init_args.min_weight"):
        TALRModule(model_config=TINY_LLAMA, min_weight=0.0)
    with pytest.raises(ConfigError, match="model.init_args.tau_statistic"):
        TALRModule(model_config=TINY_LLAMA, tau_statistic="max")  # type: ignore[arg-type]
    module = TALRModule(model_config=TINY_LLAMA, chunk_size=8)
    assert module.loss_spec == LossSpec(chunk_size=8)
