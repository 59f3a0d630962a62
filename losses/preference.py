r"""Preference losses on summed sequence log-probabilities (DPO and its usual variants).

With ``π_c, π_r`` the policy's log-probabilities of the chosen and rejected responses and ``ρ_c, ρ_r``
the frozen reference model's, the DPO margin is

    h = (π_c − π_r) − (ρ_c − ρ_r)          (reference-free: h = π_c − π_r)

and, with σ the logistic function, β > 0 and label smoothing ε:

=========  ===========================================================  ================================
loss_type  per-pair loss                                                source
=========  ===========================================================  ================================
sigmoid    −(1−ε) log σ(βh) − ε log σ(−βh)                              DPO (Rafailov et al. 2023); ε > 0
                                                                        is conservative DPO (cDPO)
robust     [−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε)                 robust DPO (Chowdhury et al. 2024)
hinge      max(0, 1 − βh)                                               SLiC-HF / RSO
ipo        (h − 1/(2β))²                                                IPO (Azar et al. 2023), on
                                                                        length-averaged log-probs
                                                                        (``average_log_prob=True``)
=========  ===========================================================  ================================

The implicit rewards ``β(π_c − ρ_c)`` and ``β(π_r − ρ_r)`` are returned detached, for logging.

`sequence_log_probs` computes ``Σ_t log p(y_t | …)`` per sequence from the final hidden states and the
LM head, through the fused cross-entropy, so the ``[B·T, V]`` logits are never materialized.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .fused import fused_linear_cross_entropy

__all__ = ["DPO_LOSS_TYPES", "DPOOutput", "dpo_loss", "sequence_log_probs"]

DPO_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")


class DPOOutput(NamedTuple):
    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor | None = None,
    reference_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    average_log_prob: bool = False,
    reduction: str = "mean",
) -> DPOOutput:
    """DPO-family loss from per-sequence log-probabilities of shape (B,).

    Args:
        policy_chosen_logps, policy_rejected_logps: the trained model's summed (for IPO:
            length-averaged) log-probabilities of each pair's chosen and rejected response.
        reference_chosen_logps, reference_rejected_logps: the same under the frozen reference model;
            required unless ``reference_free``.
        beta: β > 0 (the KL-penalty strength; for IPO the regularization τ of the paper).
        loss_type: one of ``sigmoid``, ``robust``, ``hinge``, ``ipo`` (see the module docstring).
        label_smoothing: ε, the assumed label-flip probability, for ``sigmoid`` (cDPO) and ``robust``.
        reference_free: drop the reference terms (a uniform reference model).
        average_log_prob: the caller's statement that the log-probabilities are length-averaged
            (``sequence_log_probs(..., average=True)``). Required by ``loss_type="ipo"``: IPO's target
            margin 1/(2β) is defined on length-averaged log-probs (as in TRL), and on summed ones the
            same formula silently optimizes a different objective.
        reduction: ``mean``, ``sum`` or ``none`` over pairs.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(
            f"label_smoothing applies to the sigmoid and robust losses, not {loss_type!r}"
        )
    if loss_type == "ipo" and not average_log_prob:
        raise ValueError(
            "loss_type='ipo' needs length-averaged log-probs: compute them with "
            "sequence_log_probs(..., average=True) and pass average_log_prob=True"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if reference_free:
        ref_chosen = torch.zeros_like(policy_chosen_logps)
        ref_rejected = torch.zeros_like(policy_rejected_logps)
    else:
        if reference_chosen_logps is None or reference_rejected_logps is None:
            raise ValueError(
                "pass reference_chosen_logps and reference_rejected_logps, or reference_free=True"
            )
        ref_chosen = reference_chosen_logps.detach()
        ref_rejected = reference_rejected_logps.detach()

    margin = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen - ref_rejected)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * margin) - eps * F.logsigmoid(-beta * margin)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * margin) + eps * F.logsigmoid(-beta * margin)) / (
            1 - 2 * eps
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * margin)
    else:  # ipo
        losses = (margin - 1 / (2 * beta)) ** 2

    if reduction == "mean":
        loss = losses.mean()
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected).detach()
    return DPOOutput(loss, chosen_rewards, rejected_rewards)


def sequence_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    average: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-sequence log-probability of the labels from hidden states, without materializing the logits.

    Args:
        hidden: (B, T, H) final hidden states; position t predicts ``labels[:, t]`` (already shifted).
        weight, bias: the LM head (V, H) and optional bias (V,).
        labels: (B, T); ``ignore_index`` marks prompt and padding positions.
        average: divide each sum by the sequence's number of labelled positions (0 when it has none).
        chunk_size, backend: as in `losses.fused_linear_cross_entropy`.

    Returns:
        (B,) fp32 tensor; differentiable w.r.t. ``hidden``, ``weight`` and ``bias`` (call it under
        ``torch.no_grad()`` for the reference model).
    """
    if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"expected hidden (B, T, H) and labels (B, T), got {tuple(hidden.shape)} and {tuple(labels.shape)}"
        )
    token_nll = fused_linear_cross_entropy(
        hidden,
        weight,
        labels,
        bias,
        ignore_index=ignore_index,
        reduction="none",
        chunk_size=chunk_size,
        backend=backend,
    )
    total = -token_nll.sum(-1)
    if average:
        return total / (labels != ignore_index).sum(-1).clamp(min=1).to(total.dtype)
    return total
