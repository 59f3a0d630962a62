"""Knowledge evaluation of any causal LM: greedy exact match on QA sets, held-out perplexity.

Exact match on questions about the new-domain entities measures what continual pre-training taught;
exact match on the general entities and perplexity on held-out general text measure what it cost
(forgetting). Everything here is model-agnostic (a transformers causal LM and its tokenizer); the
training callback (`callbacks.knowledge_eval`) and the command (`python -m experiments evaluate`)
both call `evaluation_sums` and `metrics_from_sums`, so they report the same numbers.

Forgetting is also measured against a reference (the initial model): the mean per-token
KL(p_reference ‖ p_model) over the perplexity windows of held-out text (`chunks_kl`), from both models'
final hidden states through the fused loss (`losses.fused_linear_distillation_loss`), never a full
`[tokens, vocab]` logits tensor.

Metric names: `knowledge/qa_em/<set>`, `knowledge/qa_em/<set>/<attribute>`, `knowledge/ppl/<set>`,
and with a reference `knowledge/kl_initial/<set>` (nats per predicted token).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from common import IGNORE_INDEX
from common.errors import DataError
from common.jsonl import read_jsonl
from common.text import normalize_answer
from lightning_modules.modeling import decoder_hidden_states, output_head
from losses import LossSpec, fused_linear_cross_entropy, fused_linear_distillation_loss

log = logging.getLogger(__name__)

QA_FIELDS = ("prompt", "answer", "entity", "attribute")

Slot = tuple[str, str, str, str]
"""A summed quantity: `(kind, set name, attribute or "", field)`, e.g. `("qa", "domain", "born", "correct")`."""


KL_SPEC = LossSpec(ce_weight=0.0, kl_weight=1.0, divergence="forward_kl")
"""KL(p_reference ‖ p_model) per token at temperature 1, no cross-entropy (`chunks_kl`)."""


@runtime_checkable
class HiddenStatesModel(Protocol):
    """A frozen model seen through its final hidden states and LM head, like
    `lightning_modules.teacher.Teacher` (whose `adapters_disabled` kind is the LoRA student itself
    with its adapters switched off)."""

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def head(self) -> tuple[torch.Tensor, torch.Tensor | None]: ...


Reference = nn.Module | HiddenStatesModel
"""The model a KL is measured against: a causal LM, or a `Teacher`-like hidden-states/head pair."""


@dataclass(frozen=True)
class QARecord:
    """One question: the model continues `prompt`; the continuation must equal `answer`."""

    prompt: str
    answer: str
    entity: str
    attribute: str


def load_qa_records(path: str | Path) -> list[QARecord]:
    """Read a QA JSONL file of `{"prompt", "answer", "entity", "attribute"}` string records."""
    records = []
    for number, record in read_jsonl(path):
        for field in QA_FIELDS:
            if field not in record:
                raise DataError(
                    path,
                    f"missing field '{field}' (QA records need {list(QA_FIELDS)})",
                    line=number,
                )
            if not isinstance(record[field], str):
                kind = type(record[field]).__name__
                raise DataError(path, f"field '{field}' must be a string, got {kind}", line=number)
        if not record["prompt"] or not normalize_answer(record["answer"]):
            raise DataError(path, "fields 'prompt' and 'answer' must not be empty", line=number)
        records.append(QARecord(*(record[field] for field in QA_FIELDS)))
    return records


def load_texts(path: str | Path) -> list[str]:
    """Read a JSONL file of `{"text"}` records; empty texts are skipped and counted in the log."""
    texts, skipped = [], 0
    for number, record in read_jsonl(path):
        if "text" not in record:
            raise DataError(path, "missing field 'text'", line=number)
        if not isinstance(record["text"], str):
            raise DataError(
                path,
                f"field 'text' must be a string, got {type(record['text']).__name__}",
                line=number,
            )
        if record["text"].strip():
            texts.append(record["text"])
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d empty text record(s)", path, skipped)
    if not texts:
        raise DataError(path, "no non-empty text records")
    return texts


def subsample(records: Sequence[QARecord], limit: int | None, seed: int = 0) -> list[QARecord]:
    """At most `limit` records: a fixed random subset (in file order), or all of them."""
    if limit is None or len(records) <= limit:
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """`(eos_id, pad_id)`; padding falls back to EOS (padded positions are masked anyway)."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            "the tokenizer has no eos_token; knowledge evaluation stops generation and ends "
            "documents at EOS"
        )
    pad_id = tokenizer.pad_token_id
    return eos_id, eos_id if pad_id is None else pad_id


def model_max_length(model: nn.Module) -> int | None:
    """The model's context (`config.max_position_embeddings`), or None when it has none."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first) so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _device_of(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of `prompts`, decoded without the prompt, cut at the first EOS.

    Prompts are batched by length and left-padded (real tokens right before the continuation);
    `generate` derives position ids from the attention mask, so a padded prompt gets the same
    continuation as the prompt alone.
    """
    from transformers import GenerationConfig

    eos_id, pad_id = special_ids(tokenizer)
    device = _device_of(model)
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    outputs: list[str] = [""] * len(prompts)
    for batch in _batches_by_length([len(ids) for ids in encoded], batch_size):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = encoded[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
        )
        for row, index in enumerate(batch):
            continuation = generated[row, width:].tolist()
            if eos_id in continuation:
                continuation = continuation[: continuation.index(eos_id)]
            outputs[index] = tokenizer.decode(continuation, skip_special_tokens=True)
    return outputs


def perplexity_chunks(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with EOS appended, cut into windows of at most `max_length` tokens.

    Consecutive windows overlap by one token, so every token after a document's first is predicted
    exactly once: a document of `n` tokens (EOS included) has `n - 1` targets however it is cut.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 to predict anything, got {max_length}")
    eos_id, _ = special_ids(tokenizer)
    chunks = []
    for text in texts:
        ids = [*tokenizer(text)["input_ids"], eos_id]
        start = 0
        while True:
            chunks.append(ids[start : start + max_length])
            if start + max_length >= len(ids):
                break
            start += max_length - 1
    return [chunk for chunk in chunks if len(chunk) >= 2]


def _hidden_and_head(
    model: Reference, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Final hidden states `[B, L, H]` and the LM head of a model or a `Teacher` (called under
    `no_grad`, where the fused losses do no gradient work)."""
    if isinstance(model, nn.Module):
        hidden = decoder_hidden_states(model, input_ids, attention_mask=attention_mask)
        weight, bias = output_head(model)
    else:
        hidden = model.hidden_states(input_ids, attention_mask=attention_mask)
        weight, bias = model.head()
    return hidden, weight, bias


@torch.no_grad()
def _score_chunks(
    model: nn.Module,
    chunks: Sequence[Sequence[int]],
    *,
    batch_size: int,
    pad_id: int,
    counted: Sequence[bool] | None,
    nll: bool,
    reference: Reference | None,
) -> tuple[float, float, int]:
    """`(summed NLL, summed KL(reference ‖ model), predicted tokens)` over the counted chunks.

    One decoder pass of `model` (and of `reference`) per right-padded batch; the NLL (when `nll`)
    and the KL (when a reference is given, else 0) are both computed from those hidden states.
    """
    device = _device_of(model)
    flags = list(counted) if counted is not None else [True] * len(chunks)
    nll_parts, kl_parts, tokens = [], [], 0
    for batch in _batches_by_length([len(chunk) for chunk in chunks], batch_size):
        width = max(len(chunks[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for row, index in enumerate(batch):
            ids = torch.tensor(chunks[index])
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            if flags[index]:
                labels[row, : len(ids)] = ids
                tokens += len(ids) - 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        targets = labels[:, 1:].to(device)
        hidden, weight, bias = _hidden_and_head(model, input_ids, attention_mask)
        if nll:
            nll_parts.append(
                float(
                    fused_linear_cross_entropy(
                        hidden[:, :-1], weight, targets, bias, reduction="sum"
                    )
                )
            )
        if reference is not None:
            ref_hidden, ref_weight, ref_bias = _hidden_and_head(
                reference, input_ids, attention_mask
            )
            kl = fused_linear_distillation_loss(
                hidden[:, :-1],
                weight,
                targets,
                spec=KL_SPEC,
                student_bias=bias,
                teacher_hidden=ref_hidden[:, :-1],
                teacher_weight=ref_weight,
                teacher_bias=ref_bias,
                reduction="sum",
            )
            kl_parts.append(float(kl))
    return math.fsum(nll_parts), math.fsum(kl_parts), tokens


def chunks_nll(
    model: nn.Module,
    chunks: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    pad_id: int = 0,
    counted: Sequence[bool] | None = None,
) -> tuple[float, int]:
    """`(summed NLL in nats, predicted tokens)` over the `chunks` flagged in `counted` (default all).

    Right-padded batches go through the decoder to final hidden states and the fused linear
    cross-entropy (`losses.fused_linear_cross_entropy`), never a full `[B, L, V]` logits tensor.
    Uncounted chunks (shard padding) run like the others, with every label ignored.
    """
    total, _, tokens = _score_chunks(
        model,
        chunks,
        batch_size=batch_size,
        pad_id=pad_id,
        counted=counted,
        nll=True,
        reference=None,
    )
    return total, tokens


def chunks_kl(
    model: nn.Module,
    reference: Reference,
    chunks: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    pad_id: int = 0,
    counted: Sequence[bool] | None = None,
) -> tuple[float, int]:
    """`(Σ KL(p_reference ‖ p_model) in nats, predicted tokens)` over the counted `chunks`.

    The sum runs over the same predicted tokens as `chunks_nll` (every position of a window but the
    last, padding excluded), each term the KL of the two next-token distributions at temperature 1;
    `Σ / tokens` is the mean per-token KL, the forgetting measure of DiSC. `reference` is the initial
    model (a causal LM, or a `Teacher`-like object with `hidden_states(...)` and `head()`, such as a
    LoRA student with its adapters disabled). Both models run to their final hidden states and
    `losses.fused_linear_distillation_loss` (forward KL, `reduction="sum"`) applies the two heads
    chunk by chunk: no `[tokens, vocab]` logits tensor is materialized, and no gradient is computed.
    Exactly 0 when both models produce identical hidden states and heads. The caller provides eval
    mode for both (a `Teacher` sets its own) and autocast.
    """
    _, total, tokens = _score_chunks(
        model,
        chunks,
        batch_size=batch_size,
        pad_id=pad_id,
        counted=counted,
        nll=False,
        reference=reference,
    )
    return total, tokens


def heldout_nll(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 32
) -> tuple[float, int]:
    """Token-weighted held-out loss of `texts`: `(total NLL, total predicted tokens)`; perplexity is
    `exp(total NLL / total tokens)`."""
    _, pad_id = special_ids(tokenizer)
    chunks = perplexity_chunks(tokenizer, texts, max_length)
    return chunks_nll(model, chunks, batch_size=batch_size, pad_id=pad_id)


def heldout_kl(
    model: nn.Module,
    reference: Reference,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 32,
) -> tuple[float, int]:
    """`(Σ KL(p_reference ‖ p_model), predicted tokens)` over the perplexity windows of `texts`
    (`perplexity_chunks`); the mean per-token KL is their ratio."""
    _, pad_id = special_ids(tokenizer)
    chunks = perplexity_chunks(tokenizer, texts, max_length)
    return chunks_kl(model, reference, chunks, batch_size=batch_size, pad_id=pad_id)


def shard(n_items: int, rank: int, world_size: int) -> tuple[list[int], list[bool]]:
    """Rank `rank`'s indices (`rank::world_size`) and whether each counts.

    Shards are padded with index 0 (flagged `False`, not counted) so that every rank runs the same
    number of batches (generation and forward passes stay in step across ranks).
    """
    indices = list(range(rank, n_items, world_size))
    counted = [True] * len(indices)
    per_rank = math.ceil(n_items / world_size)
    indices += [0] * (per_rank - len(indices))
    counted += [False] * (per_rank - len(counted))
    return indices, counted


def cut_at(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the first occurrence of any of `stop_strings` (the answer a model gave
    before going on, e.g. a newline after `Answer: ...`); unchanged without one."""
    cut = len(text)
    for stop in stop_strings:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


def evaluation_sums(
    model: nn.Module,
    tokenizer: Any,
    qa_sets: Mapping[str, Sequence[QARecord]],
    text_sets: Mapping[str, Sequence[str]],
    *,
    max_length: int,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    reference: Reference | None = None,
    stop_strings: Sequence[str] = (),
) -> dict[Slot, float]:
    """This rank's shard of every set, as summed quantities (add them over ranks, then score).

    QA: `correct` and `total` per attribute (exact match after `common.text.normalize_answer` of
    the continuation cut at EOS and at the first of `stop_strings`, see `cut_at`);
    text: `nll` and `tokens` (slots `("ppl", set, "", ·)`) and, with a `reference` (the initial
    model, see `chunks_kl`), `kl` and `tokens` (slots `("kl_initial", set, "", ·)`) over the same
    windows, from the same decoder pass of `model`. The caller provides eval mode, `no_grad` and
    autocast.
    """
    sums: dict[Slot, float] = {}
    for name, records in qa_sets.items():
        indices, counted = shard(len(records), rank, world_size)
        predictions = greedy_generate(
            model,
            tokenizer,
            [records[i].prompt for i in indices],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        for attribute in sorted({r.attribute for r in records}):
            sums["qa", name, attribute, "correct"] = 0.0
            sums["qa", name, attribute, "total"] = 0.0
        for index, use, prediction in zip(indices, counted, predictions):
            if use:
                record = records[index]
                sums["qa", name, record.attribute, "total"] += 1
                answer = cut_at(prediction, stop_strings)
                sums["qa", name, record.attribute, "correct"] += float(
                    normalize_answer(answer) == normalize_answer(record.answer)
                )
    _, pad_id = special_ids(tokenizer)
    for name, texts in text_sets.items():
        chunks = perplexity_chunks(tokenizer, texts, max_length)
        indices, counted = shard(len(chunks), rank, world_size)
        nll, kl, tokens = _score_chunks(
            model,
            [chunks[i] for i in indices],
            batch_size=batch_size,
            pad_id=pad_id,
            counted=counted,
            nll=True,
            reference=reference,
        )
        sums["ppl", name, "", "nll"] = nll
        sums["ppl", name, "", "tokens"] = float(tokens)
        if reference is not None:
            sums["kl_initial", name, "", "kl"] = kl
            sums["kl_initial", name, "", "tokens"] = float(tokens)
    return sums


def metrics_from_sums(sums: Mapping[Slot, float]) -> tuple[dict[str, float], dict[str, int]]:
    """Metrics and counts from the (rank-summed) slots of `evaluation_sums`."""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    qa_sets = list(dict.fromkeys(name for kind, name, _, _ in sums if kind == "qa"))
    for name in qa_sets:
        attributes = [
            a for kind, n, a, field in sums if kind == "qa" and n == name and field == "total"
        ]
        correct = sum(sums["qa", name, a, "correct"] for a in attributes)
        total = sum(sums["qa", name, a, "total"] for a in attributes)
        metrics[f"knowledge/qa_em/{name}"] = correct / total if total else float("nan")
        counts[f"qa/{name}"] = int(total)
        for a in attributes:
            if sums["qa", name, a, "total"]:
                metrics[f"knowledge/qa_em/{name}/{a}"] = (
                    sums["qa", name, a, "correct"] / sums["qa", name, a, "total"]
                )
    for kind, name, _, field in sums:
        if kind == "ppl" and field == "tokens":
            tokens = sums["ppl", name, "", "tokens"]
            nll = sums["ppl", name, "", "nll"]
            metrics[f"knowledge/ppl/{name}"] = math.exp(nll / tokens) if tokens else float("nan")
            counts[f"ppl_tokens/{name}"] = int(tokens)
    for kind, name, _, field in sums:
        if kind == "kl_initial" and field == "tokens":
            tokens = sums["kl_initial", name, "", "tokens"]
            kl = sums["kl_initial", name, "", "kl"]
            metrics[f"knowledge/kl_initial/{name}"] = kl / tokens if tokens else float("nan")
    return metrics, counts


def evaluate_knowledge(
    model: nn.Module,
    tokenizer: Any,
    qa_sets: Mapping[str, Sequence[QARecord]],
    text_sets: Mapping[str, Sequence[str]],
    *,
    max_length: int | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    reference: Reference | None = None,
    stop_strings: Sequence[str] = (),
) -> tuple[dict[str, float], dict[str, int]]:
    """Evaluate every set in one process: `(metrics, counts)` as the callback logs them.

    Runs in eval mode under `torch.no_grad()` (every submodule's train flag is restored, the
    reference's too). `max_length` defaults to the model's `max_position_embeddings`. With a
    `reference` (the initial model) every text set also gets `knowledge/kl_initial/<set>`.
    """
    max_length = max_length or model_max_length(model)
    if max_length is None:
        raise ValueError("the model config has no max_position_embeddings; pass max_length")
    modules = [model, reference] if isinstance(reference, nn.Module) else [model]
    flags = {module: module.training for root in modules for module in root.modules()}
    for root in modules:
        root.eval()
    try:
        with torch.no_grad():
            sums = evaluation_sums(
                model,
                tokenizer,
                qa_sets,
                text_sets,
                max_length=max_length,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                reference=reference,
                stop_strings=stop_strings,
            )
    finally:
        for module, training in flags.items():
            module.training = training
    return metrics_from_sums(sums)


__all__ = [
    "KL_SPEC",
    "QA_FIELDS",
    "HiddenStatesModel",
    "QARecord",
    "Reference",
    "Slot",
    "chunks_kl",
    "chunks_nll",
    "cut_at",
    "evaluate_knowledge",
    "evaluation_sums",
    "greedy_generate",
    "heldout_kl",
    "heldout_nll",
    "load_qa_records",
    "load_texts",
    "metrics_from_sums",
    "model_max_length",
    "perplexity_chunks",
    "shard",
    "special_ids",
    "subsample",
]
