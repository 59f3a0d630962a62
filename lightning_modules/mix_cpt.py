"""`MixCPTModule`: knowledge-mixture continual pre-training with logit-swap self-distillation
(Mix-CPT stage 1, arXiv 2407.10804).

The data is one next-token stream over a token-ratio mixture of domain documents, general documents
and format-free instruction and preference text (`PretrainingDataModule` sources with `template`).
The teacher is the frozen initial model. At each target the teacher's largest logit and the label's
logit trade places (nothing changes where they coincide) and the student is distilled toward the
softmax of the swapped teacher logits at temperature τ — the fused loss does the swap and the
divergence chunk by chunk in the same pass as the CE, with no `[tokens, vocab]` tensor.

What the paper leaves open is a knob, each an *assumption* (../shared/docs/methods.md, Mix-CPT):
forward KL(swapped teacher ‖ student), τ = 1, `CE + α·LSSD` with α = 1 (`mode: add`) or LSSD alone
(`mode: replace`), applied to every training token (`lssd_sources: null`). The ablation without
LSSD is the base `CausalLMModule` on the same data; the traditional pipeline's CPT is the same on
the domain documents only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor

from common import ConfigError
from lightning_modules.base import KEY, CausalLMModule, _as_dataclass
from lightning_modules.teacher import TeacherSettings
from losses import LossSpec

DEFAULT_TEACHER = TeacherSettings(kind="frozen")

LSSDMode = Literal["add", "replace"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]


def lssd_loss_spec(
    mode: LSSDMode = "add",
    alpha: float = 1.0,
    temperature: float = 1.0,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    scale_by_temperature_squared: bool = False,
    logit_swap: bool = True,
    chunk_size: int | None = None,
) -> LossSpec:
    """The loss of the LSSD tokens: `CE + α·D(swapped teacher ‖ student)` (`add`) or `D` (`replace`)."""
    if mode not in ("add", "replace"):
        raise ConfigError(f"{KEY}.mode", f"must be 'add' or 'replace', got {mode!r}")
    if mode == "replace" and alpha != 1.0:
        raise ConfigError(
            f"{KEY}.alpha", f"is {alpha} but mode 'replace' trains on LSSD alone; leave alpha at 1"
        )
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ConfigError(
            f"{KEY}.alpha",
            f"must be > 0, got {alpha!r} (Mix-CPT without LSSD is lightning_modules.CausalLMModule "
            "on the same data)",
        )
    try:
        return LossSpec(
            ce_weight=1.0 if mode == "add" else 0.0,
            kl_weight=float(alpha),
            divergence=divergence,
            beta=beta,
            temperature=temperature,
            scale_by_temperature_squared=scale_by_temperature_squared,
            logit_swap=logit_swap,
            chunk_size=chunk_size,
        )
    except ValueError as error:
        field = str(error).split(" ", 1)[0].removeprefix("LossSpec.")
        raise ConfigError(f"{KEY}.{field}", str(error)) from None


class MixCPTModule(CausalLMModule):
    """Knowledge-mixture CPT: CE on the mixture plus logit-swap self-distillation (LSSD) from the
    frozen initial model.

    Logs `train/ce` (the CE of every target) and `train/kl` (the LSSD term, before α, summed over
    the LSSD targets and divided by the step's target count like the CE) separately.

    Args:
        mode: `add` — every LSSD target's loss is `CE + α·LSSD`; `replace` — LSSD alone (CE only
            logged there). Targets of sources outside `lssd_sources` get plain CE in both modes.
            *Assumption*: the paper adds the two; `replace` is the ablation.
        alpha: Weight α of LSSD in `add` mode (*assumption*: 1).
        temperature: τ dividing both logit sets inside the divergence (*assumption*: 1).
        divergence: D, with its direction: `forward_kl` is KL(swapped teacher ‖ student)
            (*assumption*), `reverse_kl` KL(student ‖ swapped teacher), `jsd` the generalized JSD
            with mixture weight `beta`, and the skew KLs.
        beta: Mixture weight of `jsd` and the skew KLs.
        scale_by_temperature_squared: Multiply D by τ² (*assumption*: off, as TRL and Liger).
        logit_swap: Swap the teacher's top logit with the label's (LSSD). Off gives plain
            self-distillation toward the initial model (an ablation).
        lssd_sources: Names of the train sources whose targets get LSSD (the data module's
            `train_sources[*].name`, defaulting to the file or split name); null means every
            source (*assumption*: the paper applies it to every training token).
        teacher: The frozen teacher: `{kind: frozen}` (a copy of the initial model; also what
            unset means), `frozen_8bit`, or `adapters_disabled` with a LoRA student.
        chunk_size: Rows per chunk of the fused LM-head loss (None: chosen from vocabulary and device).
        **kwargs: The remaining `CausalLMModule` arguments (model source, dtype, lora, optimizer,
            lr_scheduler, ...). `loss` is built from the arguments above: leave it unset.
    """

    def __init__(
        self,
        mode: LSSDMode = "add",
        alpha: float = 1.0,
        temperature: float = 1.0,
        divergence: Divergence = "forward_kl",
        beta: float = 0.5,
        scale_by_temperature_squared: bool = False,
        logit_swap: bool = True,
        lssd_sources: list[str] | None = None,
        teacher: TeacherSettings | None = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        spec = lssd_loss_spec(
            mode,
            alpha,
            temperature,
            divergence,
            beta,
            scale_by_temperature_squared,
            logit_swap,
            chunk_size,
        )
        given = kwargs.pop("loss", None)
        if given is not None and _as_dataclass(given, LossSpec, f"{KEY}.loss") != spec:
            raise ConfigError(
                f"{KEY}.loss",
                "MixCPTModule builds its loss from mode, alpha, temperature, divergence, beta, "
                f"logit_swap and chunk_size; remove {KEY}.loss and set those",
            )
        if lssd_sources is not None:
            if not isinstance(lssd_sources, (list, tuple)) or not all(
                isinstance(name, str) and name for name in lssd_sources
            ):
                raise ConfigError(
                    f"{KEY}.lssd_sources",
                    f"must be a list of train source names or null, got {lssd_sources!r}",
                )
            lssd_sources = list(lssd_sources)
        teacher = _as_dataclass(teacher, TeacherSettings, f"{KEY}.teacher") or DEFAULT_TEACHER
        super().__init__(loss=spec, teacher=dataclasses.replace(teacher), **kwargs)
        self.lssd_sources = lssd_sources
        self._lssd_source_mask: Tensor | None = None

    def on_fit_start(self) -> None:
        """Resolve `lssd_sources` against the data module's train source names."""
        super().on_fit_start()
        if self.lssd_sources is None:
            return
        names = getattr(self.trainer.datamodule, "train_source_names", None)
        if names is None:
            raise ConfigError(
                f"{KEY}.lssd_sources",
                "needs a data module that names its train sources (datamodules.PretrainingDataModule "
                "or a subclass)",
            )
        self._lssd_source_mask = lssd_source_mask(self.lssd_sources, names)

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted sums `{"loss", "ce", "kl"}`: the spec's loss on the LSSD targets, CE elsewhere."""
        if self._lssd_source_mask is None or bool(self._lssd_source_mask.all()):
            return self.student_loss(batch)
        if "source_index" not in batch:
            raise ConfigError(
                f"{KEY}.lssd_sources",
                "the batches carry no source_index; use datamodules.PretrainingDataModule (or a "
                "subclass), whose rows each hold one source",
            )
        mask = self._lssd_source_mask.to(batch["source_index"].device)
        rows = mask[batch["source_index"]]
        return self.student_loss(batch, distill_mask=rows[:, None].expand_as(batch["labels"]))


def lssd_source_mask(lssd_sources: list[str], source_names: list[str]) -> Tensor:
    """`[num_sources]` bool: which train sources get LSSD; unknown names are a `ConfigError`."""
    unknown = [name for name in lssd_sources if name not in source_names]
    if unknown:
        raise ConfigError(
            f"{KEY}.lssd_sources",
            f"unknown train source(s) {unknown}; the data module's train sources are {source_names}",
        )
    return torch.tensor([name in lssd_sources for name in source_names], dtype=torch.bool)


__all__ = ["DEFAULT_TEACHER", "MixCPTModule", "lssd_loss_spec", "lssd_source_mask"]
