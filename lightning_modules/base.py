"""`CausalLMModule`: the shared base of every method, and the plain CPT / fine-tuning baseline.

It owns what all methods share: building the student, the optimizer and scheduler, the
token-weighted reduction, validation perplexity and logging. A method differs only in
`compute_losses`, which turns a batch into token-summed losses.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from common import IGNORE_INDEX
from common.errors import ConfigError
from lightning_modules.schedulers import WarmupCosineLR
from losses import fused_linear_cross_entropy

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the student; the base weights stay frozen.

    Args:
        r: Adapter rank.
        alpha: Scaling numerator (`alpha / r` scales the adapter output).
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt; "all-linear" adapts every linear layer but the LM head.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")


def default_optimizer(params: Iterable[Any]) -> torch.optim.Optimizer:
    """AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01): the default when none is configured."""
    return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)


def resolve_attn_implementation(requested: str) -> str:
    """Pick the attention kernel: flash-attention 2 when importable on CUDA, else sdpa."""
    flash_available = (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    )
    if requested == "auto":
        return "flash_attention_2" if flash_available else "sdpa"
    if requested == "flash_attention_2" and not flash_available:
        raise ConfigError(
            "model.init_args.attn_implementation",
            "flash_attention_2 needs a CUDA device and the flash-attn package "
            "(pip install -e .[gpu]); use 'sdpa' or 'auto' on this machine",
        )
    return requested


class CausalLMModule(LightningModule):
    """Causal language modelling with a token-weighted objective: the CPT / fine-tuning baseline.

    The loss of an optimizer step is the sum of per-token losses over all its target tokens (all
    micro-batches, all ranks) divided by their number, so gradient accumulation and world size do
    not change the objective. Subclasses override `compute_losses`.

    Args:
        model_name_or_path: Hub id or local `save_pretrained` directory of the student. Leave
            unset to build a fresh model from `model_config`.
        model_config: Keyword arguments of a transformers config for a model trained from scratch
            (tiny models for tests and the demo), e.g. `{model_type: llama, hidden_size: 64, ...}`.
            `vocab_size` and the special token ids are taken from the tokenizer.
        tokenizer: Tokenizer path or hub id. Linked from the datamodule by the CLI.
        max_length: Sequence length the data produces. Linked from the datamodule by the CLI;
            checked against the model's maximum position.
        dtype: Parameter dtype of the student ("float32", "bfloat16", "float16").
        attn_implementation: "auto" (flash-attention 2 when importable on CUDA, else sdpa),
            "sdpa", "eager" or "flash_attention_2".
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora: Train LoRA adapters instead of all weights (peft).
        optimizer: Optimizer factory (e.g. `torch.optim.AdamW` or `bitsandbytes.optim.AdamW8bit`
            with its init_args). Default: AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01).
            Weight decay is not applied to biases, norms and embeddings.
        lr_scheduler: Scheduler factory, stepped every optimizer step. Default: warm-up + cosine
            (`lightning_modules.schedulers.WarmupCosineLR`).
        total_steps: Optimizer steps of the run for the scheduler. Linked from `trainer.max_steps`.
        init_seed: Seed for the initial weights of a model built from `model_config`.
        loss_chunk_size: Rows per chunk of the fused LM-head losses (None: chosen automatically).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto",
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        total_steps: int | None = None,
        init_seed: int = 0,
        loss_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if (model_name_or_path is None) == (model_config is None):
            raise ConfigError(
                "model.init_args.model_name_or_path",
                "set exactly one of model_name_or_path (a hub id or a local directory) "
                "and model_config (a transformers config for a fresh model)",
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer or default_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model: nn.Module | None = None
        self.tokenizer = None
        self._step_loss_parts: dict[str, Tensor] = {}
        self._eval_sums: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ building the student

    def load_tokenizer(self) -> Any:
        """Load the tokenizer (from `tokenizer`, else from `model_name_or_path`), pad defaulting to EOS."""
        from transformers import AutoTokenizer

        source = self.hparams.tokenizer or self.hparams.model_name_or_path
        if source is None:
            raise ConfigError(
                "data.init_args.tokenizer",
                "a model built from model_config needs a tokenizer path; set data.init_args.tokenizer",
            )
        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def build_student(self, tokenizer: Any) -> nn.Module:
        """Create the student from a hub id / local directory or from `model_config`."""
        from transformers import AutoConfig, AutoModelForCausalLM

        dtype = DTYPES[self.hparams.dtype]
        attn = resolve_attn_implementation(self.hparams.attn_implementation)
        if self.hparams.model_name_or_path is not None:
            model = AutoModelForCausalLM.from_pretrained(
                self.hparams.model_name_or_path, dtype=dtype, attn_implementation=attn
            )
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
        else:
            kwargs = dict(self.hparams.model_config)
            model_type = kwargs.pop("model_type", "llama")
            kwargs.update(
                vocab_size=len(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
            )
            try:
                config = AutoConfig.for_model(model_type, **kwargs)
            except (ValueError, TypeError) as error:
                raise ConfigError("model.init_args.model_config", str(error)) from error
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.hparams.init_seed)
                model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, attn_implementation=attn
                )
        max_positions = getattr(model.config, "max_position_embeddings", None)
        max_length = self.hparams.max_length
        if max_positions is not None and max_length is not None and max_length > max_positions:
            raise ConfigError(
                "data.init_args.max_length",
                f"{max_length} exceeds the model's maximum sequence length "
                f"(max_position_embeddings={max_positions})",
            )
        model.config.use_cache = False
        if self.hparams.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if self.hparams.lora is not None:
            model = self.add_lora(model, self.hparams.lora)
        return model

    @staticmethod
    def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
        """Wrap `model` with LoRA adapters; only the adapters remain trainable."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    def configure_model(self) -> None:
        """Build tokenizer and student here (not in __init__) so FSDP/DeepSpeed can shard them."""
        if self.model is not None:
            return
        self.tokenizer = self.load_tokenizer()
        self.model = self.build_student(self.tokenizer)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log.info("student: %s parameters, %s trainable", f"{total:,}", f"{trainable:,}")

    # ------------------------------------------------------------------ forward pieces

    def transformer_model(self) -> nn.Module:
        """The HF `PreTrainedModel` under any peft wrapper."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """Final hidden states `[B, L, H]` of the student's decoder (the LM head is applied by the loss).

        With `position_ids` (restarting at every document and at trailing padding, as the collator
        makes them) the 2-D attention mask is left out: transformers then derives the exact
        per-document causal mask from the positions (flash-attention varlen on GPU, a block-diagonal
        mask with sdpa/eager), so packed documents never attend to each other.
        """
        decoder = self.transformer_model().get_decoder()
        position_ids = batch.get("position_ids")
        outputs = decoder(
            input_ids=batch["input_ids"],
            attention_mask=None if position_ids is not None else batch.get("attention_mask"),
            position_ids=position_ids,
            use_cache=False,
        )
        return outputs.last_hidden_state

    def lm_head(self) -> nn.Linear:
        """The student's output projection."""
        return self.transformer_model().get_output_embeddings()

    def cross_entropy_sum(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Summed next-token cross-entropy over target tokens, never materializing all logits."""
        head = self.lm_head()
        return fused_linear_cross_entropy(
            hidden[:, :-1].reshape(-1, hidden.shape[-1]),
            head.weight,
            labels[:, 1:].reshape(-1),
            bias=head.bias,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            chunk_size=self.hparams.loss_chunk_size,
        )

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Turn a batch into losses summed over its target tokens; `"loss"` is the objective.

        Every entry is a sum over the batch's target tokens (`labels[:, 1:] != -100`); the base
        class divides by the optimizer step's target-token count. Methods override this hook.
        """
        hidden = self.hidden_states(batch)
        return {"loss": self.cross_entropy_sum(hidden, batch["labels"])}

    # ------------------------------------------------------------------ training

    def _step_scale(self, batch: dict[str, Tensor]) -> tuple[Tensor, float]:
        """(target tokens of the optimizer step, factor undoing Lightning's and DDP's averaging)."""
        if "step_target_tokens" in batch:
            step_tokens = batch["step_target_tokens"].to(torch.float32)
        else:
            step_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().to(torch.float32)
        trainer = self._trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        world = trainer.world_size if trainer is not None else 1
        return step_tokens.clamp_min(1.0), float(accumulate * world)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Token-weighted objective of this micro-batch, scaled so the step's gradient is exact."""
        losses = self.compute_losses(batch)
        step_tokens, scale = self._step_scale(batch)
        self._last_step_tokens = step_tokens.detach()
        for name, value in losses.items():
            part = value.detach() / step_tokens
            self._step_loss_parts[name] = self._step_loss_parts.get(name, 0.0) + part
        if self._is_last_micro_batch(batch_idx):
            self._log_step_losses()
        return losses["loss"] / step_tokens * scale

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
        self.log("train/tokens_in_step", self._last_step_tokens, on_step=True, rank_zero_only=True)

    # ------------------------------------------------------------------ validation

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Accumulate summed NLL and target tokens per validation set (token-weighted perplexity)."""
        hidden = self.hidden_states(batch)
        nll = self.cross_entropy_sum(hidden, batch["labels"]).detach()
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        name = self._eval_set_name(dataloader_idx)
        sums = self._eval_sums.setdefault(
            name, torch.zeros(2, dtype=torch.float64, device=self.device)
        )
        sums += torch.stack([nll.double(), tokens.double()])

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
            for m in self.model.modules()
            if isinstance(m, nn.Embedding)
            for p in m.parameters()
        }
        for name, param in self.model.named_parameters():
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
            p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None
        ]
        if norms:
            grad_norm = torch.stack(norms).norm()
            if math.isfinite(grad_norm.item()):
                self.log("train/grad_norm", grad_norm, on_step=True, rank_zero_only=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, rank_zero_only=True)
