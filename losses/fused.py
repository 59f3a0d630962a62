r"""Fused, chunked losses on top of an LM head: the logits are never materialized for all tokens at once.

The algorithm (after Liger-Kernel's fused linear cross-entropy), for student hidden states ``X`` (N, H),
LM head ``W`` (V, H) and, for distillation, teacher hidden states ``X_t`` (N, H_t) and head ``W_t`` (V, H_t):

1. Drop the rows whose label is ``ignore_index``; their gradient rows are 0 and they cost no GEMM.
2. For each chunk of ``c`` valid rows:

   a. ``S = X[c] Wᵀ (+ b)`` into an fp32 buffer; ``T = X_t[c] W_tᵀ (+ b_t)`` likewise (no gradient);
   b. the row step — `losses.rowwise` in torch, `losses.triton_kernels` on CUDA — computes each row's
      CE and divergence and overwrites ``S`` with ``G = ∂loss/∂S`` (the formulas are in
      `losses.rowwise`), already multiplied by the row's share of the reduction;
   c. ``∂X[c] = G W`` and ``∂W += Gᵀ X[c]`` (fp32 accumulator), ``∂b += Σ_rows G``.

3. Backward only multiplies the stored gradients by the upstream scalar.

Peak memory is O(c · V) for the buffers plus the gradients themselves (``∂W`` is V × H); no
``[N, V]`` tensor is ever alive. With ``reduction="none"`` the upstream gradient is per token and only
known in backward, so forward computes the losses only and backward runs the chunk loop again.

Per-token weights (``token_weights``, constants) multiply each row's loss before the reduction; they
are folded into the row's gradient factor, so they cost nothing in the loop.

Dispatch: CUDA tensors use the Triton row kernel when triton is importable (else the torch row step,
with a one-time warning); CPU tensors always use the torch row step — except under the Triton
interpreter (``TRITON_INTERPRET=1``) with ``backend="triton"``, which the tests use. With
``backend="auto"`` any exception raised while importing, compiling or launching the kernel switches
the process to the torch row step, with a one-time warning naming the error.

Precision and autocast policy: inputs are used in their own dtype. Under ``torch.autocast`` for the
inputs' device, the functions run with autocast disabled and cast the hidden states, heads and biases
(fp32/fp16/bf16 ones) to the autocast dtype explicitly, so the GEMMs run in that dtype — the
autocast-eligible ``out=`` / in-place GEMMs of the loop would otherwise silently run in fp32. All
accumulations are fp32 (fp64 for fp64 inputs): on CUDA the bf16/fp16 GEMMs write fp32 directly
(``torch.mm(..., out_dtype=torch.float32, out=…)`` and ``torch.addmm(..., out_dtype=…)``: torch
2.13's ``aten::mm.dtype_out`` / ``addmm.dtype_out``, CUDA-only; probed once, otherwise a
low-precision product is added into the fp32 buffer). On CPU, which has
no fp32-output low-precision GEMM, the logits are a low-precision product upcast once (as the eager
``F.linear(x, W).float()``), the input gradient is a low-precision GEMM and the weight gradient an
fp32 GEMM of the fp32 logit gradient and the upcast hidden states of the chunk. Per-row factors stay
on the device or are Python floats: the loop makes no host↔device copy.

``-inf`` logits (a padded vocabulary masked by a bias of ``-inf``, or masked logits) are replaced by
the most negative finite logit that stays finite at the spec's temperature: such columns get
probability exactly 0 and contribute 0 to every term (no ``0·∞`` NaN), as if they were not there.

Under ``torch.compile`` the public functions run eagerly (a graph break, through
``torch.compiler.disable``) instead of being traced through their data-dependent chunk loop.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F

from ._common import (
    LossSpec,
    RowSpec,
    as_loss_spec,
    check_labels,
    check_linear,
    check_reduction,
    check_same_vocab,
    check_token_weights,
    compute_dtype,
    default_chunk_size,
    flatten_rows,
    row_spec,
    valid_rows,
)
from .rowwise import loss_rows_torch

__all__ = [
    "fused_distillation_loss",
    "fused_linear_cross_entropy",
    "fused_linear_distillation_loss",
    "native_linear_cross_entropy_available",
]

BACKENDS = ("auto", "torch", "triton")  # "native" is accepted by fused_linear_cross_entropy only


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


@functools.cache
def _triton_importable() -> bool:
    """True when ``import triton`` succeeds (any exception, not only ImportError, means no)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def _warn_no_triton_once() -> None:
    warnings.warn(
        "losses: triton is not installed, so the fused losses run their torch row step on CUDA "
        "(correct, but slower and with larger temporaries). Install it with `pip install triton` "
        "(or the `kernels` extra) for the Triton kernels.",
        RuntimeWarning,
        stacklevel=3,
    )


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_TRITON_FAILURE: list[BaseException] = []  # the error that switched backend="auto" to torch


def _triton_or_torch_row_step(s, t, y, spec: RowSpec, grad_scale=None):
    """The Triton row step; on any exception (import, compile, launch) the torch one, from then on.

    The first failure is reported once as a `RuntimeWarning` naming the error. Import and compile
    errors happen before the kernel touches ``s``, so the torch step runs on intact logits.
    """
    if not _TRITON_FAILURE:
        try:
            from .triton_kernels import loss_rows_triton

            return loss_rows_triton(s, t, y, spec, grad_scale)
        except Exception as exc:
            _TRITON_FAILURE.append(exc)
            warnings.warn(
                f"losses: the Triton row kernel failed ({type(exc).__name__}: {exc}); the fused "
                "losses use the torch row step for the rest of this process (correct, but slower). "
                "Pass backend='triton' to get the error raised instead.",
                RuntimeWarning,
                stacklevel=2,
            )
    return loss_rows_torch(s, t, y, spec, grad_scale)


def _row_step(backend: str, device: torch.device, dtype: torch.dtype):
    """The row-step function for a backend name and the tensors' device/dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return loss_rows_torch
    if backend == "auto":
        if device.type != "cuda" or dtype == torch.float64:
            return loss_rows_torch
        if not _triton_importable():
            _warn_no_triton_once()
            return loss_rows_torch
        return _triton_or_torch_row_step
    # explicit "triton": errors are raised, never hidden by a fallback
    if not _triton_importable():
        raise ValueError("backend='triton' needs the triton package (pip install triton)")
    if device.type != "cuda" and not _interpreting():
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the interpreter on CPU); "
            "use backend='auto' or 'torch' for CPU tensors"
        )
    if dtype == torch.float64:
        raise ValueError("backend='triton' computes in fp32; use backend='torch' for fp64 inputs")
    from .triton_kernels import loss_rows_triton

    return loss_rows_triton


# --------------------------------------------------------------------------------------------------
# The chunk loop
# --------------------------------------------------------------------------------------------------


@functools.cache
def _cuda_mm_out_dtype_works() -> bool:
    """True when CUDA GEMMs with bf16 inputs can write fp32 (``out_dtype`` with ``out=``; probed once)."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(2, 2, dtype=torch.float32, device="cuda")
        torch.mm(a, a, out_dtype=torch.float32, out=out)
        torch.addmm(out, a, a, out_dtype=torch.float32, out=out)
    except Exception:
        return False
    return True


def _balanced(n: int, chunk: int) -> int:
    """The same number of chunks as ``chunk`` gives, with their sizes evened out (no tiny last chunk)."""
    if chunk <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk}")
    n_chunks = -(-n // chunk)
    return -(-n // n_chunks)


def neg_inf_stand_in(dtype: torch.dtype, temperature: float) -> float:
    """The finite logit that replaces ``-inf``: as negative as possible while ``z/τ`` stays finite."""
    return torch.finfo(dtype).min * min(1.0, temperature) / 4


def _finite_bias(bias: torch.Tensor | None, spec: RowSpec) -> torch.Tensor | None:
    """The bias with ``-inf`` (masked columns) replaced by `neg_inf_stand_in` (V elements, cheap)."""
    if bias is None:
        return None
    return bias.clamp(min=neg_inf_stand_in(compute_dtype(bias.dtype), spec.temperature))


def _fp32_out_gemms(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether low-precision ``x`` can be multiplied straight into the wider ``out`` (CUDA only)."""
    return x.is_cuda and x.dtype != out.dtype and _cuda_mm_out_dtype_works()


def _project(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    low: torch.Tensor | None,
) -> None:
    """out ← x · weightᵀ (+ bias), written into the fp32/fp64 buffer ``out``.

    Same dtype: one GEMM into ``out``. Low-precision inputs on CUDA: one GEMM with fp32 output into
    ``out``. Otherwise (CPU): the product goes to the reused low-precision buffer ``low`` and is upcast
    into ``out`` — what the eager ``F.linear(x, W).float()`` does, without a new allocation per chunk.
    """
    if x.dtype == out.dtype:
        torch.mm(x, weight.t(), out=out)
    elif _fp32_out_gemms(x, out):
        torch.mm(x, weight.t(), out_dtype=out.dtype, out=out)
    elif low is not None and low.dtype == x.dtype:
        low = low[: out.shape[0]]
        torch.mm(x, weight.t(), out=low)
        out.copy_(low)
    else:  # e.g. a bf16 teacher next to an fp32 student: no reusable buffer of its dtype
        out.copy_(torch.mm(x, weight.t()))
    if bias is not None:
        out.add_(bias)


def _run_chunks(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    xt: torch.Tensor | None,
    wt: torch.Tensor | None,
    bt: torch.Tensor | None,
    idx: torch.Tensor | None,
    y: torch.Tensor,
    spec: RowSpec,
    *,
    grad_scale,
    needs: tuple[bool, bool, bool],
    chunk_size: int | None,
    row_step,
):
    """Per-row losses of the valid rows and, when ``grad_scale`` is given, the gradients.

    Args:
        x, w, b: student hidden states (N, H), head (V, H), bias (V,) or None.
        xt, wt, bt: the teacher's, or None.
        idx: indices of the valid rows (None: all rows); y: their labels.
        grad_scale: None (losses only), one factor for every row (float or 0-dim tensor) or one per
            valid row ((n_valid,) tensor): the row's share of the reduction times its token weight.
        needs: which of (x, w, b) need a gradient.

    Returns:
        ``(ce, kl, grad_x, grad_w, grad_b)``, the first two of shape (n_valid,).
    """
    n, vocab = y.numel(), w.shape[0]
    cdt = compute_dtype(x.dtype)
    dev = x.device
    need_x, need_w, need_b = needs
    want_grad = grad_scale is not None and any(needs)
    ce = torch.empty(n, dtype=cdt, device=dev)
    kl = torch.empty(n, dtype=cdt, device=dev)
    grad_x = grad_w = grad_b = None
    if want_grad:
        if need_x:
            grad_x = torch.zeros_like(x) if (idx is not None or n == 0) else torch.empty_like(x)
        if need_w:  # the first chunk's GEMM writes it (zeros only if there is no chunk)
            grad_w = (torch.empty if n > 0 else torch.zeros)(w.shape, dtype=cdt, device=dev)
        if need_b:
            grad_b = torch.zeros(vocab, dtype=cdt, device=dev)
    if n > 0:
        c = _balanced(n, chunk_size or default_chunk_size(n, vocab, dev))
        s_buf = torch.empty(min(c, n), vocab, dtype=cdt, device=dev)
        t_buf = torch.empty_like(s_buf) if spec.has_teacher else None
        low = None  # reused low-precision GEMM output / gradient input (CPU, or CUDA without out_dtype)
        if x.dtype != cdt:
            low = torch.empty(s_buf.shape, dtype=x.dtype, device=dev)
        fp32_out = _fp32_out_gemms(x, s_buf)
        b_fin, bt_fin = _finite_bias(b, spec), _finite_bias(bt, spec)
        per_row = isinstance(grad_scale, torch.Tensor) and grad_scale.dim() == 1
        for start in range(0, n, c):
            end = min(start + c, n)
            rows = slice(start, end) if idx is None else idx[start:end]
            x_c = x[rows] if idx is None else x.index_select(0, rows)
            s = s_buf[: end - start]
            _project(x_c, w, b_fin, s, low)
            t = None
            if spec.has_teacher:
                t = t_buf[: end - start]
                xt_c = xt[rows] if idx is None else xt.index_select(0, rows)
                _project(xt_c, wt, bt_fin, t, low)
            scale = None if not want_grad else (grad_scale[start:end] if per_row else grad_scale)
            ce[start:end], kl[start:end] = row_step(s, t, y[start:end], spec, scale)
            if not want_grad:
                continue
            g = s  # ∂loss/∂S for this chunk, scaled, in cdt
            g_low = None
            if low is not None and (need_x or (need_w and x.is_cuda)):
                g_low = low[: end - start]
                g_low.copy_(g)  # the low-precision GEMM operand, in the reused buffer
            if need_x:
                if g_low is None:  # same dtype as x
                    if idx is None:
                        torch.mm(g, w, out=grad_x[rows])
                    else:
                        grad_x.index_copy_(0, rows, torch.mm(g, w))
                elif idx is None:
                    torch.mm(g_low, w, out=grad_x[rows])
                else:
                    grad_x.index_copy_(0, rows, torch.mm(g_low, w))
            if need_w:
                if g_low is not None and fp32_out:  # CUDA: bf16 operands, fp32 accumulation
                    if start == 0:
                        torch.mm(g_low.t(), x_c, out_dtype=cdt, out=grad_w)
                    else:
                        torch.addmm(grad_w, g_low.t(), x_c, out_dtype=cdt, out=grad_w)
                elif g_low is not None and x_c.is_cuda:  # CUDA, old torch: low-precision product
                    prod = torch.mm(g_low.t(), x_c)
                    if start == 0:
                        grad_w.copy_(prod)
                    else:
                        grad_w.add_(prod)
                else:  # same dtype, or CPU: an fp32 GEMM of the fp32 gradient (no fp32-out bf16 GEMM)
                    x_w = x_c if x_c.dtype == cdt else x_c.to(cdt)
                    if start == 0:
                        torch.mm(g.t(), x_w, out=grad_w)
                    else:
                        grad_w.addmm_(g.t(), x_w)
            if need_b:
                grad_b.add_(g.sum(0))
    if grad_w is not None and grad_w.dtype != w.dtype:
        grad_w = grad_w.to(w.dtype)
    if grad_b is not None and grad_b.dtype != b.dtype:
        grad_b = grad_b.to(b.dtype)
    return ce, kl, grad_x, grad_w, grad_b


def _reduction_scale(reduction: str, n_valid: int, normalizer, dtype, device):
    """The factor every row's loss (and gradient) carries under a scalar reduction (no weights)."""
    if reduction == "sum":
        return 1.0
    if normalizer is None:
        return 1.0 / max(n_valid, 1)
    if isinstance(normalizer, torch.Tensor):
        return 1.0 / normalizer.detach().to(device=device, dtype=dtype).reshape(())
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    return 1.0 / float(normalizer)


def _row_factors(reduction: str, n_valid: int, normalizer, weights, dtype, device):
    """Each valid row's share of a scalar reduction: a float / 0-dim tensor, or (n_valid,) with weights.

    With token weights ``w``: ``sum`` → w; ``mean`` → w / Σw (0 when Σw = 0), or w / normalizer.
    Stays on the device (no host synchronisation).
    """
    if weights is None:
        return _reduction_scale(reduction, n_valid, normalizer, dtype, device)
    if reduction == "sum":
        return weights
    if normalizer is not None:
        return weights * _reduction_scale("mean", n_valid, normalizer, dtype, device)
    total = weights.sum()
    return weights * torch.where(total != 0, 1.0 / torch.where(total != 0, total, 1.0), 0.0)


def _weighted_sum(values: torch.Tensor, factors) -> torch.Tensor:
    """Σ_rows factor_i · value_i for a scalar or per-row factor."""
    if isinstance(factors, torch.Tensor) and factors.dim() == 1:
        return torch.dot(values, factors)
    return values.sum() * factors


def _scatter_rows(values: torch.Tensor, idx: torch.Tensor | None, n_rows: int) -> torch.Tensor:
    """(n_valid,) values of the valid rows → (N,) with zeros on the ignored rows."""
    if idx is None:
        return values
    out = values.new_zeros(n_rows)
    return out.index_copy_(0, idx, values)


def _is_one(grad: torch.Tensor) -> bool:
    """True when the upstream gradient is exactly 1 (checked only on CPU, where it costs no sync)."""
    return grad.device.type == "cpu" and grad.numel() == 1 and grad.item() == 1.0


def _take_stored(ctx, name: str):
    stored = getattr(ctx, name)
    if stored is None:
        raise RuntimeError(
            "the fused loss's precomputed gradients were already consumed by a previous backward; "
            "pass allow_retain_graph=True to backpropagate through it more than once"
        )
    if not ctx.allow_retain_graph:
        setattr(
            ctx, name, None
        )  # drop our reference so autograd can take the buffers without a copy
    return stored


def _scale_grads(grads, grad_out: torch.Tensor, in_place: bool):
    if _is_one(grad_out) and in_place:
        return grads
    out = []
    for g in grads:
        if g is None:
            out.append(None)
        elif in_place:
            out.append(g.mul_(grad_out.to(g.dtype)))
        else:
            out.append(g * grad_out.to(g.dtype))
    return out


class _FusedLinearLoss(torch.autograd.Function):
    """The reduced ``w_ce · CE + w_kl · c · D`` of LM-head logits, computed chunk by chunk."""

    @staticmethod
    def forward(
        ctx,
        x,
        w,
        b,
        xt,
        wt,
        bt,
        idx,
        y,
        wv,
        spec,
        reduction,
        normalizer,
        chunk_size,
        row_step,
        allow_retain_graph,
    ):
        n_rows, n_valid = x.shape[0], y.numel()
        cdt = compute_dtype(x.dtype)
        needs = tuple(ctx.needs_input_grad[:3])
        ctx.spec, ctx.chunk_size, ctx.row_step = spec, chunk_size, row_step
        ctx.reduction, ctx.allow_retain_graph = reduction, allow_retain_graph
        run = functools.partial(
            _run_chunks, x, w, b, xt, wt, bt, idx, y, spec, chunk_size=chunk_size, row_step=row_step
        )
        if reduction == "none":
            # The upstream gradient is per token: compute the losses now, the gradients in backward.
            ce, kl, *_ = run(grad_scale=None, needs=needs)
            ctx.save_for_backward(x, w, b, xt, wt, bt, idx, y, wv)
            if wv is not None:
                ce, kl = ce * wv, kl * wv
            ce_tok, kl_tok = _scatter_rows(ce, idx, n_rows), _scatter_rows(kl, idx, n_rows)
            loss = spec.ce_weight * ce_tok + spec.kl_weight * kl_tok
            ctx.mark_non_differentiable(ce_tok, kl_tok)
            return loss, ce_tok, kl_tok
        factors = _row_factors(reduction, n_valid, normalizer, wv, cdt, x.device)
        ce, kl, gx, gw, gb = run(grad_scale=factors, needs=needs)
        ctx.grads = (gx, gw, gb)
        ce_part, kl_part = _weighted_sum(ce, factors), _weighted_sum(kl, factors)
        loss = spec.ce_weight * ce_part + spec.kl_weight * kl_part
        ctx.mark_non_differentiable(ce_part, kl_part)
        return loss, ce_part, kl_part

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        if ctx.reduction == "none":
            x, w, b, xt, wt, bt, idx, y, wv = ctx.saved_tensors
            g = grad_loss.reshape(-1)
            g = (g if idx is None else g.index_select(0, idx)).to(compute_dtype(x.dtype))
            if wv is not None:
                g = g * wv
            _, _, gx, gw, gb = _run_chunks(
                x,
                w,
                b,
                xt,
                wt,
                bt,
                idx,
                y,
                ctx.spec,
                grad_scale=g,
                needs=tuple(ctx.needs_input_grad[:3]),
                chunk_size=ctx.chunk_size,
                row_step=ctx.row_step,
            )
        else:
            grads = _take_stored(ctx, "grads")
            gx, gw, gb = _scale_grads(grads, grad_loss, in_place=not ctx.allow_retain_graph)
        return gx, gw, gb, *([None] * 12)


class _FusedLogitsLoss(torch.autograd.Function):
    """The same loss from precomputed logits; the row step runs chunk by chunk, in fp32."""

    @staticmethod
    def forward(
        ctx,
        z,
        zt,
        idx,
        y,
        wv,
        spec,
        reduction,
        normalizer,
        chunk_size,
        row_step,
        allow_retain_graph,
    ):
        n_rows, vocab = z.shape
        n_valid = y.numel()
        cdt = compute_dtype(z.dtype)
        need = ctx.needs_input_grad[0]
        ctx.reduction, ctx.allow_retain_graph = reduction, allow_retain_graph
        # Scalar reductions fold their factor into the gradient now; "none" gets per-row factors later
        # (the token weights are folded in now in both cases).
        if reduction == "none":
            factors = 1.0 if wv is None else wv
        else:
            factors = _row_factors(reduction, n_valid, normalizer, wv, cdt, z.device)
        per_row = isinstance(factors, torch.Tensor) and factors.dim() == 1
        grad = torch.zeros_like(z) if need else None
        ce = torch.empty(n_valid, dtype=cdt, device=z.device)
        kl = torch.empty_like(ce)
        if n_valid:
            c = _balanced(n_valid, chunk_size or default_chunk_size(n_valid, vocab, z.device))
            s_buf = torch.empty(min(c, n_valid), vocab, dtype=cdt, device=z.device)
            t_buf = torch.empty_like(s_buf) if spec.has_teacher else None
            lo = neg_inf_stand_in(cdt, spec.temperature)
            for start in range(0, n_valid, c):
                end = min(start + c, n_valid)
                rows = torch.arange(start, end, device=z.device) if idx is None else idx[start:end]
                s = s_buf[: end - start]
                torch.clamp(z.index_select(0, rows), min=lo, out=s)  # -inf → finite stand-in
                t = None
                if spec.has_teacher:
                    t = t_buf[: end - start]
                    torch.clamp(zt.index_select(0, rows), min=lo, out=t)
                scale = factors[start:end] if per_row else factors
                ce[start:end], kl[start:end] = row_step(
                    s, t, y[start:end], spec, scale if need else None
                )
                if need:
                    grad.index_copy_(0, rows, s.to(z.dtype))
        ctx.grad = grad
        if reduction == "none":
            if wv is not None:
                ce, kl = ce * wv, kl * wv
            ce_part, kl_part = _scatter_rows(ce, idx, n_rows), _scatter_rows(kl, idx, n_rows)
        else:
            ce_part, kl_part = _weighted_sum(ce, factors), _weighted_sum(kl, factors)
        loss = spec.ce_weight * ce_part + spec.kl_weight * kl_part
        ctx.mark_non_differentiable(ce_part, kl_part)
        return loss, ce_part, kl_part

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        grad = _take_stored(ctx, "grad")
        if ctx.reduction == "none":
            factor = grad_loss.reshape(-1, 1).to(grad.dtype)
            grad = grad.mul_(factor) if not ctx.allow_retain_graph else grad * factor
        else:
            (grad,) = _scale_grads((grad,), grad_loss, in_place=not ctx.allow_retain_graph)
        return grad, *([None] * 10)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


_COMPILE_DISABLED: dict = {}


def _eager_under_compile(fn):
    """Make ``fn`` opaque to ``torch.compile`` (it runs eagerly, behind a graph break).

    The wrapping happens on the first call, so that ``import losses`` does not import torch._dynamo
    (two seconds, and triton with it).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        disabled = _COMPILE_DISABLED.get(fn)
        if disabled is None:
            disabled = _COMPILE_DISABLED[fn] = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


def _finish(outputs, reduction: str, labels_shape, return_parts: bool):
    loss, ce_part, kl_part = outputs
    if reduction == "none":
        loss, ce_part, kl_part = (v.reshape(labels_shape) for v in (loss, ce_part, kl_part))
    if return_parts:
        return loss, {"ce": ce_part.detach(), "kl": kl_part.detach()}
    return loss


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``'s type, or None when autocast is off there."""
    if device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def _cast_for_autocast(dtype: torch.dtype | None, *tensors):
    """Cast fp32/fp16/bf16 tensors to the autocast dtype (differentiably); fp64 and None stay."""
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype)
        if t is not None and t.dtype in (torch.float32, torch.float16, torch.bfloat16)
        else t
        for t in tensors
    )


def _no_autocast(device: torch.device):
    """Autocast disabled for ``device``'s type (our buffers and ``out=`` GEMMs choose their dtypes)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@_eager_under_compile
def fused_linear_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    spec: LossSpec | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | int | torch.Tensor | None = None,
    return_parts: bool = False,
    backend: str = "auto",
    allow_retain_graph: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``ce_weight · CE(student, labels) + kl_weight · D(teacher ‖ student)`` from hidden states, chunked.

    One pass over the student logits computes both terms and their gradient; memory is O(chunk × vocab).

    Args:
        student_hidden: (N, H) or (B, T, H); row i predicts ``labels[i]`` (labels already shifted).
        student_weight: student LM head (V, H); ``student_bias`` (V,) optional.
        labels: (N,) or (B, T) class indices; ``ignore_index`` marks rows without loss.
        spec: the loss (`losses.LossSpec`: weights, divergence, β, τ, τ², logit swap, chunk size);
            None means ``LossSpec()``, plain cross-entropy (``kl_weight=0``).
        teacher_hidden, teacher_weight, teacher_bias: the frozen teacher's final hidden states (N, H_t)
            and head (V, H_t) — H_t may differ from H, V may not. Never receive a gradient. Required
            when ``spec.kl_weight != 0``; when given with ``kl_weight == 0`` the divergence is still
            computed (for ``return_parts``).
        token_weights: optional float weights of the shape of ``labels``, treated as constants: each
            row's CE and divergence are multiplied by its weight before the reduction.
        reduction: ``mean`` over non-ignored tokens (Σ w·loss / Σ w with weights; 0 when the
            denominator is 0), ``sum``, or ``none`` (per token, shape of ``labels``, 0 on ignored rows).
        normalizer: with ``reduction="mean"``, divide the (weighted) sum by this instead (e.g. the
            optimizer step's target-token count across micro-batches and ranks); number or 0-dim tensor.
        return_parts: also return ``{"ce": …, "kl": …}`` (detached, reduced like the loss, such that
            ``loss = ce_weight · ce + kl_weight · kl``; ``kl`` includes the τ² factor if enabled).
        backend: ``auto`` (Triton on CUDA when available, torch otherwise), ``torch`` or ``triton``.
        allow_retain_graph: keep the precomputed gradients so that backward can run more than once
            (``retain_graph=True``, gradcheck) at the cost of one copy of them in backward.

    Returns:
        The loss (fp32; fp64 for fp64 inputs), or ``(loss, parts)`` with ``return_parts=True``.
    """
    spec = as_loss_spec(spec)
    check_reduction(reduction, normalizer)
    x = flatten_rows(student_hidden, "student_hidden")
    has_teacher = teacher_hidden is not None or teacher_weight is not None
    if has_teacher and (teacher_hidden is None or teacher_weight is None):
        raise ValueError("pass both teacher_hidden and teacher_weight, or neither")
    xt = flatten_rows(teacher_hidden, "teacher_hidden").detach() if has_teacher else None
    wt = teacher_weight.detach() if has_teacher else None
    bt = teacher_bias.detach() if teacher_bias is not None else None
    # Autocast: cast explicitly here, run with autocast off (see the module docstring).
    x, w, b, xt, wt, bt = _cast_for_autocast(
        _autocast_dtype(x.device), x, student_weight, student_bias, xt, wt, bt
    )
    check_linear(x, w, b, "student")
    if has_teacher:
        check_linear(xt, wt, bt, "teacher")
        check_same_vocab(w.shape[0], wt.shape[0])
        if xt.shape[0] != x.shape[0]:
            raise ValueError(
                f"teacher_hidden has {xt.shape[0]} rows but student_hidden has {x.shape[0]}; they must be "
                "aligned row by row (slice the teacher's positions that predict the same labels)"
            )
    rspec = row_spec(spec, has_teacher=has_teacher)
    weights = check_token_weights(token_weights, labels, x.device)
    flat_labels = check_labels(labels, x.shape[0])
    idx, y = valid_rows(flat_labels, ignore_index, w.shape[0])
    wv = _valid_weights(weights, idx, compute_dtype(x.dtype))
    row_step = _row_step(backend, x.device, x.dtype)
    if not torch.is_grad_enabled():  # under no_grad nothing needs a gradient: skip computing one
        x, w, b = x.detach(), w.detach(), None if b is None else b.detach()
    with _no_autocast(x.device):
        outputs = _FusedLinearLoss.apply(
            x,
            w,
            b,
            xt,
            wt,
            bt,
            idx,
            y,
            wv,
            rspec,
            reduction,
            normalizer,
            spec.chunk_size,
            row_step,
            allow_retain_graph,
        )
    return _finish(outputs, reduction, labels.shape, return_parts)


def _valid_weights(weights: torch.Tensor | None, idx: torch.Tensor | None, dtype: torch.dtype):
    """The token weights of the valid rows, in the compute dtype (None without weights)."""
    if weights is None:
        return None
    return (weights if idx is None else weights.index_select(0, idx)).to(dtype)


@_eager_under_compile
def fused_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    spec: LossSpec | None = None,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | int | torch.Tensor | None = None,
    return_parts: bool = False,
    backend: str = "auto",
    allow_retain_graph: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fused_linear_distillation_loss` for callers that already hold the logits, (N, V) or (B, T, V).

    The row step runs in fp32 chunk by chunk and the gradient w.r.t. ``student_logits`` is written in
    forward (one tensor the size of the logits, in their dtype); no other ``[N, V]`` temporary is made.
    The logits are used in their own dtype, also under autocast. The inputs are never modified.
    ``teacher_logits=None`` with ``spec=None`` (``kl_weight=0``) gives plain CE.
    """
    spec = as_loss_spec(spec)
    check_reduction(reduction, normalizer)
    z = student_logits.reshape(-1, student_logits.shape[-1])
    zt = None
    if teacher_logits is not None:
        zt = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
        check_same_vocab(z.shape[1], zt.shape[1])
        if zt.shape[0] != z.shape[0]:
            raise ValueError(
                f"teacher_logits has {zt.shape[0]} rows but student_logits has {z.shape[0]}"
            )
    rspec = row_spec(spec, has_teacher=zt is not None)
    weights = check_token_weights(token_weights, labels, z.device)
    flat_labels = check_labels(labels, z.shape[0])
    idx, y = valid_rows(flat_labels, ignore_index, z.shape[1])
    wv = _valid_weights(weights, idx, compute_dtype(z.dtype))
    row_step = _row_step(backend, z.device, z.dtype)
    if not torch.is_grad_enabled():  # under no_grad nothing needs a gradient: skip computing one
        z = z.detach()
    with _no_autocast(z.device):
        outputs = _FusedLogitsLoss.apply(
            z,
            zt,
            idx,
            y,
            wv,
            rspec,
            reduction,
            normalizer,
            spec.chunk_size,
            row_step,
            allow_retain_graph,
        )
    return _finish(outputs, reduction, labels.shape, return_parts)


def native_linear_cross_entropy_available() -> bool:
    """True when torch ships ``F.linear_cross_entropy`` with its chunked path (torch ≥ 2.13)."""
    return hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")


def _native_linear_cross_entropy(
    x,
    weight,
    labels,
    bias,
    weights,
    ignore_index,
    reduction,
    normalizer,
    chunk_size,
    allow_retain_graph,
):
    """torch's chunked ``F.linear_cross_entropy`` with this package's reductions and token weights.

    Token weights go through torch's ``reduction="none"`` (which recomputes in backward, its upstream
    gradient being the weights): Σ w·CE, then the package's mean / normalizer.
    """
    if chunk_size is None and x.device.type == "cpu":
        # torch's automatic chunk on CPU is small (128 rows at V=32000, H=1024), which makes its GEMMs
        # about 3x slower here; our default chunk gives it the same GEMM shapes as our own loop.
        chunk_size = default_chunk_size(x.shape[0], weight.shape[0], x.device)
    options = torch.nn.LinearCrossEntropyOptions(
        batch_chunk_size=chunk_size,
        chunking_method=None if chunk_size else "auto",
        allow_retain_graph=allow_retain_graph,
    )
    cdt = compute_dtype(x.dtype)
    kwargs = dict(linear_bias=bias, ignore_index=ignore_index, options=options)
    valid = labels != ignore_index
    if weights is not None:
        w = torch.where(valid, weights.to(cdt), 0.0)
        per_token = (
            F.linear_cross_entropy(x, weight, labels, reduction="none", **kwargs).to(cdt) * w
        )
        if reduction == "none":
            return per_token
        total = per_token.sum()
        if reduction == "sum":
            return total
        if normalizer is None:
            denom = w.sum()
            return torch.where(denom != 0, total / torch.where(denom != 0, denom, 1.0), 0.0)
        return total * _reduction_scale("mean", 0, normalizer, cdt, x.device)
    if reduction == "none":
        return F.linear_cross_entropy(x, weight, labels, reduction="none", **kwargs).to(cdt)
    total = F.linear_cross_entropy(x, weight, labels, reduction="sum", **kwargs).to(cdt)
    if reduction == "sum":
        return total
    if normalizer is None:
        return total / valid.sum().clamp(min=1).to(cdt)
    return total * _reduction_scale("mean", 0, normalizer, cdt, x.device)


@_eager_under_compile
def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | int | torch.Tensor | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    allow_retain_graph: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``labels`` without materializing the logits.

    Backends: ``"native"`` is torch's own chunked ``F.linear_cross_entropy`` (torch ≥ 2.13; on CPU it
    gets this package's default chunk size unless ``chunk_size`` is given; token weights go through its
    per-token losses); ``"torch"`` / ``"triton"`` run this package's chunk loop
    (`fused_linear_distillation_loss` without a teacher). ``"auto"`` (default) picks native on CUDA
    when torch has it and there are no token weights, and our loop otherwise — on CPU it measured about
    10% faster than native at the same chunk size because it skips the ignored rows' GEMM work (and
    about 3x faster than native with torch's automatic chunk; see docs/losses.md).

    Reductions as in `fused_linear_distillation_loss`: ``mean`` over non-ignored tokens (an
    all-ignored batch gives 0 with zero gradients, where ``F.cross_entropy`` gives NaN; with
    ``token_weights`` Σ w·CE / Σ w), ``sum``, ``none``; ``normalizer`` replaces the denominator.
    """
    check_reduction(reduction, normalizer)
    if backend == "native" or (
        backend == "auto"
        and token_weights is None
        and native_linear_cross_entropy_available()
        and hidden.device.type == "cuda"
    ):
        if not native_linear_cross_entropy_available():
            raise ValueError(
                "backend='native' needs torch.nn.functional.linear_cross_entropy (torch >= 2.13)"
            )
        x = flatten_rows(hidden, "hidden")
        x, weight, bias = _cast_for_autocast(_autocast_dtype(x.device), x, weight, bias)
        check_linear(x, weight, bias)
        weights = check_token_weights(token_weights, labels, x.device)
        flat_labels = check_labels(labels, x.shape[0])
        with _no_autocast(x.device):
            out = _native_linear_cross_entropy(
                x,
                weight,
                flat_labels,
                bias,
                weights,
                ignore_index,
                reduction,
                normalizer,
                chunk_size,
                allow_retain_graph,
            )
        return out.reshape(labels.shape) if reduction == "none" else out
    return fused_linear_distillation_loss(
        hidden,
        weight,
        labels,
        spec=LossSpec(chunk_size=chunk_size),
        student_bias=bias,
        token_weights=token_weights,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
        allow_retain_graph=allow_retain_graph,
    )
