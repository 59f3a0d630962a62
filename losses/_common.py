"""Shared vocabulary of the losses package: the loss specification, argument checks, reductions, chunk sizes.

Nothing here touches the vocabulary dimension; the row math lives in `losses.rowwise` (torch) and
`losses.triton_kernels` (Triton), the chunk loop in `losses.fused`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")
REDUCTIONS = ("mean", "sum", "none")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LossSpec:
    """The loss of a method: ``ce_weight · CE + kl_weight · c · D(teacher ‖ student)`` per token.

    One typed, validated init argument for a method (LightningCLI shows these fields in ``--help``),
    taken by `losses.fused_linear_distillation_loss` and `losses.fused_distillation_loss` as
    ``spec=``. The default is plain cross-entropy. Invalid values raise ``ValueError`` at construction.

    Args:
        ce_weight: Weight of the token cross-entropy on the raw student logits (0 for pure
            distillation, e.g. DiSC).
        kl_weight: Weight of the divergence to the teacher; non-zero needs a teacher. With a teacher
            and ``kl_weight=0`` the divergence is still computed for logging, with no gradient.
        divergence: ``forward_kl`` (KL(teacher ‖ student)), ``reverse_kl``, ``jsd`` (generalized JSD,
            mixture weight ``beta`` on the teacher; β=0 / β=1 mean forward / reverse KL, the TRL
            convention), ``skew_forward_kl`` / ``skew_reverse_kl`` (DistiLLM's skew KLs, α = ``beta``).
        beta: Mixture weight in [0, 1] of ``jsd`` and the skew KLs (ignored by the plain KLs); the
            skew KLs refuse β = 1, where they are identically 0.
        temperature: τ > 0 dividing both logit sets inside the divergence (never the CE).
        scale_by_temperature_squared: Multiply the divergence by τ² (DiSC; Hinton et al.); off
            matches TRL and Liger.
        logit_swap: Per row, exchange the teacher's largest logit (first argmax) with the label's
            logit before its softmax (Mix-CPT's LSSD); a no-op where they coincide.
        chunk_size: Rows per chunk of the fused loop; None picks one from the vocabulary size and
            device (see `losses._common.default_chunk_size`).
    """

    ce_weight: float = 1.0
    kl_weight: float = 0.0
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"] = (
        "forward_kl"
    )
    beta: float = 0.5
    temperature: float = 1.0
    scale_by_temperature_squared: bool = False
    logit_swap: bool = False
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("ce_weight", "kl_weight"):
            value = getattr(self, name)
            if not _finite_number(value):
                raise ValueError(f"LossSpec.{name} must be a finite number, got {value!r}")
        if not (_finite_number(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"LossSpec.temperature must be a finite number > 0, got {self.temperature!r}"
            )
        if self.divergence not in DIVERGENCES:
            raise ValueError(
                f"LossSpec.divergence must be one of {DIVERGENCES}, got {self.divergence!r}"
            )
        if not (_finite_number(self.beta) and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"LossSpec.beta must lie in [0, 1], got {self.beta!r}")
        if self.divergence.startswith("skew_") and self.beta == 1.0:
            raise ValueError(
                f"LossSpec.beta=1 makes {self.divergence} identically 0; use 0 <= beta < 1 "
                "(DistiLLM uses 0.1)"
            )
        for name in ("scale_by_temperature_squared", "logit_swap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LossSpec.{name} must be a bool, got {getattr(self, name)!r}")
        if self.chunk_size is not None and not (
            isinstance(self.chunk_size, int)
            and not isinstance(self.chunk_size, bool)
            and self.chunk_size > 0
        ):
            raise ValueError(
                f"LossSpec.chunk_size must be a positive int or None, got {self.chunk_size!r}"
            )

    @property
    def uses_teacher(self) -> bool:
        """True when the divergence contributes to the loss (``kl_weight != 0``)."""
        return self.kl_weight != 0


@dataclass(frozen=True)
class RowSpec:
    """Internal, resolved form of a `LossSpec` for the row step (frozen and hashable, for kernels).

    ``divergence`` is resolved: ``jsd`` never carries β ∈ {0, 1} here (mapped to ``forward_kl`` /
    ``reverse_kl``, the TRL/Liger convention), nor do the skew KLs β = 0. ``kl_scale`` is τ² or 1.
    ``has_teacher`` is False for plain CE.
    """

    ce_weight: float = 1.0
    kl_weight: float = 0.0
    divergence: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    kl_scale: float = 1.0
    logit_swap: bool = False
    has_teacher: bool = False

    @property
    def kl_grad_coef(self) -> float:
        """Factor turning ∂D/∂(z/τ) into the ∂loss/∂z contribution: ``kl_weight · kl_scale / τ``."""
        return self.kl_weight * self.kl_scale / self.temperature


def resolve_divergence(divergence: str, beta: float) -> str:
    """Check ``divergence``/``beta`` and map ``jsd`` at β=0 / β=1 to forward / reverse KL (TRL convention)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if divergence == "jsd" and beta == 0.0:
        return "forward_kl"
    if divergence == "jsd" and beta == 1.0:
        return "reverse_kl"
    if divergence.startswith("skew_"):
        if beta == 1.0:
            raise ValueError(
                f"{divergence} with beta=1 is identically 0; use 0 <= beta < 1 (DistiLLM uses 0.1)"
            )
        if beta == 0.0:  # the mixture is the other distribution itself
            return divergence.removeprefix("skew_")
    return divergence


def as_loss_spec(spec: LossSpec | None) -> LossSpec:
    """``None`` → the default `LossSpec` (plain CE); anything but a `LossSpec` is refused."""
    if spec is None:
        return LossSpec()
    if not isinstance(spec, LossSpec):
        raise ValueError(f"spec must be a losses.LossSpec or None, got {type(spec).__name__}")
    return spec


def row_spec(spec: LossSpec, *, has_teacher: bool) -> RowSpec:
    """Resolve a (validated) `LossSpec` into the `RowSpec` of the row step."""
    if spec.uses_teacher and not has_teacher:
        raise ValueError(
            f"LossSpec.kl_weight is {spec.kl_weight} but no teacher was given: pass teacher_hidden and "
            "teacher_weight (or teacher_logits), or use kl_weight=0.0 for plain cross-entropy"
        )
    return RowSpec(
        ce_weight=float(spec.ce_weight),
        kl_weight=float(spec.kl_weight),
        divergence=resolve_divergence(spec.divergence, spec.beta),
        beta=float(spec.beta),
        temperature=float(spec.temperature),
        kl_scale=float(spec.temperature) ** 2 if spec.scale_by_temperature_squared else 1.0,
        logit_swap=spec.logit_swap,
        has_teacher=has_teacher,
    )


def check_token_weights(
    token_weights: torch.Tensor | None, labels: torch.Tensor, device: torch.device
) -> torch.Tensor | None:
    """Per-token weights of the shape of ``labels``, float, on the inputs' device → flat, detached."""
    if token_weights is None:
        return None
    if not isinstance(token_weights, torch.Tensor) or not token_weights.is_floating_point():
        got = (
            token_weights.dtype if isinstance(token_weights, torch.Tensor) else type(token_weights)
        )
        raise ValueError(f"token_weights must be a floating-point tensor, got {got}")
    if tuple(token_weights.shape) != tuple(labels.shape):
        raise ValueError(
            f"token_weights has shape {tuple(token_weights.shape)} but labels has "
            f"{tuple(labels.shape)}; pass one weight per label"
        )
    if token_weights.device != device:
        raise ValueError(
            f"token_weights is on {token_weights.device} but the inputs are on {device}"
        )
    return token_weights.detach().reshape(-1)


def check_reduction(reduction: str, normalizer) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if normalizer is not None and reduction != "mean":
        raise ValueError(
            f"normalizer replaces the denominator of reduction='mean'; got reduction={reduction!r}. "
            "Use reduction='mean' with normalizer=<token count>, or reduction='sum' and divide yourself"
        )


def flatten_rows(hidden: torch.Tensor, name: str) -> torch.Tensor:
    """(…, H) → (N, H) without a copy when possible."""
    if hidden.dim() < 2:
        raise ValueError(f"{name} must have shape (N, H) or (B, T, H), got {tuple(hidden.shape)}")
    return hidden.reshape(-1, hidden.shape[-1])


def check_linear(hidden: torch.Tensor, weight: torch.Tensor, bias, who: str = "") -> None:
    """Shapes of one LM head: hidden (N, H), weight (V, H), bias (V,); ``who`` prefixes the names."""
    h, w, b = (f"{who}_{name}" if who else name for name in ("hidden", "weight", "bias"))
    if weight.dim() != 2:
        raise ValueError(f"{w} must be (vocab, hidden), got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{h} has hidden size {hidden.shape[-1]} but {w} has shape "
            f"{tuple(weight.shape)} (expected (vocab, {hidden.shape[-1]}))"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{b} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if hidden.device != weight.device:
        raise ValueError(f"{h} is on {hidden.device} but {w} is on {weight.device}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"{h} is {hidden.dtype} but {w} is {weight.dtype}; cast one of them")


def check_same_vocab(student_vocab: int, teacher_vocab: int) -> None:
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"vocabulary mismatch: the student head has {student_vocab} rows, the teacher head "
            f"{teacher_vocab}. Distillation needs one shared vocabulary: if the teacher's head is only "
            f"padded, slice it (teacher_weight[:{student_vocab}])"
        )


def check_labels(labels: torch.Tensor, n_rows: int) -> torch.Tensor:
    """labels (N,) or (B, T) integer → flat (N,)."""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    flat = labels.reshape(-1)
    if flat.numel() != n_rows:
        raise ValueError(
            f"labels has {flat.numel()} elements but the hidden states have {n_rows} rows; labels must "
            "already be shifted so that row i of the hidden states predicts labels[i]"
        )
    return flat.long()


def valid_rows(
    labels: torch.Tensor, ignore_index: int, vocab: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Indices of the rows whose label is not ``ignore_index`` (None when all are valid) and their labels.

    This is the one host synchronisation of a fused call: the number of valid rows fixes the loop.
    """
    keep = labels != ignore_index
    n_valid = int(keep.sum())
    if n_valid == labels.numel():
        idx, y = None, labels
    else:
        idx = keep.nonzero().squeeze(1)
        y = labels.index_select(0, idx)
    out_of_range = (y < 0) | (y >= vocab)
    if n_valid and bool(out_of_range.any()):
        bad = y[out_of_range][0].item()
        raise ValueError(
            f"label {bad} is outside the vocabulary [0, {vocab}) and is not ignore_index={ignore_index}"
        )
    return idx, y


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def default_chunk_size(n_rows: int, vocab: int, device: torch.device) -> int:
    """Rows per chunk: the largest power of two whose fp32 ``[chunk, vocab]`` buffer fits a byte budget
    (64 MiB on CPU, 256 MiB on GPU), kept within [512, 1024] rows on CPU and [256, 4096] on GPU.

    Each chunk streams the whole LM head through three GEMMs, whose efficiency grows with the chunk's
    row count (on a 2-core AVX-512 CPU, 128 rows ran at about 60% of the rate of 512 rows), and reads
    and writes the whole fp32 weight gradient once; the floor keeps this efficient, the budget keeps
    the two logit buffers (student, teacher) small next to the weight gradient. The row step works on
    smaller blocks inside a chunk (see `losses.rowwise`).
    """
    if n_rows <= 0:
        return 1
    budget, floor, cap = (
        (256 * 2**20, 256, 4096) if device.type == "cuda" else (64 * 2**20, 512, 1024)
    )
    fits = max(1, budget // (4 * max(vocab, 1)))
    rows = 1 << (fits.bit_length() - 1)  # largest power of two ≤ fits
    return max(1, min(n_rows, max(floor, min(rows, cap))))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (gradcheck); everything else is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
