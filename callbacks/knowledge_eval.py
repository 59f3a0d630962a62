"""Knowledge evaluation: greedy exact match on QA sets and held-out perplexity on text sets.

Exact match on questions about the new-domain entities measures what continual pre-training taught;
exact match on the general entities and perplexity on held-out general text measure what it cost
(forgetting). The module-level functions work on any causal LM and tokenizer; the callback runs them
before, during and after `fit`, sharded over ranks, and logs `knowledge/qa_em/<set>`,
`knowledge/qa_em/<set>/<attribute>` and `knowledge/ppl/<set>`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from callbacks._common import eval_mode, get_model, get_tokenizer, run_dir, strategy_kind
from common.errors import ConfigError, DataError

log = logging.getLogger(__name__)

QA_FIELDS = ("prompt", "answer", "entity", "attribute")


@dataclass(frozen=True)
class QARecord:
    """One question: the model continues `prompt`; the continuation must equal `answer`."""

    prompt: str
    answer: str
    entity: str
    attribute: str


def _read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, record)` for every non-blank line; a clear `DataError` on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    path, f"not valid UTF-8 ({err.reason} at byte {err.start})", line=number
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    path, f"invalid JSON: {err.msg} at column {err.colno}", line=number
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    path, f"expected a JSON object, got {type(record).__name__}", line=number
                )
            yield number, record


def load_qa_records(path: str | Path) -> list[QARecord]:
    """Read a QA JSONL file of `{"prompt", "answer", "entity", "attribute"}` string records."""
    records = []
    for number, record in _read_jsonl(path):
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
    if not records:
        raise DataError(path, "no QA records (the file is empty)")
    return records


def load_texts(path: str | Path) -> list[str]:
    """Read a JSONL file of `{"text"}` records; empty texts are skipped and counted in the log."""
    texts, skipped = [], 0
    for number, record in _read_jsonl(path):
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


def normalize_answer(text: str) -> str:
    """Strip, collapse whitespace runs and casefold: formatting never decides a match."""
    return " ".join(text.split()).casefold()


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    """`(eos_id, pad_id)`; padding falls back to EOS (padded positions are masked anyway)."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            "the tokenizer has no eos_token; knowledge evaluation stops generation and ends "
            "documents at EOS"
        )
    pad_id = tokenizer.pad_token_id
    return eos_id, eos_id if pad_id is None else pad_id


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

    eos_id, pad_id = _special_ids(tokenizer)
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
    eos_id, _ = _special_ids(tokenizer)
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


@torch.no_grad()
def chunk_nll(
    model: nn.Module, chunks: Sequence[Sequence[int]], *, batch_size: int = 32, pad_id: int = 0
) -> list[tuple[float, int]]:
    """`(summed NLL in nats, predicted tokens)` of every chunk, in right-padded batches."""
    device = _device_of(model)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(chunks)
    for batch in _batches_by_length([len(chunk) for chunk in chunks], batch_size):
        width = max(len(chunks[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            input_ids[row, : len(chunks[index])] = torch.tensor(chunks[index])
            attention_mask[row, : len(chunks[index])] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        for row, index in enumerate(batch):
            n = len(chunks[index])
            # One row at a time so only one row's logits are ever upcast to float32.
            nll = F.cross_entropy(
                logits[row, : n - 1].float(), input_ids[row, 1:n], reduction="sum"
            )
            results[index] = (nll.item(), n - 1)
    return results


def heldout_nll(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 32
) -> tuple[float, int]:
    """Token-weighted held-out loss of `texts`: `(total NLL, total predicted tokens)`; perplexity is
    `exp(total NLL / total tokens)`."""
    _, pad_id = _special_ids(tokenizer)
    per_chunk = chunk_nll(
        model, perplexity_chunks(tokenizer, texts, max_length), batch_size=batch_size, pad_id=pad_id
    )
    return math.fsum(nll for nll, _ in per_chunk), sum(n for _, n in per_chunk)


def _shard(n_items: int, rank: int, world_size: int) -> tuple[list[int], list[bool]]:
    """Rank `rank`'s indices (`rank::world_size`) and whether each counts.

    Shards are padded with index 0 (flagged `False`, not counted) so that every rank runs the same
    number of batches.
    """
    indices = list(range(rank, n_items, world_size))
    counted = [True] * len(indices)
    per_rank = math.ceil(n_items / world_size)
    indices += [0] * (per_rank - len(indices))
    counted += [False] * (per_rank - len(counted))
    return indices, counted


def _metrics_from_sums(
    sums: Mapping[tuple[str, str, str, str], float],
) -> tuple[dict[str, float], dict[str, int]]:
    """Metrics and counts from the rank-summed `(kind, set, attribute, field)` slots."""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    qa_sets = list(dict.fromkeys(name for kind, name, _, _ in sums if kind == "qa"))
    for name in qa_sets:
        attributes = [
            a for kind, n, a, field in sums if kind == "qa" and n == name and field == "total"
        ]
        correct = sum(sums["qa", name, a, "correct"] for a in attributes)
        total = sum(sums["qa", name, a, "total"] for a in attributes)
        metrics[f"knowledge/qa_em/{name}"] = correct / total
        counts[f"qa/{name}"] = int(total)
        for a in attributes:
            if sums["qa", name, a, "total"]:
                metrics[f"knowledge/qa_em/{name}/{a}"] = (
                    sums["qa", name, a, "correct"] / sums["qa", name, a, "total"]
                )
    for kind, name, _, field in sums:
        if kind == "ppl" and field == "tokens":
            tokens = sums["ppl", name, "", "tokens"]
            metrics[f"knowledge/ppl/{name}"] = math.exp(sums["ppl", name, "", "nll"] / tokens)
            counts[f"ppl_tokens/{name}"] = int(tokens)
    return metrics, counts


class KnowledgeEvalCallback(Callback):
    """Greedy exact match on QA sets and held-out perplexity on text sets, before/during/after fit.

    Exact match: the prompt is continued greedily (at most `max_new_tokens`, stopping at EOS) and
    the continuation, stripped, case-folded and with whitespace collapsed, must equal the normalized
    answer; logged as `knowledge/qa_em/<set>` and per attribute as
    `knowledge/qa_em/<set>/<attribute>`. Perplexity: `exp(total NLL / total tokens)` over each set,
    EOS appended to every document, logged as `knowledge/ppl/<set>`. Each rank evaluates a disjoint
    shard and the counts are summed over ranks. Every evaluation is appended as one JSON line
    (`stage`, `step`, `epoch`, `metrics`, `counts`) to `results_file` and kept in `.history`.
    Evaluations run in eval mode without gradients; every submodule's train/eval flag is restored
    afterwards. Models sharded by FSDP or DeepSpeed ZeRO-3 are not supported (evaluate the model
    exported by `ExportCallback` instead).

    Args:
        qa_sets: QA sets as `{name: path}` of JSONL files of
            `{"prompt", "answer", "entity", "attribute"}` records. None takes them from the
            datamodule's `evaluation_sets()["qa"]`; `{}` disables exact match.
        perplexity_sets: text sets as `{name: path}` of JSONL files of `{"text"}` records. None
            takes them from the datamodule's `evaluation_sets()["perplexity"]`; `{}` disables
            perplexity.
        max_qa_samples: evaluate at most this many questions per QA set (a fixed random subset,
            seed 0); None evaluates them all.
        max_new_tokens: the most tokens generated per answer.
        batch_size: prompts (generation) or documents (perplexity) per forward batch on each rank.
        every_n_epochs: during fit, evaluate at the end of validation in every n-th epoch; 0
            never does. `trainer.validate` and `trainer.test` always evaluate.
        on_fit_start: evaluate before the first training step (the "before" row); skipped when
            resuming from a checkpoint.
        on_fit_end: evaluate when training ends (the "after" row).
        results_file: JSON-lines file of all evaluations; a relative path is placed in the run's
            directory, beside `checkpoints/` (the CSV logger's `log_dir`).
        max_length: longest window in tokens for perplexity (longer documents are scored in
            windows); None uses the model's `max_position_embeddings`.
    """

    def __init__(
        self,
        qa_sets: dict[str, str] | None = None,
        perplexity_sets: dict[str, str] | None = None,
        max_qa_samples: int | None = None,
        max_new_tokens: int = 16,
        batch_size: int = 32,
        every_n_epochs: int = 1,
        on_fit_start: bool = True,
        on_fit_end: bool = True,
        results_file: str = "knowledge_eval.jsonl",
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        for key, value, minimum in (
            ("max_new_tokens", max_new_tokens, 1),
            ("batch_size", batch_size, 1),
            ("every_n_epochs", every_n_epochs, 0),
            ("max_qa_samples", max_qa_samples, 1),
            ("max_length", max_length, 2),
        ):
            if value is not None and value < minimum:
                raise ConfigError(
                    f"KnowledgeEvalCallback.{key}", f"must be at least {minimum}, got {value}"
                )
        self.qa_sets = dict(qa_sets) if qa_sets is not None else None
        self.perplexity_sets = dict(perplexity_sets) if perplexity_sets is not None else None
        self.max_qa_samples = max_qa_samples
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.eval_on_fit_start = on_fit_start
        self.eval_on_fit_end = on_fit_end
        self.results_file = results_file
        self.max_length = max_length
        self.history: list[dict[str, Any]] = []
        self.results_path: Path | None = None
        self._qa: dict[str, list[QARecord]] | None = None
        self._texts: dict[str, list[str]] | None = None

    def _resolve_sets(self, trainer: pl.Trainer) -> tuple[dict[str, str], dict[str, str]]:
        """The configured sets; those left None come from the datamodule's `evaluation_sets()`."""
        qa, ppl = self.qa_sets, self.perplexity_sets
        if qa is None or ppl is None:
            datamodule = getattr(trainer, "datamodule", None)
            provider = getattr(datamodule, "evaluation_sets", None)
            if provider is None:
                missing = [k for k, v in (("qa_sets", qa), ("perplexity_sets", ppl)) if v is None]
                raise ConfigError(
                    f"KnowledgeEvalCallback.{missing[0]}",
                    f"not given and the datamodule ({type(datamodule).__name__}) has no "
                    "evaluation_sets(); pass {name: path.jsonl} mappings (or {} to disable that "
                    "kind of evaluation)",
                )
            provided = provider()
            qa = dict(provided.get("qa", {})) if qa is None else qa
            ppl = dict(provided.get("perplexity", {})) if ppl is None else ppl
        if not qa and not ppl:
            raise ConfigError(
                "KnowledgeEvalCallback.qa_sets", "no QA and no perplexity sets: nothing to evaluate"
            )
        return qa, ppl

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Read and validate every set up front: a bad file fails before training, not after it."""
        kind = strategy_kind(trainer.strategy)
        if kind in ("fsdp", "model_parallel", "deepspeed_zero3"):
            raise ConfigError(
                "trainer.strategy",
                "KnowledgeEvalCallback does not support sharded models "
                f"({type(trainer.strategy).__name__}); use DDP or a single device, or evaluate "
                "the model exported by ExportCallback",
            )
        if self._qa is None:
            qa_paths, text_paths = self._resolve_sets(trainer)
            self._qa = {
                name: self._subsample(load_qa_records(path)) for name, path in qa_paths.items()
            }
            self._texts = {name: load_texts(path) for name, path in text_paths.items()}
        if self.results_path is None:
            path = Path(self.results_file)
            self.results_path = path if path.is_absolute() else run_dir(trainer) / path

    def _subsample(self, records: list[QARecord]) -> list[QARecord]:
        if self.max_qa_samples is None or len(records) <= self.max_qa_samples:
            return records
        keep = sorted(random.Random(0).sample(range(len(records)), self.max_qa_samples))
        return [records[i] for i in keep]

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[dict[str, float], dict[str, int]]:
        """Evaluate every set on this rank's shard and sum over ranks; returns `(metrics, counts)`.

        Every rank must call it (the sums are collectives). Runs in eval mode under
        `torch.no_grad()` and the precision plugin's autocast; train/eval flags are restored.
        """
        if self._qa is None or self._texts is None:
            raise RuntimeError("KnowledgeEvalCallback.evaluate called before setup")
        model = get_model(pl_module)
        tokenizer = get_tokenizer(trainer, pl_module)
        rank, world = trainer.global_rank, trainer.world_size
        limit = self.batch_size if trainer.fast_dev_run else None
        max_length = self.max_length or getattr(
            getattr(model, "config", None), "max_position_embeddings", None
        )
        if max_length is None:
            raise ConfigError(
                "KnowledgeEvalCallback.max_length",
                "the model config has no max_position_embeddings; set it",
            )

        # One slot per summed quantity: (kind, set name, attribute or "", field).
        slots: list[tuple[str, str, str, str]] = []
        local: list[float] = []
        with eval_mode(model), torch.no_grad(), trainer.precision_plugin.forward_context():
            for name, records in self._qa.items():
                records = records[:limit] if limit else records
                indices, counted = _shard(len(records), rank, world)
                predictions = greedy_generate(
                    model,
                    tokenizer,
                    [records[i].prompt for i in indices],
                    max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size,
                )
                attributes = sorted({r.attribute for r in records})
                correct = dict.fromkeys(attributes, 0)
                total = dict.fromkeys(attributes, 0)
                for index, use, prediction in zip(indices, counted, predictions):
                    if use:
                        record = records[index]
                        total[record.attribute] += 1
                        correct[record.attribute] += normalize_answer(
                            prediction
                        ) == normalize_answer(record.answer)
                for attribute in attributes:
                    slots += [("qa", name, attribute, "correct"), ("qa", name, attribute, "total")]
                    local += [correct[attribute], total[attribute]]
            _, pad_id = _special_ids(tokenizer)
            for name, texts in self._texts.items():
                chunks = perplexity_chunks(tokenizer, texts[:limit] if limit else texts, max_length)
                indices, counted = _shard(len(chunks), rank, world)
                per_chunk = chunk_nll(
                    model, [chunks[i] for i in indices], batch_size=self.batch_size, pad_id=pad_id
                )
                slots += [("ppl", name, "", "nll"), ("ppl", name, "", "tokens")]
                local += [
                    math.fsum(nll for (nll, _), use in zip(per_chunk, counted) if use),
                    sum(n for (_, n), use in zip(per_chunk, counted) if use),
                ]

        sums = torch.tensor(local, dtype=torch.float64, device=pl_module.device)
        if world > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return _metrics_from_sums(dict(zip(slots, sums.tolist())))

    def _run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, via_module_log: bool
    ) -> None:
        metrics, counts = self.evaluate(trainer, pl_module)
        self._record(trainer, pl_module, stage, metrics, counts, via_module_log)

    def _record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        metrics: dict[str, float],
        counts: dict[str, int],
        via_module_log: bool,
    ) -> None:
        """Keep, log and (on global rank 0) append one evaluation to the results file."""
        entry = {
            "stage": stage,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": metrics,
            "counts": counts,
        }
        self.history.append(entry)
        if via_module_log:
            for key, value in metrics.items():
                pl_module.log(key, value, sync_dist=True)
        else:
            # `self.log` is not allowed in on_fit_start / on_train_end: use the loggers directly.
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
        if trainer.is_global_zero and self.results_path is not None:
            self.results_path.parent.mkdir(parents=True, exist_ok=True)
            with self.results_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        summary = ", ".join(
            f"{k.removeprefix('knowledge/')}={v:.4g}"
            for k, v in metrics.items()
            if k.count("/") == 2
        )
        log.info("knowledge eval (%s, step %d): %s", stage, trainer.global_step, summary)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The "before" evaluation (not repeated when resuming from a checkpoint)."""
        if self.eval_on_fit_start and trainer.ckpt_path is None:
            self._run(trainer, pl_module, "fit_start", via_module_log=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate after validation: every `every_n_epochs` epochs in fit, always in `validate`."""
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING and (
            self.every_n_epochs == 0 or (trainer.current_epoch + 1) % self.every_n_epochs != 0
        ):
            return
        self._run(trainer, pl_module, "validation", via_module_log=True)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate under `trainer.test`."""
        self._run(trainer, pl_module, "test", via_module_log=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The "after" evaluation.

        In `on_train_end`, while the model is still on its device: Lightning moves it to the CPU
        before `on_fit_end`.
        """
        if not self.eval_on_fit_end:
            return
        last = self.history[-1] if self.history else None
        if (
            last is not None
            and last["stage"] == "validation"
            and last["step"] == trainer.global_step
        ):
            # Validation just evaluated these very weights: record its figures, do not recompute.
            self._record(
                trainer, pl_module, "fit_end", dict(last["metrics"]), dict(last["counts"]), False
            )
        else:
            self._run(trainer, pl_module, "fit_end", via_module_log=False)

    def state_dict(self) -> dict[str, Any]:
        """The history travels with checkpoints, so a resumed run keeps its "before" row."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
