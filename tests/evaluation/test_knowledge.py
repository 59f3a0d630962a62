"""`evaluation.knowledge`: held-out NLL through the fused CE and the KL to a reference model through
the fused distillation loss equal full-logits references."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from evaluation import (
    chunks_kl,
    chunks_nll,
    evaluate_knowledge,
    evaluation_sums,
    heldout_kl,
    heldout_nll,
    metrics_from_sums,
    perplexity_chunks,
    shard,
)
from tests.callbacks.conftest import tiny_llama
from tests.evaluation.conftest import TEXTS


def full_logits_nll(model: torch.nn.Module, chunks: list[list[int]]) -> tuple[float, int]:
    """Summed NLL from the whole `[1, L, V]` logits of each chunk alone, in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            ids = torch.tensor([chunk])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            total -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
            count += len(chunk) - 1
    return total, count


@pytest.mark.parametrize(("max_length", "batch_size"), [(128, 3), (7, 2), (5, 32)])
def test_heldout_nll_equals_full_logits_reference(
    tiny_tokenizer: Any, max_length: int, batch_size: int
) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, max_length)
    nll, tokens = heldout_nll(
        model, tiny_tokenizer, TEXTS, max_length=max_length, batch_size=batch_size
    )
    ref_nll, ref_tokens = full_logits_nll(model, chunks)
    assert tokens == ref_tokens
    assert nll == pytest.approx(ref_nll, rel=1e-5)


def test_nll_never_materializes_full_logits(tiny_tokenizer: Any, monkeypatch) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()

    def no_head(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the LM head's forward (full logits) must not run")

    monkeypatch.setattr(model.lm_head, "forward", no_head)
    nll, tokens = heldout_nll(model, tiny_tokenizer, TEXTS, max_length=16)
    assert tokens > 0 and math.isfinite(nll)


def test_uncounted_chunks_add_nothing(tiny_tokenizer: Any) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, 16)
    counted = [i % 2 == 0 for i in range(len(chunks))]
    got = chunks_nll(model, chunks, batch_size=3, pad_id=0, counted=counted)
    kept = [c for c, use in zip(chunks, counted) if use]
    ref = full_logits_nll(model, kept)
    assert got[1] == ref[1] and got[0] == pytest.approx(ref[0], rel=1e-5)


def test_rank_shards_sum_to_the_whole(tiny_tokenizer: Any) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, 8)
    whole = chunks_nll(model, chunks)
    parts = []
    for rank in range(3):
        indices, counted = shard(len(chunks), rank, 3)
        parts.append(chunks_nll(model, [chunks[i] for i in indices], counted=counted))
    assert sum(n for _, n in parts) == whole[1]
    assert math.fsum(x for x, _ in parts) == pytest.approx(whole[0], rel=1e-5)


def test_metrics_from_sums_names_and_values() -> None:
    sums = {
        ("qa", "domain", "born", "correct"): 1.0,
        ("qa", "domain", "born", "total"): 2.0,
        ("qa", "domain", "job", "correct"): 0.0,
        ("qa", "domain", "job", "total"): 0.0,
        ("ppl", "general", "", "nll"): 10.0,
        ("ppl", "general", "", "tokens"): 5.0,
    }
    metrics, counts = metrics_from_sums(sums)
    assert metrics == {
        "knowledge/qa_em/domain": 0.5,
        "knowledge/qa_em/domain/born": 0.5,
        "knowledge/ppl/general": pytest.approx(math.exp(2.0)),
    }
    assert counts == {"qa/domain": 2, "ppl_tokens/general": 5}


def perturbed_copy(model: torch.nn.Module, scale: float = 0.05, seed: int = 7) -> torch.nn.Module:
    """A deep copy of `model` with Gaussian noise of std `scale` added to every weight."""
    import copy

    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return other


def full_logits_kl(
    initial: torch.nn.Module, current: torch.nn.Module, chunks: list[list[int]]
) -> tuple[float, int]:
    """Σ over predicted tokens of KL(p_initial ‖ p_current) from each chunk's whole logits, float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            ids = torch.tensor([chunk])
            log_p = torch.log_softmax(initial(ids).logits[0, :-1].double(), dim=-1)
            log_q = torch.log_softmax(current(ids).logits[0, :-1].double(), dim=-1)
            total += (log_p.exp() * (log_p - log_q)).sum().item()
            count += len(chunk) - 1
    return total, count


@pytest.mark.parametrize(("max_length", "batch_size"), [(128, 3), (7, 2)])
def test_heldout_kl_equals_full_logits_reference(
    tiny_tokenizer: Any, max_length: int, batch_size: int
) -> None:
    initial = tiny_llama(tiny_tokenizer, seed=1).eval()
    current = perturbed_copy(initial).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, max_length)
    kl, tokens = heldout_kl(
        current, initial, tiny_tokenizer, TEXTS, max_length=max_length, batch_size=batch_size
    )
    ref_kl, ref_tokens = full_logits_kl(initial, current, chunks)
    assert (
        tokens
        == ref_tokens
        == heldout_nll(current, tiny_tokenizer, TEXTS, max_length=max_length)[1]
    )
    assert ref_kl / ref_tokens > 1e-2  # the perturbation is visible: the test is not vacuous
    assert kl == pytest.approx(ref_kl, rel=1e-5)  # fp32 round-off


def test_kl_of_identical_models_is_exactly_zero(tiny_tokenizer: Any) -> None:
    import copy

    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, 16)
    for reference in (model, copy.deepcopy(model)):
        kl, tokens = chunks_kl(model, reference, chunks, batch_size=3)
        assert kl == 0.0 and tokens > 0


def test_kl_accepts_a_teacher_and_adapters_disabled_student(tiny_tokenizer: Any) -> None:
    """A `Teacher` works as reference; a LoRA student against itself with adapters off gives the
    KL of the adapted model to its base, the same as against a plain copy of the base."""
    import copy

    from peft import LoraConfig, get_peft_model

    from lightning_modules.teacher import Teacher

    base = tiny_llama(tiny_tokenizer, seed=1).eval()
    plain = copy.deepcopy(base)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    student = get_peft_model(base, config).eval()
    chunks = perplexity_chunks(tiny_tokenizer, TEXTS, 16)
    via_view = chunks_kl(student, Teacher("adapters_disabled", student), chunks, batch_size=3)
    via_copy = chunks_kl(student, Teacher("frozen", plain), chunks, batch_size=3)
    assert via_view[1] == via_copy[1]
    assert via_view[0] > 0 and via_view[0] == pytest.approx(via_copy[0], rel=1e-6)


def test_kl_never_materializes_full_logits_nor_gradients(tiny_tokenizer: Any, monkeypatch) -> None:
    """No LM-head forward on either model; the fused loop computes no gradient, not even for the
    trainable head (its weight requires grad)."""
    from losses import fused

    initial = tiny_llama(tiny_tokenizer, seed=1).eval()
    current = perturbed_copy(initial).eval()
    assert current.lm_head.weight.requires_grad

    def no_head(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the LM head's forward (full logits) must not run")

    for model in (initial, current):
        monkeypatch.setattr(model.lm_head, "forward", no_head)
    needs = []
    run_chunks = fused._run_chunks

    def spy(*args: Any, **kwargs: Any) -> Any:
        needs.append(kwargs["needs"])
        return run_chunks(*args, **kwargs)

    monkeypatch.setattr(fused, "_run_chunks", spy)
    kl, tokens = heldout_kl(current, initial, tiny_tokenizer, TEXTS, max_length=16)
    assert tokens > 0 and kl > 0
    assert needs and all(not any(n) for n in needs)


def test_evaluation_sums_adds_kl_slots_that_sum_over_shards(tiny_tokenizer: Any) -> None:
    initial = tiny_llama(tiny_tokenizer, seed=1).eval()
    current = perturbed_copy(initial).eval()
    texts = {"general": TEXTS, "short": TEXTS[2:]}
    without = evaluation_sums(current, tiny_tokenizer, {}, texts, max_length=8, batch_size=2)
    assert not any(kind == "kl_initial" for kind, *_ in without)
    parts = [
        evaluation_sums(
            current,
            tiny_tokenizer,
            {},
            texts,
            max_length=8,
            batch_size=2,
            rank=rank,
            world_size=3,
            reference=initial,
        )
        for rank in range(3)
    ]
    summed = {slot: math.fsum(part[slot] for part in parts) for slot in parts[0]}
    for name in texts:
        kl, tokens = heldout_kl(current, initial, tiny_tokenizer, texts[name], max_length=8)
        assert summed["kl_initial", name, "", "tokens"] == tokens
        assert summed["kl_initial", name, "", "kl"] == pytest.approx(kl, rel=1e-5)
        # The perplexity slots are unchanged by the reference (same decoder pass, same CE call).
        assert (
            parts[0]["ppl", name, "", "nll"]
            == evaluation_sums(
                current, tiny_tokenizer, {}, texts, max_length=8, batch_size=2, rank=0, world_size=3
            )["ppl", name, "", "nll"]
        )
    metrics, _ = metrics_from_sums(summed)
    for name in texts:
        kl, tokens = heldout_kl(current, initial, tiny_tokenizer, texts[name], max_length=8)
        assert metrics[f"knowledge/kl_initial/{name}"] == pytest.approx(kl / tokens, rel=1e-5)


def test_evaluate_knowledge_with_reference_restores_train_flags(tiny_tokenizer: Any) -> None:
    initial = tiny_llama(tiny_tokenizer, seed=1).train()
    current = perturbed_copy(initial).train()
    metrics, _ = evaluate_knowledge(
        current, tiny_tokenizer, {}, {"general": TEXTS}, max_length=16, reference=initial
    )
    kl, tokens = heldout_kl(current.eval(), initial.eval(), tiny_tokenizer, TEXTS, max_length=16)
    assert metrics["knowledge/kl_initial/general"] == pytest.approx(kl / tokens, rel=1e-6)


def test_metrics_from_sums_names_the_kl_metric() -> None:
    sums = {
        ("ppl", "general", "", "nll"): 10.0,
        ("ppl", "general", "", "tokens"): 5.0,
        ("kl_initial", "general", "", "kl"): 0.5,
        ("kl_initial", "general", "", "tokens"): 5.0,
    }
    metrics, counts = metrics_from_sums(sums)
    assert metrics["knowledge/kl_initial/general"] == pytest.approx(0.1)
    assert counts == {"ppl_tokens/general": 5}
