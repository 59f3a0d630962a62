"""`DiSCModule`: context distillation via split contexts (DiSC, arXiv 2602.16093).

A frozen teacher (the initial model) reads a document's `context + target`; the student reads the
`target` alone and learns to match the teacher's next-token distributions on the target's tokens
2..L: forward KL(teacher ‖ student) at temperature `T`, times `T²`, full vocabulary, no CE term.

The data (`datamodules.split_context.SplitContextDataModule`) makes this exact and cheap: the
teacher reads each document once (every reference teacher input is a prefix of it), the student
reads the targets packed several per row, `teacher_rows` aligns the two, and the per-token weights
`1/((L-1)·|I|)` with `step_weight` = documents of the step give "mean over a target's tokens, then
over the document's splits, then over documents" under any accumulation and world size. This module
only turns such a batch into the fused loss; building, teacher, reduction and logging are the base's.

The paper's recipe (AdamW betas 0.9/0.999, eps 1e-8, weight decay 0.01, no scheduler, one epoch, one
document per optimizer step, lr 3e-6 for 7–8B models) is a matter of configuration
(`optimizer`, `lr_scheduler`, `data.init_args.micro_batch_size: 1`), not of this class.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from common import ConfigError
from lightning_modules.base import KEY, CausalLMModule, _as_dataclass
from lightning_modules.forward import TeacherInputs
from lightning_modules.teacher import TeacherSettings
from losses import LossSpec

DEFAULT_TEACHER = TeacherSettings(kind="frozen")

TEACHER_BATCH_KEYS = ("teacher_input_ids", "teacher_rows")


def disc_loss_spec(temperature: float = 2.0, chunk_size: int | None = None) -> LossSpec:
    """DiSC's loss: forward KL(teacher ‖ student) at `temperature`, scaled by its square, no CE."""
    try:
        return LossSpec(
            ce_weight=0.0,
            kl_weight=1.0,
            divergence="forward_kl",
            temperature=temperature,
            scale_by_temperature_squared=True,
            chunk_size=chunk_size,
        )
    except ValueError as error:
        name = "chunk_size" if "chunk_size" in str(error) else "temperature"
        raise ConfigError(f"{KEY}.{name}", str(error)) from None


class DiSCModule(CausalLMModule):
    """Distillation via split contexts: the student reading a target alone matches the frozen
    teacher reading it after its document's preceding sentences.

    Needs the batches of `datamodules.split_context.SplitContextDataModule` (teacher rows and the
    student-to-teacher row map). The logged `train/kl` is the objective; `train/ce` is the student's
    CE on the targets alone (weighted like the KL, no gradient: logging only).

    Args:
        temperature: `T` of the KL, applied to both logit sets, the KL multiplied by `T²` (the
            reference's default 2.0).
        teacher: The frozen teacher: `{kind: frozen}` (a copy of the initial student; also what
            unset means, DiSC always distils), `frozen_8bit`, or `adapters_disabled` with a LoRA
            student (`lora`).
        chunk_size: Rows per chunk of the fused LM-head loss (None: chosen from vocabulary and device).
        **kwargs: The remaining `CausalLMModule` arguments (model source, dtype, lora, optimizer,
            lr_scheduler, ...). `loss` is fixed by DiSC: leave it unset.
    """

    def __init__(
        self,
        temperature: float = 2.0,
        teacher: TeacherSettings | None = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        spec = disc_loss_spec(temperature, chunk_size)
        given = kwargs.pop("loss", None)
        if given is not None and _as_dataclass(given, LossSpec, f"{KEY}.loss") != spec:
            raise ConfigError(
                f"{KEY}.loss",
                "DiSC fixes its loss (forward KL at temperature T times T², no CE); remove it and "
                f"set {KEY}.temperature or {KEY}.chunk_size",
            )
        teacher = _as_dataclass(teacher, TeacherSettings, f"{KEY}.teacher") or DEFAULT_TEACHER
        super().__init__(loss=spec, teacher=dataclasses.replace(teacher), **kwargs)

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted sums `{"loss", "ce", "kl"}`: the teacher reads `teacher_input_ids`, the student
        `input_ids`, aligned by `teacher_rows`."""
        missing = [key for key in TEACHER_BATCH_KEYS if key not in batch]
        if missing:
            raise ConfigError(
                "data.class_path",
                f"DiSCModule needs split-context batches ({', '.join(missing)} missing): use "
                "datamodules.split_context.SplitContextDataModule",
            )
        teacher_inputs = TeacherInputs(
            input_ids=batch["teacher_input_ids"],
            rows=batch["teacher_rows"],
            position_ids=batch.get("teacher_position_ids"),
            attention_mask=batch.get("teacher_attention_mask"),
        )
        return self.student_loss(batch, teacher_inputs=teacher_inputs)


__all__ = ["DEFAULT_TEACHER", "DiSCModule", "disc_loss_spec"]
