"""`TALRModule`: token-adaptive loss reweighting (TALR, Lin et al. 2025), a baseline of DiSC's paper.

Fine-tuning with CE on documents where each target token's CE is multiplied by a weight computed
from the current model and treated as a constant:

    w_t = clamp(p_t^(1/τ_s), min=min_weight) = clamp(exp(-nll_t / τ_s), min=min_weight)

with `p_t` the student's probability of the label and `τ_s` the NLL of the token's sequence `s`,
both recomputed at every step from the current student (no gradient). The paper calls `τ` "the
median per-sequence NLL"; the authors' code takes the median over the batch's sequences of each
sequence's mean NLL, with one document per batch, i.e. the document's mean NLL. That is the default
here (`tau_statistic: mean`), computed per document so that batching never changes it;
`tau_statistic: median` takes the median of the document's token NLLs instead. A
token the model finds surprising (`nll_t ≫ τ_s`) is down-weighted, so the update concentrates on
tokens the model already nearly predicts — TALR's way of keeping the model close to itself.

A *sequence* is a document: in packed rows a segment whose `position_ids` restart at 0 (see
`datamodules.packing`; a document cut across rows is one sequence per row), without `position_ids`
the whole row. The weights come from the same single decoder pass as the loss: the root module's
forward computes the per-token CE and calls `talr_token_weights` on its detached values
(`token_weight_fn` of `lightning_modules.forward.CausalLMWithLoss.forward`).

The objective is NOT renormalised by the weights: it stays `Σ loss_weights · w_t · CE / W_step`
with the base's step weight (target tokens, or the `loss_weights` total), as the reference's
`normalize="mean"` (divide by the target count). Since `w_t ≤ 1` the effective learning rate is
smaller than plain FT's; `train/talr_mean_weight` (`Σ loss_weights · w_t / W_step`, the mean weight
with the default step weight) shows by how much.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import torch
from torch import Tensor

from common import ConfigError
from lightning_modules.base import KEY, CausalLMModule, _as_dataclass
from losses import LossSpec

TauStatistic = Literal["median", "mean"]
TAU_STATISTICS = ("median", "mean")


def sequence_ids(shape: torch.Size, positions: Tensor | None, device: torch.device) -> Tensor:
    """`[B, L-1]` long ids, unique over the batch, of the sequence each target token belongs to.

    `positions` are the target tokens' positions (`position_ids[:, 1:]`): a new sequence starts at
    every 0. Without them every row is one sequence.
    """
    rows, length = shape
    row = torch.arange(rows, device=device).unsqueeze(1)
    if positions is None:
        return row.expand(rows, length) * (length + 1)
    inside = torch.cumsum((positions == 0).to(torch.long), dim=1)  # 0 .. L-1
    return row * (length + 1) + inside


def per_sequence_statistic(
    values: Tensor, valid: Tensor, sequences: Tensor, statistic: TauStatistic = "median"
) -> Tensor:
    """The `statistic` of `values` over the valid tokens of each sequence, broadcast to every token.

    `median` is `torch.nanquantile(q=0.5)`'s: the middle value for an odd count, the mean of the two
    middle values for an even one (not `torch.median`'s lower one). Entries where `valid` is False
    are 0 (their sequence may have no valid token).
    """
    out = torch.zeros_like(values)
    flat = values[valid]
    if flat.numel() == 0:
        return out
    _, inverse = torch.unique(sequences[valid], return_inverse=True)
    counts = torch.bincount(inverse)
    if statistic == "mean":
        sums = torch.zeros(counts.shape, dtype=values.dtype, device=values.device)
        sums.index_add_(0, inverse, flat)
        per_sequence = sums / counts.to(values.dtype)
    else:
        by_value = torch.argsort(flat, stable=True)
        order = by_value[torch.argsort(inverse[by_value], stable=True)]  # by sequence, then value
        ordered = flat[order]
        starts = torch.cumsum(counts, 0) - counts
        low = ordered[starts + (counts - 1) // 2]
        high = ordered[starts + counts // 2]
        per_sequence = torch.lerp(low, high, 0.5)
    out[valid] = per_sequence[inverse]
    return out


def talr_token_weights(
    nll: Tensor,
    valid: Tensor,
    positions: Tensor | None,
    *,
    min_weight: float = 0.01,
    tau_statistic: TauStatistic = "mean",
    tau_min: float = 1e-6,
) -> Tensor:
    """TALR's weights `clamp(exp(-nll_t / τ_s), min=min_weight)` (0 where not `valid`).

    Args:
        nll: `[B, L-1]` detached per-token NLL (the fused CE; 0 on ignored tokens).
        valid: `[B, L-1]` bool mask of target tokens.
        positions: `[B, L-1]` positions of the target tokens (`position_ids[:, 1:]`), or None
            (each row one sequence).
        min_weight: The floor of the weights.
        tau_statistic: `mean` (the sequence's mean NLL) or `median` (of its token NLLs; the
            mean of the two middle values for an even count).
        tau_min: `τ_s` is clamped to at least this (nats): a sequence the model predicts perfectly
            has `τ_s = 0`, and its tokens then get weight 1 (NLL 0) or `min_weight`. NLLs are
            clamped at 0 first, so round-off never gives a weight above 1.
    """
    with torch.no_grad():
        nll = nll.detach().clamp_min(0.0)
        sequences = sequence_ids(nll.shape, positions, nll.device)
        tau = per_sequence_statistic(nll, valid, sequences, tau_statistic).clamp_min(tau_min)
        weights = torch.exp(-nll / tau).clamp_min(min_weight)
        return torch.where(valid, weights, torch.zeros_like(weights))


class TALRModule(CausalLMModule):
    """Token-adaptive loss reweighting: CE whose tokens are weighted by the student's own current
    probability of them, `clamp(p_t^(1/τ_s), min=min_weight)`, `τ_s` the NLL of the token's
    document (its mean by default), the weights detached.

    Works with any document / sample datamodule (packed or not, `loss_weights` or not). Logged:
    `train/loss` (the TALR objective), `train/ce` (the unweighted CE, no gradient: logging only),
    `train/talr_mean_weight` (mean TALR weight of the step's targets). Validation perplexity is
    plain CE (the base's).

    Args:
        min_weight: Floor of the per-token weights (the paper's 0.01), in (0, 1].
        tau_statistic: How `τ_s` summarises the document's token NLLs: `mean` (default: what
            the authors' code computes for its one-document batches) or `median` (a literal
            reading of the paper's "median per-sequence NLL"; the mean of the two middle values
            for an even count).
        tau_min: Lower bound of `τ_s` in nats (guards a document predicted perfectly, `τ_s = 0`).
        chunk_size: Rows per chunk of the fused LM-head loss (None: chosen from vocabulary and
            device); the same as `loss.chunk_size`.
        **kwargs: The remaining `CausalLMModule` arguments (model source, dtype, lora, optimizer,
            lr_scheduler, `loss` with `kl_weight: 0`, ...). No teacher: TALR has no KL term.
    """

    def __init__(
        self,
        min_weight: float = 0.01,
        tau_statistic: TauStatistic = "mean",
        tau_min: float = 1e-6,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not (isinstance(min_weight, int | float) and 0.0 < min_weight <= 1.0):
            raise ConfigError(f"{KEY}.min_weight", f"must lie in (0, 1], got {min_weight!r}")
        if tau_statistic not in TAU_STATISTICS:
            raise ConfigError(
                f"{KEY}.tau_statistic", f"must be one of {TAU_STATISTICS}, got {tau_statistic!r}"
            )
        if not (isinstance(tau_min, int | float) and tau_min > 0.0):
            raise ConfigError(f"{KEY}.tau_min", f"must be a number > 0, got {tau_min!r}")
        if kwargs.get("teacher") is not None:
            raise ConfigError(
                f"{KEY}.teacher",
                "TALR has no teacher (its loss is CE with self-computed token weights); remove it",
            )
        spec = _as_dataclass(kwargs.pop("loss", None), LossSpec, f"{KEY}.loss") or LossSpec()
        if spec.kl_weight != 0:
            raise ConfigError(
                f"{KEY}.loss.kl_weight",
                f"is {spec.kl_weight} but TALR has no KL term (no teacher): set it to 0",
            )
        if chunk_size is not None:
            if spec.chunk_size not in (None, chunk_size):
                raise ConfigError(
                    f"{KEY}.chunk_size",
                    f"is {chunk_size} but loss.chunk_size is {spec.chunk_size}: set one of them",
                )
            try:
                spec = dataclasses.replace(spec, chunk_size=chunk_size)
            except ValueError as error:
                raise ConfigError(f"{KEY}.chunk_size", str(error)) from None
        super().__init__(loss=spec, **kwargs)
        self.token_weight_fn = functools.partial(
            talr_token_weights,
            min_weight=float(min_weight),
            tau_statistic=tau_statistic,
            tau_min=float(tau_min),
        )

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted sums `{"loss", "ce", "talr_mean_weight"}`: `loss = ce_weight · Σ lw·w_t·CE`,
        `ce = Σ lw·CE`, `talr_mean_weight = Σ lw·w_t` (`lw` the batch's `loss_weights`, else 1)."""
        parts = self.student_loss(batch, token_weight_fn=self.token_weight_fn)
        return {
            "loss": parts["loss"],
            "ce": parts["ce"],
            "talr_mean_weight": parts["token_weight"],
        }


__all__ = [
    "TALRModule",
    "per_sequence_statistic",
    "sequence_ids",
    "talr_token_weights",
]
