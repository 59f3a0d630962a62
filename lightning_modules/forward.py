"""The student's root module: decoder, teacher pass and fused LM-head loss in ONE forward.

Under FSDP2 (`fully_shard`) and FSDP1 a parameter is whole only inside the forward of the module
that owns it; read from a training step, the LM head's weight is a DTensor shard (FSDP2) or an empty
flat-parameter view (FSDP1). So the decoder, the teacher's pass and the fused loss run inside
`CausalLMWithLoss.forward` — the module that owns the embeddings, the final norm and the head (the
root unit; the decoder layers are units of their own) — as Liger's model patches, torchtune's
`skip_output_layer` and OLMo-core's `LMHead.forward(labels=...)` do. The same code then runs on one
CPU, under DDP, and sharded.

Alignment (labels are unshifted, HF convention): the hidden state at position `t` predicts
`labels[:, t + 1]` with weight `loss_weights[:, t + 1]`. The teacher's hidden state aligned with
student position `t` is the teacher's own position `t` when it reads the student's inputs, or the row
`teacher_rows[b, t]` of its flattened `[B_t · L_t, H_t]` hidden states when it reads other inputs
(DiSC: the teacher reads the whole document once, the student only the target sentence).

Per-token weights that depend on the student's own losses (TALR) come from `token_weight_fn`: the
forward computes the per-token CE (`reduction="none"`), calls the function on the detached NLLs and
multiplies the CE by its (detached) result, all in the same single decoder pass.

Two more outputs serve the methods that need them, still in one decoder pass:

- `distill_mask` (Mix-CPT's per-source LSSD): the distillation term applies only at the marked
  targets; the others get plain CE. The teacher reads only the rows that hold a marked target.
- `per_row` (DPO, format-alignment scoring): the weighted CE of every row, with its gradient, and
  the teacher's (reference model's) row CE on the same labels, without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common import IGNORE_INDEX
from lightning_modules.modeling import decoder_hidden_states, decoder_layers, output_head
from lightning_modules.teacher import Teacher
from losses import LossSpec, fused_linear_cross_entropy, fused_linear_distillation_loss

TokenWeightFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""`(nll, valid, position_ids) -> weights`, all `[B, L-1]` and aligned with the targets
`labels[:, 1:]`: `nll` the detached per-token CE (0 where ignored), `valid` the bool mask of target
tokens, `position_ids` the positions of the target tokens (`position_ids[:, 1:]`) or None. The
weights are treated as constants (computed under `no_grad`, detached); their values where `valid` is
False are ignored."""


@dataclass
class TeacherInputs:
    """What the teacher reads when it is not the student's own batch.

    Args:
        input_ids: `[B_t, L_t]` token ids of the teacher's rows.
        position_ids: `[B_t, L_t]` positions (restarting per document), or None.
        attention_mask: `[B_t, L_t]` (used only without `position_ids`), or None.
        rows: `[B, L]` long: for student position `t` of row `b`, the index into the teacher's
            flattened hidden states `[B_t · L_t]` of the aligned position (any value where the
            student position carries no loss).
    """

    input_ids: Tensor
    rows: Tensor
    position_ids: Tensor | None = None
    attention_mask: Tensor | None = None


class CausalLMWithLoss(nn.Module):
    """Wraps a causal LM (transformers or peft) so that `forward` returns summed, weighted losses.

    Args:
        model: The student (`PreTrainedModel` or peft `PeftModel`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor,
        spec: LossSpec,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        loss_weights: Tensor | None = None,
        teacher: Teacher | None = None,
        teacher_inputs: TeacherInputs | None = None,
        token_weight_fn: TokenWeightFn | None = None,
        distill_mask: Tensor | None = None,
        per_row: bool = False,
    ) -> dict[str, Tensor]:
        """`{"loss": Σ w·(ce_weight·CE + kl_weight·D), "ce": Σ w·CE, "kl": Σ w·D}` over target tokens.

        Sums, not means: the caller divides by the optimizer step's total weight, which keeps the
        objective exact under accumulation and world size. `"kl"` is present only with a teacher.

        With `token_weight_fn` (no teacher, `kl_weight == 0`): `{"loss": ce_weight · Σ w·a·CE,
        "ce": Σ w·CE, "token_weight": Σ w·a}`, where `a = token_weight_fn(...)` is detached (see
        `TokenWeightFn`) and `w` the `loss_weights`; `"ce"` and `"token_weight"` carry no gradient.

        With `distill_mask` (`[B, L]` bool aligned with `labels`, a teacher): the targets where it
        is True get `ce_weight·CE + kl_weight·D`, the others plain CE (weight 1, so a `replace`
        spec with `ce_weight == 0` still trains them); `"kl"` sums over the marked targets only.

        With `per_row` (`kl_weight == 0`): also `"row_ce"` `[B]` = Σ w·CE of each row (with its
        gradient; `"loss"` is `ce_weight` times its sum) and, with a teacher, `"teacher_row_ce"`
        `[B]`, the teacher's row CE on the same labels and weights (no gradient).
        """
        if token_weight_fn is not None and (teacher is not None or spec.kl_weight != 0):
            raise ValueError("token_weight_fn is supported for CE without a teacher only")
        if per_row:
            return self._per_row(
                input_ids, labels, spec, position_ids, attention_mask, loss_weights, teacher
            )
        if distill_mask is not None:
            if teacher is None or teacher_inputs is not None:
                raise ValueError("distill_mask needs a teacher reading the student's own rows")
            return self._masked_distillation(
                input_ids,
                labels,
                spec,
                position_ids,
                attention_mask,
                loss_weights,
                teacher,
                distill_mask,
            )
        teacher_hidden = None
        if teacher is not None:
            source = teacher_inputs
            if source is None:
                teacher_hidden = teacher.hidden_states(input_ids, position_ids, attention_mask)
                teacher_hidden = teacher_hidden[:, :-1]
            else:
                full = teacher.hidden_states(
                    source.input_ids, source.position_ids, source.attention_mask
                )
                flat = full.reshape(-1, full.shape[-1])
                rows = source.rows[:, :-1].clamp(0, flat.shape[0] - 1)
                teacher_hidden = flat[rows.reshape(-1)].reshape(*rows.shape, -1)
        hidden = decoder_hidden_states(self.model, input_ids, position_ids, attention_mask)
        weight, bias = output_head(self.model)
        targets = labels[:, 1:]
        weights = loss_weights[:, 1:] if loss_weights is not None else None
        if teacher_hidden is None:
            if spec.kl_weight != 0:
                raise ValueError(
                    "the loss spec has kl_weight != 0 but the module has no teacher: set "
                    "model.init_args.teacher, or loss.kl_weight: 0"
                )
            if token_weight_fn is not None:
                return _adaptive_cross_entropy(
                    hidden[:, :-1],
                    weight,
                    bias,
                    targets,
                    weights,
                    position_ids[:, 1:] if position_ids is not None else None,
                    spec,
                    token_weight_fn,
                )
            ce = fused_linear_cross_entropy(
                hidden[:, :-1],
                weight,
                targets,
                bias,
                token_weights=weights,
                ignore_index=IGNORE_INDEX,
                reduction="sum",
                chunk_size=spec.chunk_size,
            )
            return {"loss": ce * spec.ce_weight, "ce": ce.detach()}
        teacher_weight, teacher_bias = teacher.head()
        loss, parts = fused_linear_distillation_loss(
            hidden[:, :-1],
            weight,
            targets,
            spec=spec,
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            student_bias=bias,
            teacher_bias=teacher_bias,
            token_weights=weights,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            return_parts=True,
        )
        return {"loss": loss, "ce": parts["ce"], "kl": parts["kl"]}

    def _per_row(
        self,
        input_ids: Tensor,
        labels: Tensor,
        spec: LossSpec,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        loss_weights: Tensor | None,
        teacher: Teacher | None,
    ) -> dict[str, Tensor]:
        """The `per_row` outputs of `forward`: row CE sums of the student (and of the teacher)."""
        if spec.kl_weight != 0:
            raise ValueError("per_row gives CE sums only: use a spec with kl_weight == 0")
        targets = labels[:, 1:]
        weights = loss_weights[:, 1:] if loss_weights is not None else None
        outputs: dict[str, Tensor] = {}
        if teacher is not None:
            with torch.no_grad():
                hidden_t = teacher.hidden_states(input_ids, position_ids, attention_mask)
                weight_t, bias_t = teacher.head()
                outputs["teacher_row_ce"] = _row_cross_entropy(
                    hidden_t[:, :-1], weight_t, bias_t, targets, weights, spec
                )
        hidden = decoder_hidden_states(self.model, input_ids, position_ids, attention_mask)
        weight, bias = output_head(self.model)
        row_ce = _row_cross_entropy(hidden[:, :-1], weight, bias, targets, weights, spec)
        total = row_ce.sum()
        outputs.update(loss=total * spec.ce_weight, ce=total.detach(), row_ce=row_ce)
        return outputs

    def _masked_distillation(
        self,
        input_ids: Tensor,
        labels: Tensor,
        spec: LossSpec,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        loss_weights: Tensor | None,
        teacher: Teacher,
        distill_mask: Tensor,
    ) -> dict[str, Tensor]:
        """The `distill_mask` outputs of `forward`: the spec's loss on the marked targets, CE elsewhere."""
        if distill_mask.shape != labels.shape:
            raise ValueError(
                f"distill_mask has shape {tuple(distill_mask.shape)}, labels {tuple(labels.shape)}"
            )
        targets = labels[:, 1:]
        marked = distill_mask[:, 1:].to(torch.bool) & (targets != IGNORE_INDEX)
        weights = loss_weights[:, 1:] if loss_weights is not None else None
        rows = marked.any(dim=1).nonzero().squeeze(1)
        hidden = decoder_hidden_states(self.model, input_ids, position_ids, attention_mask)
        weight, bias = output_head(self.model)
        hidden = hidden[:, :-1]
        plain_targets = targets.masked_fill(marked, IGNORE_INDEX)
        if bool((plain_targets != IGNORE_INDEX).any()):
            ce_plain = fused_linear_cross_entropy(
                hidden,
                weight,
                plain_targets,
                bias,
                token_weights=weights,
                ignore_index=IGNORE_INDEX,
                reduction="sum",
                chunk_size=spec.chunk_size,
            )
        else:
            ce_plain = hidden.new_zeros((), dtype=torch.float32)
        if rows.numel() == 0 and not _forwards_are_collective():
            zero = ce_plain.detach().new_zeros(())
            return {"loss": ce_plain, "ce": ce_plain.detach(), "kl": zero}
        if _forwards_are_collective():
            # A sharded teacher (FSDP2 layers, or the sharded student with its adapters off)
            # all-gathers in its forward: every rank runs it on every micro-batch, marked or not.
            teacher_hidden = teacher.hidden_states(input_ids, position_ids, attention_mask)
            if rows.numel() == 0:
                zero = ce_plain.detach().new_zeros(())
                return {"loss": ce_plain, "ce": ce_plain.detach(), "kl": zero}
            teacher_hidden = teacher_hidden[rows][:, :-1]
        else:
            teacher_hidden = teacher.hidden_states(
                input_ids[rows],
                position_ids[rows] if position_ids is not None else None,
                attention_mask[rows] if attention_mask is not None else None,
            )[:, :-1]
        teacher_weight, teacher_bias = teacher.head()
        distill_targets = targets[rows].masked_fill(~marked[rows], IGNORE_INDEX)
        loss, parts = fused_linear_distillation_loss(
            hidden[rows],
            weight,
            distill_targets,
            spec=spec,
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            student_bias=bias,
            teacher_bias=teacher_bias,
            token_weights=weights[rows] if weights is not None else None,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            return_parts=True,
        )
        return {
            "loss": loss + ce_plain,
            "ce": parts["ce"] + ce_plain.detach(),
            "kl": parts["kl"],
        }


def _forwards_are_collective() -> bool:
    """True in a multi-process run, where a (sharded) model's forward may be a collective."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _row_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    loss_weights: Tensor | None,
    spec: LossSpec,
) -> Tensor:
    """`[B]`: Σ_t w_t · CE_t of each row (fused, `reduction="none"`; differentiable)."""
    nll = fused_linear_cross_entropy(
        hidden,
        weight,
        targets,
        bias,
        ignore_index=IGNORE_INDEX,
        reduction="none",
        chunk_size=spec.chunk_size,
    )
    if loss_weights is not None:
        nll = nll * torch.where(targets != IGNORE_INDEX, loss_weights.to(nll.dtype), 0.0)
    return nll.sum(dim=1)


def _adaptive_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    loss_weights: Tensor | None,
    positions: Tensor | None,
    spec: LossSpec,
    token_weight_fn: TokenWeightFn,
) -> dict[str, Tensor]:
    """Per-token CE weighted by `token_weight_fn` of its own detached values (see `forward`).

    The fused CE with `reduction="none"` computes the losses in forward and the gradient in
    backward from the per-token upstream gradient `ce_weight · w · a`: one decoder pass, the LM head
    run once in forward and once in backward, no `[N, V]` logits.
    """
    nll = fused_linear_cross_entropy(
        hidden,
        weight,
        targets,
        bias,
        ignore_index=IGNORE_INDEX,
        reduction="none",
        chunk_size=spec.chunk_size,
    )
    valid = targets != IGNORE_INDEX
    with torch.no_grad():
        detached = nll.detach()
        adaptive = token_weight_fn(detached, valid, positions).detach().to(detached.dtype)
        base = loss_weights.to(detached.dtype) if loss_weights is not None else 1.0
        zero = detached.new_zeros(())
        total = torch.where(valid, adaptive * base, zero)
        plain = torch.where(valid, detached * base, zero)
    return {
        "loss": (nll * total).sum() * spec.ce_weight,
        "ce": plain.sum(),
        "token_weight": total.sum(),
    }


def shard_with_fsdp2(
    root: CausalLMWithLoss,
    mesh: object,
    teacher: Teacher | None,
    reshard_after_forward: bool = True,
) -> None:
    """`fully_shard` every decoder layer, then the root (embeddings, final norm, LM head).

    An owned teacher has its decoder layers sharded the same way; its embeddings and head stay
    replicated (frozen, and read by the fused loss as a matrix).
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(root.model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward)
    if teacher is not None and teacher.kind != "adapters_disabled":
        for layer in decoder_layers(teacher.model):
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)


def count_targets(labels: Tensor) -> Tensor:
    """Target tokens of a batch (`labels[:, 1:] != -100`)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


__all__ = [
    "CausalLMWithLoss",
    "TeacherInputs",
    "TokenWeightFn",
    "count_targets",
    "shard_with_fsdp2",
]
