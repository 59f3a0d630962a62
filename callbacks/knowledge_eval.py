"""Knowledge evaluation during training: the callback over `evaluation.knowledge`.

Exact match on questions about the new-domain entities measures what continual pre-training taught;
exact match on the general entities and perplexity on held-out general text measure what it cost
(forgetting). The model-agnostic functions live in `evaluation.knowledge` (also behind `python -m
experiments evaluate`); the callback runs them before, during and after `fit`, sharded over ranks,
and logs `knowledge/qa_em/<set>`, `knowledge/qa_em/<set>/<attribute>` and `knowledge/ppl/<set>`;
with `initial_kl`, also `knowledge/kl_initial/<set>`, the mean per-token KL(initial ‖ current) on
each perplexity set.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from callbacks._common import eval_mode, get_model, get_tokenizer, run_dir, strategy_kind
from common.atomic import atomic_file
from common.errors import ConfigError
from evaluation.knowledge import (
    QARecord,
    Reference,
    evaluation_sums,
    load_qa_records,
    load_texts,
    metrics_from_sums,
    model_max_length,
    subsample,
)
from lightning_modules.modeling import unwrap
from lightning_modules.teacher import Teacher

log = logging.getLogger(__name__)

INITIAL_CACHE_VERSION = 1
"""Bumped when the figures of an evaluation change meaning: older `initial_cache_dir` entries miss."""

ReferenceSource = Literal["teacher", "adapters_disabled", "copy"]
"""How `initial_kl`'s initial model was obtained (the cases (1)-(3) of `KnowledgeEvalCallback`)."""


class KnowledgeEvalCallback(Callback):
    """Greedy exact match on QA sets and held-out perplexity on text sets, before/during/after fit.

    Exact match: the prompt is continued greedily (at most `max_new_tokens`, stopping at EOS) and
    the continuation must equal the answer after `common.text.normalize_answer` (whitespace
    collapsed, case-folded, trailing periods dropped); logged as `knowledge/qa_em/<set>` and per attribute as
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
        every_n_train_steps: during fit, also evaluate after every n-th optimizer step (stage
            `train_step`), whether or not validation runs; 0 never does. The checkpoints a
            selection rule chooses from (`evaluation.selection`).
        on_fit_start: evaluate before the first training step (the "before" row); skipped when
            resuming from a checkpoint.
        on_fit_end: evaluate when training ends (the "after" row).
        results_file: JSON-lines file of all evaluations; a relative path is placed in the run's
            directory, beside `checkpoints/` (the CSV logger's `log_dir`).
        max_length: longest window in tokens for perplexity (longer documents are scored in
            windows); None uses the model's `max_position_embeddings`.
        initial_kl: also measure forgetting as the mean per-token KL(p_initial ‖ p_current) over
            the perplexity windows of every perplexity set (`evaluation.knowledge.chunks_kl`),
            logged as `knowledge/kl_initial/<set>` (nats per token; exactly 0 at `fit_start`). The
            initial model is fixed at `on_fit_start`, before any training step, and held during
            `fit` only (`trainer.validate` / `trainer.test` outside a fit log no KL). It is, in this
            order: (1) the module's frozen teacher (`pl_module.teacher`) when that teacher is the
            initial student — kind `adapters_disabled`, or kind `frozen` copied from the student
            (no `model_name_or_path`, same dtype); no extra memory, and valid on resume since the
            module rebuilds it from its source; (2) a LoRA (peft) student whose adapters are all
            zero (`lora_B = 0`, as peft initializes them) and whose base weights are frozen: the
            student itself with its adapters disabled, no extra memory; (3) otherwise a deep copy
            of the model taken at `on_fit_start` — **a second copy of the model's weights on its
            device** — in eval mode, without gradients, and held by this callback, not registered
            in the LightningModule (never in its `state_dict`, a checkpoint or the optimizer).
            Resuming from a checkpoint: (1) is used again, (2) again when the checkpointed
            callback state says (2) was used; a run that needed the copy (3) raises a
            `ConfigError` at `on_fit_start`, since the initial weights are no longer available
            (the checkpoint holds the trained ones). The cost is one forward of the initial model
            per perplexity batch and a second LM-head pass.
        extra_qa_sets: QA sets added to `qa_sets` (or to the datamodule's), `{name: path}`; a
            path the datamodule resolves (e.g. `world:task_comparison_test`) is resolved through
            its `resolve_source`. TRAIT's downstream tasks.
        stop_strings: Cut every generated answer at the first of these strings before exact
            match, as well as at EOS (e.g. `["\n"]`: the answer line of a model that goes on
            with its reasoning after `Answer: ...`). Default: EOS only.
        initial_cache_dir: Reuse the "before" evaluation of identical initial weights: a
            directory of `<key>.json` files, the key a digest of the model's parameters and
            buffers, its tokenizer, the evaluation sets' contents and every setting that can
            change a figure (generation length, batch size, stop strings, window length, world
            size, thread count, dtype, device type, torch version; `initial_eval_key`). The runs
            of a learning-rate grid, or several methods started from one model, evaluate it once;
            a reused row says so (`reused` in the results file). None evaluates every time.
    """

    def __init__(
        self,
        qa_sets: dict[str, str] | None = None,
        perplexity_sets: dict[str, str] | None = None,
        max_qa_samples: int | None = None,
        max_new_tokens: int = 16,
        batch_size: int = 32,
        every_n_epochs: int = 1,
        every_n_train_steps: int = 0,
        on_fit_start: bool = True,
        on_fit_end: bool = True,
        results_file: str = "knowledge_eval.jsonl",
        max_length: int | None = None,
        initial_kl: bool = False,
        extra_qa_sets: dict[str, str] | None = None,
        stop_strings: list[str] | None = None,
        initial_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        for key, value, minimum in (
            ("max_new_tokens", max_new_tokens, 1),
            ("batch_size", batch_size, 1),
            ("every_n_epochs", every_n_epochs, 0),
            ("every_n_train_steps", every_n_train_steps, 0),
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
        self.every_n_train_steps = every_n_train_steps
        self.eval_on_fit_start = on_fit_start
        self.eval_on_fit_end = on_fit_end
        self.results_file = results_file
        self.max_length = max_length
        self.initial_kl = initial_kl
        self.extra_qa_sets = dict(extra_qa_sets or {})
        self.stop_strings = list(stop_strings or [])
        self.initial_cache_dir = Path(initial_cache_dir) if initial_cache_dir else None
        self.history: list[dict[str, Any]] = []
        # The initial model for `initial_kl` (a Teacher view; not a module attribute of pl_module)
        # and how it was obtained (saved with the callback state, see `load_state_dict`).
        self._reference: Teacher | None = None
        self._reference_source: ReferenceSource | None = None
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
        if self.extra_qa_sets:
            qa = {**qa, **self._resolved_extra(trainer)}
        if not qa and not ppl:
            raise ConfigError(
                "KnowledgeEvalCallback.qa_sets", "no QA and no perplexity sets: nothing to evaluate"
            )
        return qa, ppl

    def _resolved_extra(self, trainer: pl.Trainer) -> dict[str, str]:
        """`extra_qa_sets` with paths the datamodule knows (`world:<split>`) resolved to files."""
        datamodule = getattr(trainer, "datamodule", None)
        resolve = getattr(datamodule, "resolve_source", None)
        resolved = {}
        for name, path in self.extra_qa_sets.items():
            if resolve is not None:
                from datamodules.sources import SourceSpec

                path = resolve(SourceSpec(path=str(path))).path
            resolved[name] = str(path)
        return resolved

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
        if self.initial_kl and not self._texts:
            raise ConfigError(
                "KnowledgeEvalCallback.initial_kl",
                "the KL to the initial model is measured on the perplexity sets, and there are "
                "none; give perplexity_sets or set initial_kl: false",
            )
        if self.results_path is None:
            path = Path(self.results_file)
            self.results_path = path if path.is_absolute() else run_dir(trainer) / path

    def _subsample(self, records: list[QARecord]) -> list[QARecord]:
        return subsample(records, self.max_qa_samples, seed=0)

    def _initial_teacher(self, pl_module: pl.LightningModule) -> Teacher | None:
        """The module's teacher when it is the initial student (see `initial_kl`), else None."""
        teacher = getattr(pl_module, "teacher", None)
        if not isinstance(teacher, Teacher):
            return None
        if teacher.kind == "adapters_disabled":
            return teacher
        if teacher.kind != "frozen":
            return None  # frozen_8bit: a quantized approximation of the initial model
        settings = getattr(pl_module, "teacher_settings", None)
        if settings is None or getattr(settings, "model_name_or_path", None) is not None:
            return None  # its own weights, or unknown provenance
        first = next(iter(teacher.model.parameters()), None)
        student = next(iter(get_model(pl_module).parameters()), None)
        if first is None or student is None or first.dtype != student.dtype:
            return None
        return teacher

    @staticmethod
    def _zero_lora_view(model: torch.nn.Module, check_zero: bool) -> Teacher | None:
        """The peft `model` with its adapters disabled, when that is the initial model: the base
        weights are frozen and (with `check_zero`) every adapter's output is exactly 0."""
        if not hasattr(model, "disable_adapter"):
            return None
        named = list(model.named_parameters())
        adapters = [(n, p) for n, p in named if "lora_" in n]
        base_frozen = all(not p.requires_grad for n, p in named if "lora_" not in n)
        if not adapters or not base_frozen:
            return None
        if check_zero:
            b_weights = [p for n, p in adapters if "lora_B" in n]
            others = [n for n, _ in adapters if "lora_A" not in n and "lora_B" not in n]
            if others or not b_weights or any(bool(p.any()) for p in b_weights):
                return None  # DoRA magnitudes, embeddings' adapters or non-zero init: copy instead
        return Teacher("adapters_disabled", model)

    def _setup_reference(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fix the initial model for `initial_kl` (before any training step; see the class doc)."""
        resuming = trainer.ckpt_path is not None
        model = get_model(pl_module)
        teacher = self._initial_teacher(pl_module)
        lora_view = self._zero_lora_view(model, check_zero=not resuming)
        if teacher is not None:
            self._reference, self._reference_source = teacher.to(pl_module.device), "teacher"
        elif lora_view is not None and (
            not resuming or self._reference_source == "adapters_disabled"
        ):
            # On resume the adapters are trained: trust the checkpointed record that they were
            # zero at the start (checked then), with the base weights still frozen (checked now).
            self._reference, self._reference_source = lora_view, "adapters_disabled"
        elif resuming:
            raise ConfigError(
                "KnowledgeEvalCallback.initial_kl",
                f"resuming from {trainer.ckpt_path}, the initial model's weights are no longer "
                "available (the checkpoint holds the trained ones, and the KL reference is "
                "deliberately not saved in it); initial_kl works on resume only when the module "
                "has a frozen teacher copied from the initial student (model.init_args.teacher: "
                "{kind: frozen} or, for LoRA, {kind: adapters_disabled}) or a zero-initialized LoRA "
                "student. Set initial_kl: false to resume without the KL metric",
            )
        else:
            reference = copy.deepcopy(unwrap(model))
            reference.eval()
            reference.requires_grad_(False)
            self._reference, self._reference_source = Teacher("frozen", reference), "copy"
            log.info(
                "initial_kl: holding a frozen copy of the initial model (%s parameters)",
                f"{sum(p.numel() for p in reference.parameters()):,}",
            )

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
        limit = self.batch_size if trainer.fast_dev_run else None
        max_length = self.max_length or model_max_length(model)
        if max_length is None:
            raise ConfigError(
                "KnowledgeEvalCallback.max_length",
                "the model config has no max_position_embeddings; set it",
            )
        reference: Reference | None = self._reference if self.initial_kl else None
        with eval_mode(model), torch.no_grad(), trainer.precision_plugin.forward_context():
            local = evaluation_sums(
                model,
                tokenizer,
                {name: records[:limit] for name, records in self._qa.items()},
                {name: texts[:limit] for name, texts in self._texts.items()},
                max_length=max_length,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                reference=reference,
                stop_strings=self.stop_strings,
            )
        slots = list(local)
        sums = torch.tensor([local[k] for k in slots], dtype=torch.float64, device=pl_module.device)
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return metrics_from_sums(dict(zip(slots, sums.tolist())))

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
        reused: Path | None = None,
    ) -> None:
        """Keep, log and (on global rank 0) append one evaluation to the results file; `reused`:
        the cache file the figures came from (`initial_cache_dir`)."""
        entry: dict[str, Any] = {
            "stage": stage,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": metrics,
            "counts": counts,
        }
        if reused is not None:
            entry["reused"] = str(reused)
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
        origin = f" (reused from {reused})" if reused is not None else ""
        log.info("knowledge eval (%s, step %d)%s: %s", stage, trainer.global_step, origin, summary)

    def initial_eval_key(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """The `initial_cache_dir` key of the "before" evaluation of the model as it is now."""
        from datamodules.store import tokenizer_fingerprint

        if self._qa is None or self._texts is None:
            raise RuntimeError("KnowledgeEvalCallback.initial_eval_key called before setup")
        model = get_model(pl_module)
        first = next(iter(model.parameters()), None)
        settings = {
            "version": INITIAL_CACHE_VERSION,
            "qa": {n: [dataclasses.astuple(r) for r in rs] for n, rs in sorted(self._qa.items())},
            "texts": {n: texts for n, texts in sorted(self._texts.items())},
            "limit": self.batch_size if trainer.fast_dev_run else None,
            "max_length": self.max_length or model_max_length(model),
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "stop_strings": self.stop_strings,
            "initial_kl": self.initial_kl,
            "world_size": trainer.world_size,
            "threads": torch.get_num_threads(),
            "precision": str(trainer.precision),
            "dtype": str(first.dtype) if first is not None else None,
            "device": pl_module.device.type,
            "torch": torch.__version__,
            "tokenizer": tokenizer_fingerprint(get_tokenizer(trainer, pl_module)),
        }
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for name, tensor in sorted(unwrap(model).state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(
                tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            )
        return digest.hexdigest()

    def _initial_cache_file(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        assert self.initial_cache_dir is not None
        return self.initial_cache_dir / f"{self.initial_eval_key(trainer, pl_module)}.json"

    def _load_initial(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[Path, dict[str, Any] | None]:
        """The cache file of the "before" evaluation and, when it holds one, its figures (read on
        global rank 0 and broadcast, so that every rank takes the same branch)."""
        path = self._initial_cache_file(trainer, pl_module) if trainer.is_global_zero else None
        cached = None
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                cached = {"metrics": dict(cached["metrics"]), "counts": dict(cached["counts"])}
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("initial evaluation cache %s unreadable (%s): evaluating", path, error)
                cached = None
        return trainer.strategy.broadcast((path, cached), src=0)

    def _initial_evaluation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The "before" row: from `initial_cache_dir` when these weights were evaluated so."""
        if self.initial_cache_dir is None:
            self._run(trainer, pl_module, "fit_start", via_module_log=False)
            return
        path, cached = self._load_initial(trainer, pl_module)
        if cached is not None:
            self._record(
                trainer, pl_module, "fit_start", cached["metrics"], cached["counts"], False, path
            )
            return
        metrics, counts = self.evaluate(trainer, pl_module)
        if trainer.is_global_zero and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps({"metrics": metrics, "counts": counts}), "utf-8")
        self._record(trainer, pl_module, "fit_start", metrics, counts, via_module_log=False)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fix the initial model (`initial_kl`), then the "before" evaluation (not repeated when
        resuming from a checkpoint)."""
        if self.initial_kl:
            self._setup_reference(trainer, pl_module)
        if self.eval_on_fit_start and trainer.ckpt_path is None:
            self._initial_evaluation(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate after validation: every `every_n_epochs` epochs in fit, always in `validate`."""
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING and (
            self.every_n_epochs == 0 or (trainer.current_epoch + 1) % self.every_n_epochs != 0
        ):
            return
        self._run(trainer, pl_module, "validation", via_module_log=True)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Evaluate after every `every_n_train_steps`-th optimizer step (once per step, however
        many micro-batches it accumulates)."""
        step = trainer.global_step
        if self.every_n_train_steps == 0 or step == 0 or step % self.every_n_train_steps != 0:
            return
        if self.history and self.history[-1]["step"] == step:
            return
        self._run(trainer, pl_module, "train_step", via_module_log=False)

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
            and last["stage"] in ("validation", "train_step")
            and last["step"] == trainer.global_step
        ):
            # These very weights were just evaluated: record their figures, do not recompute.
            self._record(
                trainer, pl_module, "fit_end", dict(last["metrics"]), dict(last["counts"]), False
            )
        else:
            self._run(trainer, pl_module, "fit_end", via_module_log=False)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Release the initial model (a copy may hold a second set of weights) after fit."""
        if stage == "fit":
            self._reference = None

    def state_dict(self) -> dict[str, Any]:
        """The history travels with checkpoints, so a resumed run keeps its "before" row; so does
        how the KL reference was obtained (never its weights)."""
        return {"history": self.history, "reference_source": self._reference_source}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._reference_source = state_dict.get("reference_source")
