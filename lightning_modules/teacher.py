"""The frozen teacher that Mix-CPT (logit-swap self-distillation) and DiSC distil from.

One abstraction for every method that distils:

| kind | weights | extra memory |
| --- | --- | --- |
| `frozen` | a copy of the initial student, or its own `model_name_or_path` | one model |
| `frozen_8bit` | as `frozen`, decoder linear layers in int8 (bitsandbytes LLM.int8) | ≈ ¼ model |
| `adapters_disabled` | the student itself with its LoRA adapters switched off | none |

A teacher is always in eval mode and runs without gradients. It is deliberately **not** a registered
submodule of the LightningModule: it is never in `parameters()` (so never in an optimizer), never in a
training checkpoint or an export, and never moved or re-moded by Lightning. A resume rebuilds it from
the same source (the initial student is rebuilt before the checkpoint's weights are loaded).

It returns final hidden states and exposes its LM head: the fused loss applies the head chunk by
chunk, only at the positions that carry a loss. Both are called from inside the student's root
module forward (`CausalLMWithLoss`), where an FSDP-sharded student's parameters are whole.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from common import ConfigError
from lightning_modules.modeling import (
    DTYPES,
    AttnImplementation,
    DType,
    ModelSource,
    build_causal_lm,
    decoder_hidden_states,
    output_head,
    unwrap,
)

log = logging.getLogger(__name__)

TeacherKind = Literal["frozen", "frozen_8bit", "adapters_disabled"]


@dataclass
class TeacherSettings:
    """Which frozen teacher a distilling method uses.

    Args:
        kind: "frozen" (a frozen copy), "frozen_8bit" (the same with int8 decoder linears,
            bitsandbytes), or "adapters_disabled" (the LoRA student with its adapters off; needs
            `model.init_args.lora`, costs no memory).
        model_name_or_path: The teacher's own weights (hub id or local directory); unset means a copy
            of the initial student. Not allowed with "adapters_disabled".
        gguf_file: A GGUF file inside `model_name_or_path`.
        dtype: Parameter dtype of the teacher; unset means the student's dtype.
        int8_threshold: LLM.int8 outlier threshold of "frozen_8bit" (0 quantizes every column).
    """

    kind: TeacherKind = "frozen"
    model_name_or_path: str | None = None
    gguf_file: str | None = None
    dtype: DType | None = None
    int8_threshold: float = 6.0

    def validate(self, key: str, student_has_lora: bool) -> None:
        """Check the combination without loading anything; `key` is the config key of the settings."""
        if self.kind == "adapters_disabled":
            if not student_has_lora:
                raise ConfigError(
                    f"{key}.kind",
                    "adapters_disabled needs a LoRA student (set model.init_args.lora); "
                    "use 'frozen' for a full-weight student",
                )
            if self.model_name_or_path is not None:
                raise ConfigError(
                    f"{key}.model_name_or_path",
                    "adapters_disabled uses the student's own base weights; remove this key",
                )
        if self.gguf_file is not None and self.model_name_or_path is None:
            raise ConfigError(f"{key}.gguf_file", "needs model_name_or_path (its directory)")
        if self.model_name_or_path is not None:
            ModelSource(self.model_name_or_path, self.gguf_file).validate(key)


class Teacher:
    """A frozen model seen through two calls: `hidden_states(...)` and `head()`.

    Build one with `build_teacher`. `model` is the teacher's own module, or the (peft) student for
    `adapters_disabled`.
    """

    def __init__(self, kind: TeacherKind, model: nn.Module) -> None:
        self.kind = kind
        self.model = model
        if kind != "adapters_disabled":
            model.eval()
            model.requires_grad_(False)

    @torch.no_grad()
    def hidden_states(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states `[B, L, H_t]` of the teacher, in eval mode, without gradients."""
        if self.kind != "adapters_disabled":
            return decoder_hidden_states(self.model, input_ids, position_ids, attention_mask)
        student = self.model
        modes = {module: module.training for module in student.modules()}
        student.eval()
        try:
            with student.disable_adapter():
                return decoder_hidden_states(student, input_ids, position_ids, attention_mask)
        finally:
            for module, training in modes.items():
                module.training = training

    def head(self) -> tuple[Tensor, Tensor | None]:
        """The teacher's LM head (weight, bias), detached."""
        weight, bias = output_head(self.model)
        return weight.detach(), bias.detach() if bias is not None else None

    def to(self, device: torch.device | str) -> Teacher:
        """Move an owned teacher to `device` (a no-op for `adapters_disabled`)."""
        if self.kind != "adapters_disabled":
            first = next(self.model.parameters(), None)
            if first is not None and first.device != torch.device(device):
                self.model.to(device)
        return self

    def parameters(self) -> list[nn.Parameter]:
        """The teacher's own parameters (empty for `adapters_disabled`)."""
        return [] if self.kind == "adapters_disabled" else list(self.model.parameters())


def quantize_linears_int8(model: nn.Module, threshold: float) -> int:
    """Replace every `nn.Linear` of `model`'s decoder by a frozen bitsandbytes `Linear8bitLt`.

    The LM head and the embeddings keep their dtype: the fused loss reads the head as a matrix.
    Returns the number of layers replaced.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise ConfigError(
            "model.init_args.teacher.kind",
            "frozen_8bit needs bitsandbytes (pip install -e .[quant])",
        ) from error
    decoder = unwrap(model).get_decoder()
    replaced = 0
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            q = bnb.nn.Linear8bitLt(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                has_fp16_weights=False,
                threshold=threshold,
                device="meta",
            )
            q.weight = bnb.nn.Int8Params(
                child.weight.data.contiguous(), requires_grad=False, has_fp16_weights=False
            )
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            q = q.to(child.weight.device)  # quantizes the weight to int8 (row-wise absmax)
            setattr(parent, name, q)
            replaced += 1
    return replaced


def build_teacher(
    settings: TeacherSettings | None,
    student: nn.Module,
    tokenizer: Any,
    *,
    dtype: DType,
    attn_implementation: AttnImplementation,
    max_length: int | None,
    key: str = "model.init_args.teacher",
) -> Teacher | None:
    """The teacher of `settings` for `student` (the initial student, before any training step).

    Call it before the student gets LoRA adapters for `frozen` copies (so the copy has none) and
    after for `adapters_disabled`; `CausalLMModule.configure_model` does both in that order.
    """
    if settings is None:
        return None
    if settings.kind == "adapters_disabled":
        if not hasattr(student, "disable_adapter"):
            raise ConfigError(f"{key}.kind", "adapters_disabled needs a LoRA (peft) student")
        return Teacher("adapters_disabled", student)
    teacher_dtype = settings.dtype or dtype
    if settings.model_name_or_path is None:
        model = copy.deepcopy(unwrap(student)).to(dtype=DTYPES[teacher_dtype])
    else:
        source = ModelSource(settings.model_name_or_path, settings.gguf_file)
        model = build_causal_lm(
            source,
            tokenizer,
            dtype=teacher_dtype,
            attn_implementation=attn_implementation,
            max_length=max_length,
            key=key,
        )
    if settings.kind == "frozen_8bit":
        replaced = quantize_linears_int8(model, settings.int8_threshold)
        log.info("teacher: %d decoder linear layers quantized to int8", replaced)
    teacher = Teacher(settings.kind, model)
    log.info(
        "teacher: %s, %s parameters",
        settings.kind,
        f"{sum(p.numel() for p in teacher.parameters()):,}",
    )
    return teacher
