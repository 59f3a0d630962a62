"""Loss layer of adaptlm: fused linear cross-entropy, distillation (KL / JSD / skew KL, logit swap), DPO.

The fused functions take hidden states and LM-head weights and never materialize the ``[tokens, vocab]``
logits: they work chunk by chunk and compute the gradient during the forward pass. The loss itself is
described by one typed, validated `LossSpec`; optional per-token weights scale each row's loss.
`losses.reference` holds the plain definitions they are tested against. See docs/losses.md.

This package imports nothing else from adaptlm, and imports triton only when its kernels run.
"""

from . import reference
from ._common import DIVERGENCES, REDUCTIONS, LossSpec
from .fused import (
    fused_distillation_loss,
    fused_linear_cross_entropy,
    fused_linear_distillation_loss,
    native_linear_cross_entropy_available,
)
from .preference import DPO_LOSS_TYPES, DPOOutput, dpo_loss, sequence_log_probs

__all__ = [
    "DIVERGENCES",
    "DPO_LOSS_TYPES",
    "REDUCTIONS",
    "DPOOutput",
    "LossSpec",
    "dpo_loss",
    "fused_distillation_loss",
    "fused_linear_cross_entropy",
    "fused_linear_distillation_loss",
    "native_linear_cross_entropy_available",
    "reference",
    "sequence_log_probs",
]
