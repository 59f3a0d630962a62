"""`CausalLMModule`: the shared base of every method, and the plain CPT / fine-tuning baseline.

It owns what all methods share: building the student (and the teacher), the optimizer and
scheduler, the weighted step reduction, validation perplexity and logging. A method differs only in
`compute_losses`, which turns a batch into weighted loss sums — usually by calling `self.student_loss`
with other inputs, labels, weights or teacher inputs.

With a teacher and `loss.kl_weight > 0` this module is also the FT+KL baseline (DiSC's paper) and,
with `loss.logit_swap`, Mix-CPT's logit-swap self-distillation on a plain CPT stream.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from common import ConfigError
from lightning_modules.forward import (
    CausalLMWithLoss,
    TeacherInputs,
    TokenWeightFn,
    count_targets,
    shard_with_fsdp2,
)
from lightning_modules.modeling import (
    AttnImplementation,
    DType,
    LoraSettings,
    ModelSource,
    add_lora,
    build_causal_lm,
    enable_activation_checkpointing,
    unwrap,
)
from lightning_modules.schedulers import WarmupCosineLR
from lightning_modules.teacher import Teacher, TeacherSettings, build_teacher
from losses import LossSpec

log = logging.getLogger(__name__)

KEY = "model.init_args"


def default_optimizer(params: Iterable[Any]) -> torch.optim.Optimizer:
    """AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01): the default when none is configured."""
    return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)


def _as_dataclass(value: Any, cls: type, key: str) -> Any:
    """`value` as an instance of the dataclass `cls` (the CLI and checkpoints may hand a dict)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except (TypeError, ValueError) as error:
            raise ConfigError(key, str(error)) from None
    raise ConfigError(
        key, f"expected a mapping of {cls.__name__} fields, got {type(value).__name__}"
    )


class CausalLMModule(LightningModule):
    """Causal language modelling with a weighted step objective: the CPT / fine-tuning baseline.

    The objective of an optimizer step is `Σ w_t · loss_t / W_step` over all its target tokens (all
    micro-batches, all ranks): `w_t` comes from the batch's `loss_weights` (1 when absent) and
    `W_step` from its `step_weight` (the sampler's total for the whole step), so gradient
    accumulation and world size never change the objective. Subclasses override `compute_losses`.

    Args:
        model_name_or_path: Hub id, local `save_pretrained` directory, or the directory of
            `gguf_file`. Leave unset to build a fresh model from `model_config`.
        gguf_file: A GGUF file inside `model_name_or_path` (e.g. SmolLM2-135M-Instruct's).
        model_config: Keyword arguments of a transformers config for a model trained from scratch
            (tiny models for tests and the demo), e.g. `{model_type: llama, hidden_size: 64, ...}`.
            `vocab_size` and the special token ids are taken from the tokenizer.
        tokenizer: Tokenizer path or hub id. Linked from the datamodule by the CLI.
        max_length: Sequence length the data produces. Linked from the datamodule by the CLI;
            checked against the model's maximum position.
        dtype: Parameter dtype of the student ("float32", "bfloat16", "float16").
        attn_implementation: "auto" (flash-attention 2 when importable on CUDA, else sdpa),
            "sdpa", "eager" or "flash_attention_2".
        gradient_checkpointing: Recompute every decoder layer's activations in backward.
        lora: Train LoRA adapters instead of all weights (peft).
        loss: The loss: CE and KL weights, divergence, beta, temperature, tau² scaling, logit swap,
            chunk size of the fused LM-head loss. A KL term needs a teacher.
        teacher: The frozen teacher for distillation (None: no teacher).
        optimizer: Optimizer factory (e.g. `torch.optim.AdamW` or `bitsandbytes.optim.AdamW8bit`
            with its init_args). Default: AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01).
            Weight decay is not applied to biases, norms and embeddings.
        lr_scheduler: Scheduler factory, stepped every optimizer step. Default: warm-up + cosine
            (`lightning_modules.schedulers.WarmupCosineLR`).
        total_steps: Optimizer steps of the run for the scheduler. Linked from `trainer.max_steps`.
        init_seed: Seed for the initial weights of a model built from `model_config`.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        gguf_file: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        dtype: DType = "float32",
        attn_implementation: AttnImplementation = "auto",
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        loss: LossSpec | None = None,
        teacher: TeacherSettings | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        total_steps: int | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.source = ModelSource(model_name_or_path, gguf_file, model_config, init_seed)
        self.source.validate(KEY)
        self.lora_settings = _as_dataclass(lora, LoraSettings, f"{KEY}.lora")
        self.loss_spec = _as_dataclass(loss, LossSpec, f"{KEY}.loss") or LossSpec()
        self.teacher_settings = _as_dataclass(teacher, TeacherSettings, f"{KEY}.teacher")
        if self.teacher_settings is not None:
            self.teacher_settings.validate(f"{KEY}.teacher", self.lora_settings is not None)
        elif self.loss_spec.kl_weight != 0:
            raise ConfigError(
                f"{KEY}.loss.kl_weight",
                f"is {self.loss_spec.kl_weight} but no teacher is set: set {KEY}.teacher "
                "(e.g. {kind: frozen}) or loss.kl_weight: 0",
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        for name in ("lora", "loss", "teacher"):  # plain dicts: checkpoints load with weights_only
            value = self.hparams[name]
            if dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        self.optimizer_factory = optimizer or default_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lm: CausalLMWithLoss | None = None
        self.tokenizer = None
        self._teacher: Teacher | None = None  # not a submodule: see lightning_modules.teacher
        self._step_loss_parts: dict[str, Tensor] = {}
        self._eval_sums: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ building

    @property
    def teacher(self) -> Teacher | None:
        """The frozen teacher (built in `configure_model`), or None."""
        return self._teacher

    @property
    def model(self) -> nn.Module | None:
        """The student: a transformers `PreTrainedModel` or a peft model around one (None before
        `configure_model`). It lives inside `self.lm`, the root module whose forward runs the loss."""
        return self.lm.model if self.lm is not None else None

    @property
    def student(self) -> nn.Module:
        """`model`, or an error when it is not built yet."""
        if self.lm is None:
            raise RuntimeError("the student is built in configure_model(); call it first")
        return self.lm.model

    def transformer_model(self) -> nn.Module:
        """The student's transformers `PreTrainedModel` (under any peft wrapper)."""
        return unwrap(self.student)

    def load_tokenizer(self) -> Any:
        """The tokenizer (from `tokenizer`, else from the model's own directory), pad defaulting to EOS."""
        from common import load_tokenizer

        path = self.hparams.tokenizer or self.hparams.model_name_or_path
        if path is None:
            raise ConfigError(
                "data.init_args.tokenizer",
                "a model built from model_config needs a tokenizer path; set data.init_args.tokenizer",
            )
        gguf = None if self.hparams.tokenizer else self.hparams.gguf_file
        return load_tokenizer(path, key=f"{KEY}.tokenizer", gguf_file=gguf)

    def configure_model(self) -> None:
        """Build tokenizer, student and teacher here (not in __init__) so FSDP/DeepSpeed can shard them.

        Order: the student (train mode) → a frozen teacher copy of the initial student → activation
        checkpointing and LoRA on the student → an `adapters_disabled` teacher → FSDP2 sharding when
        the strategy gives a device mesh (ModelParallelStrategy).
        """
        if self.lm is not None:
            return
        hp = self.hparams
        self.tokenizer = self.load_tokenizer()
        student = build_causal_lm(
            self.source,
            self.tokenizer,
            dtype=hp.dtype,
            attn_implementation=hp.attn_implementation,
            max_length=hp.max_length,
            key=KEY,
        )
        build = dict(
            dtype=hp.dtype, attn_implementation=hp.attn_implementation, max_length=hp.max_length
        )
        if self.teacher_settings is not None and self.teacher_settings.kind != "adapters_disabled":
            self._teacher = build_teacher(self.teacher_settings, student, self.tokenizer, **build)
        if hp.gradient_checkpointing:
            enable_activation_checkpointing(student)
        if self.lora_settings is not None:
            student = add_lora(student, self.lora_settings)
        if self.teacher_settings is not None and self.teacher_settings.kind == "adapters_disabled":
            self._teacher = build_teacher(self.teacher_settings, student, self.tokenizer, **build)
        self.lm = CausalLMWithLoss(student)
        if self.device_mesh is not None:
            shard_with_fsdp2(self.lm, self.device_mesh["data_parallel"], self._teacher)
        trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
        total = sum(p.numel() for p in student.parameters())
        log.info("student: %s parameters, %s trainable", f"{total:,}", f"{trainable:,}")

    def on_train_start(self) -> None:
        """Every student module in train mode (transformers loads in eval mode; the teacher stays eval)."""
        self.lm.train()

    # ------------------------------------------------------------------ the loss

    def student_loss(
        self,
        batch: dict[str, Tensor],
        *,
        spec: LossSpec | None = None,
        teacher_inputs: TeacherInputs | None = None,
        use_teacher: bool = True,
        token_weight_fn: TokenWeightFn | None = None,
        distill_mask: Tensor | None = None,
        per_row: bool = False,
    ) -> dict[str, Tensor]:
        """Weighted loss sums of the student on `batch` (the root module's forward; see `forward.py`).

        `batch` needs `input_ids` and `labels`, optionally `position_ids`, `attention_mask` and
        `loss_weights`. The teacher reads the same rows unless `teacher_inputs` says otherwise.
        `token_weight_fn` (CE only, no teacher) multiplies each target's CE by a detached weight
        computed from the detached per-token NLLs in the same forward (TALR). `distill_mask`
        limits the distillation term to the marked targets (plain CE elsewhere; Mix-CPT's
        per-source LSSD). `per_row` adds each row's CE sum, and the teacher's, as `row_ce` and
        `teacher_row_ce` (DPO, format-alignment scoring).
        """
        teacher = self._teacher if use_teacher else None
        if teacher is not None:
            teacher.to(batch["input_ids"].device)
        return self.lm(
            batch["input_ids"],
            batch["labels"],
            spec or self.loss_spec,
            position_ids=batch.get("position_ids"),
            attention_mask=batch.get("attention_mask"),
            loss_weights=batch.get("loss_weights"),
            teacher=teacher,
            teacher_inputs=teacher_inputs,
            token_weight_fn=token_weight_fn,
            distill_mask=distill_mask,
            per_row=per_row,
        )

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Turn a batch into weighted loss sums over its target tokens; `"loss"` is the objective.

        Every entry is `Σ w_t · loss_t` over the batch's target tokens; the base class divides by the
        optimizer step's total weight. Methods override this hook.
        """
        return self.student_loss(batch)

    # ------------------------------------------------------------------ training

    def _step_scale(self, batch: dict[str, Tensor]) -> tuple[Tensor, float]:
        """(total weight of the optimizer step, factor undoing Lightning's and DDP's averaging)."""
        if "step_weight" in batch:
            step_weight = batch["step_weight"].to(torch.float32)
        elif "loss_weights" in batch:
            step_weight = batch["loss_weights"][:, 1:].sum().to(torch.float32)
        else:
            step_weight = count_targets(batch["labels"]).to(torch.float32)
        trainer = self._trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        world = trainer.world_size if trainer is not None else 1
        return step_weight.clamp_min(torch.finfo(torch.float32).tiny), float(accumulate * world)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Weighted objective of this micro-batch, scaled so the step's gradient is exact."""
        losses = self.compute_losses(batch)
        step_weight, scale = self._step_scale(batch)
        self._last_step_weight = step_weight.detach()
        for name, value in losses.items():
            part = value.detach() / step_weight
            self._step_loss_parts[name] = self._step_loss_parts.get(name, 0.0) + part
        if self._is_last_micro_batch(batch_idx):
            self._log_step_losses()
        return losses["loss"] / step_weight * scale

    def _is_last_micro_batch(self, batch_idx: int) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        return (batch_idx + 1) % trainer.accumulate_grad_batches == 0

    def _log_step_losses(self) -> None:
        """Log the step's losses: micro-batch parts summed here, rank parts summed across ranks."""
        parts = self._step_loss_parts
        self._step_loss_parts = {}
        names = sorted(parts)
        values = torch.stack([torch.as_tensor(parts[n], device=self.device) for n in names])
        if self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum")
        metrics = {f"train/{n}": v for n, v in zip(names, values)}
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True, rank_zero_only=True)
        self.log("train/step_weight", self._last_step_weight, on_step=True, rank_zero_only=True)

    # ------------------------------------------------------------------ validation

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Accumulate summed NLL and target tokens per validation set (token-weighted perplexity)."""
        plain = {k: v for k, v in batch.items() if k != "loss_weights"}
        nll = self.student_loss(
            plain, spec=LossSpec(chunk_size=self.loss_spec.chunk_size), use_teacher=False
        )
        tokens = count_targets(batch["labels"])
        name = self._eval_set_name(dataloader_idx)
        sums = self._eval_sums.setdefault(
            name, torch.zeros(2, dtype=torch.float64, device=self.device)
        )
        sums += torch.stack([nll["ce"].double(), tokens.double()])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Same as `validation_step`; logged under `test/`."""
        self.validation_step(batch, batch_idx, dataloader_idx)

    def _eval_set_name(self, dataloader_idx: int) -> str:
        names = getattr(self.trainer.datamodule, "val_set_names", None) if self._trainer else None
        return names[dataloader_idx] if names else str(dataloader_idx)

    def _log_eval_sums(self, prefix: str) -> None:
        """Log `<prefix>/<set>/loss` and `<prefix>/<set>/ppl` from the token-weighted sums of all ranks."""
        for name, sums in self._eval_sums.items():
            if self.trainer.world_size > 1:
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            loss = (sums[0] / sums[1].clamp_min(1)).float()
            self.log(f"{prefix}/{name}/loss", loss, rank_zero_only=True)
            self.log(f"{prefix}/{name}/ppl", torch.exp(loss), rank_zero_only=True)
        self._eval_sums = {}

    def on_validation_epoch_end(self) -> None:
        """Log validation loss and perplexity per set."""
        self._log_eval_sums("val")

    def on_test_epoch_end(self) -> None:
        """Log test loss and perplexity per set."""
        self._log_eval_sums("test")

    # ------------------------------------------------------------------ optimization

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters, without weight decay for biases, norms and embeddings."""
        decay, no_decay = [], []
        embeddings = {
            id(p)
            for m in self.student.modules()
            if isinstance(m, nn.Embedding)
            for p in m.parameters()
        }
        for name, param in self.student.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim < 2 or id(param) in embeddings or "norm" in name.lower():
                no_decay.append(param)
            else:
                decay.append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimizer from the injected factory; scheduler stepped every optimizer step."""
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.lr_scheduler_factory is None:
            scheduler: Any = WarmupCosineLR(optimizer, total_steps=self._total_steps())
        else:
            scheduler = self.lr_scheduler_factory(optimizer)
            if getattr(scheduler, "total_steps", 0) is None:
                scheduler.total_steps = self._total_steps()
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _total_steps(self) -> int | None:
        total = self.hparams.total_steps
        if (total is None or total <= 0) and self._trainer is not None:
            total = self.trainer.max_steps
        return total if total is not None and total > 0 else None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the gradient norm and learning rate at the logging cadence."""
        if self.trainer.global_step % max(1, self.trainer.log_every_n_steps) != 0:
            return
        norms = [
            p.grad.detach().float().norm() for p in self.student.parameters() if p.grad is not None
        ]
        if norms:
            grad_norm = torch.stack(norms).norm()
            if math.isfinite(grad_norm.item()):
                self.log("train/grad_norm", grad_norm, on_step=True, rank_zero_only=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, rank_zero_only=True)
