"""Plain, materializing definitions of every loss in the package: the ground truth of the tests.

Everything here builds the full ``[tokens, vocab]`` logits and lets autograd differentiate. It is
written to be read, not to be fast. The fused implementations (`losses.fused`) must agree with these
functions for the loss and for every gradient.

Conventions (shared with the fused code):

* Row ``i`` of the hidden states / logits predicts ``labels[i]`` (labels are already shifted).
  Rows whose label equals ``ignore_index`` contribute nothing, to either term.
* Cross-entropy uses the raw logits. The divergence uses ``s = z_student / τ`` and ``t = z̃_teacher / τ``,
  where ``z̃_teacher`` is the teacher's logits after the optional logit swap; ``q = softmax(s)`` is the
  student's distribution and ``p = softmax(t)`` the teacher's.
* Divergences (summed over the vocabulary, per token), following TRL's ``generalized_jsd_loss``:

  ``forward_kl``       KL(p ‖ q) = Σ p (log p − log q)
  ``reverse_kl``       KL(q ‖ p) = Σ q (log q − log p)
  ``jsd``              β·KL(p ‖ m) + (1−β)·KL(q ‖ m),  m = β·p + (1−β)·q;
                       β = 0 means forward KL and β = 1 reverse KL (the TRL/Liger convention, not a limit)
  ``skew_forward_kl``  KL(p ‖ β·p + (1−β)·q)      (DistiLLM's skew KL with α = β)
  ``skew_reverse_kl``  KL(q ‖ β·q + (1−β)·p)      (DistiLLM's skew reverse KL with α = β)

* Per token: ``ce_weight · CE + kl_weight · c · D`` with ``c = τ²`` if ``scale_by_temperature_squared``
  else 1 (all options from one `losses.LossSpec`). Reductions: ``sum``; ``mean`` = sum / (number of
  non-ignored tokens), which is 0 (with zero gradients) for an all-ignored batch — unlike
  ``torch.nn.functional.cross_entropy``, which returns NaN; ``mean`` with ``normalizer=n`` = sum / n;
  ``none`` = the per-token values (0 on ignored rows).
* Token weights ``w`` (constants): each token's loss is multiplied by ``w`` first; ``sum`` = Σ w·loss,
  ``mean`` = Σ w·loss / Σ w over non-ignored tokens (0 when that is 0) or / ``normalizer``, ``none`` =
  w·loss per token.
* ``return_parts=True`` also returns ``{"ce": …, "kl": …}``, detached, each reduced like the loss and
  such that ``loss = ce_weight · parts["ce"] + kl_weight · parts["kl"]`` (``kl`` includes ``c``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import LossSpec, as_loss_spec, check_reduction, resolve_divergence

__all__ = [
    "cross_entropy",
    "distillation_loss",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "sequence_log_probs",
    "swap_teacher_logits",
    "token_divergence",
]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def swap_teacher_logits(
    teacher_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
):
    """Logit swap (Mix-CPT's LSSD): per non-ignored row, the teacher's largest logit and the label's trade places.

    With ``a`` the *first* index of the row maximum, ``z[a]`` and ``z[y]`` are exchanged; when ``a == y``
    nothing changes, and when the label's logit ties the maximum the swap exchanges equal values. Since
    it is a permutation of the row, the row's max and log-sum-exp do not change. Returns a new tensor.
    """
    z = teacher_logits.clone()
    rows = (labels != ignore_index).nonzero().squeeze(1)
    y = labels[rows]
    a = z[rows].argmax(dim=-1)  # torch returns the first maximal index
    z_y = z[rows, y]
    z_a = z[rows, a]
    z[rows, a] = z_y
    z[rows, y] = z_a
    return z


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-row divergence D(teacher ‖ student) at temperature τ, summed over the vocabulary: shape (N,)."""
    divergence = resolve_divergence(divergence, beta)
    log_q = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(_upcast(teacher_logits) / temperature, dim=-1)

    # F.kl_div(input=log a, target=log b, log_target=True) is Σ b (log b − log a) = KL(b ‖ a).
    def kl(log_a, log_b):
        return F.kl_div(log_a, log_b, reduction="none", log_target=True).sum(-1)

    def log_mix(log_x, log_y, w):  # log(w·x + (1−w)·y), exact at w ∈ {0, 1}
        if w == 1.0:
            return log_x
        if w == 0.0:
            return log_y
        return torch.logsumexp(torch.stack([log_x + math.log(w), log_y + math.log(1 - w)]), dim=0)

    if divergence == "forward_kl":
        return kl(log_q, log_p)
    if divergence == "reverse_kl":
        return kl(log_p, log_q)
    if divergence == "jsd":
        log_m = log_mix(log_p, log_q, beta)
        return beta * kl(log_m, log_p) + (1 - beta) * kl(log_m, log_q)
    if divergence == "skew_forward_kl":
        return kl(log_mix(log_p, log_q, beta), log_p)
    # skew_reverse_kl
    return kl(log_mix(log_q, log_p, beta), log_q)


def _reduce(per_token: torch.Tensor, valid: torch.Tensor, reduction: str, normalizer, weights):
    if weights is not None:
        per_token = per_token * weights
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        return total / normalizer
    if weights is None:
        return total / valid.sum().clamp(min=1)
    denom = torch.where(valid, weights, torch.zeros_like(weights)).sum()
    return torch.where(denom != 0, total / torch.where(denom != 0, denom, 1.0), 0.0)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    spec: LossSpec | None = None,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer=None,
    return_parts: bool = False,
):
    """``ce_weight · CE(student, labels) + kl_weight · D(teacher ‖ student)`` from full logits (N, V).

    ``spec=None`` is ``LossSpec()`` (plain CE); ``spec.chunk_size`` is ignored here.
    """
    spec = as_loss_spec(spec)
    check_reduction(reduction, normalizer)
    labels_shape = labels.shape
    labels = labels.reshape(-1)
    student = _upcast(student_logits.reshape(-1, student_logits.shape[-1]))
    weights = None
    if token_weights is not None:
        weights = token_weights.detach().reshape(-1).to(student.dtype)
    valid = labels != ignore_index
    ce = F.cross_entropy(student, labels, ignore_index=ignore_index, reduction="none")
    if teacher_logits is None:
        if spec.uses_teacher:
            raise ValueError("LossSpec.kl_weight is non-zero but no teacher logits were given")
        kl = torch.zeros_like(ce)
    else:
        teacher = _upcast(teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]))
        if spec.logit_swap:
            teacher = swap_teacher_logits(teacher, labels, ignore_index)
        kl = token_divergence(student, teacher, spec.divergence, spec.beta, spec.temperature)
        if spec.scale_by_temperature_squared:
            kl = kl * spec.temperature**2
        kl = torch.where(valid, kl, torch.zeros_like(kl))
    per_token = spec.ce_weight * ce + spec.kl_weight * kl
    loss = _reduce(per_token, valid, reduction, normalizer, weights)
    if reduction == "none":
        loss = loss.reshape(labels_shape)
    if not return_parts:
        return loss
    parts = {
        "ce": _reduce(ce.detach(), valid, reduction, normalizer, weights),
        "kl": _reduce(kl.detach(), valid, reduction, normalizer, weights),
    }
    return loss, parts


def linear_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    **kwargs,
):
    """`distillation_loss` on ``F.linear`` logits (the teacher's under ``no_grad``)."""
    student_logits = F.linear(
        student_hidden.reshape(-1, student_hidden.shape[-1]), student_weight, student_bias
    )
    teacher_logits = None
    if teacher_hidden is not None:
        with torch.no_grad():
            teacher_logits = F.linear(
                teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), teacher_weight, teacher_bias
            )
    return distillation_loss(student_logits, teacher_logits, labels, **kwargs)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer=None,
) -> torch.Tensor:
    """Token cross-entropy in fp32 with this package's reductions (all-ignored mean is 0, not NaN)."""
    return distillation_loss(
        logits,
        None,
        labels,
        token_weights=token_weights,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
    )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer=None,
) -> torch.Tensor:
    """`cross_entropy` of ``F.linear(hidden, weight, bias)``."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
    return cross_entropy(
        logits,
        labels,
        token_weights=token_weights,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
    )


def sequence_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Per-sequence Σ_t log softmax(logits[b, t])[labels[b, t]] over non-ignored positions: (B, T, V) → (B,).

    ``average=True`` divides by the number of non-ignored positions of each sequence (0 when none).
    """
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    valid = labels != ignore_index
    token = logp.gather(-1, labels.clamp(min=0).masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)
    token = torch.where(valid, token, torch.zeros_like(token))
    total = token.sum(-1)
    if average:
        return total / valid.sum(-1).clamp(min=1)
    return total
