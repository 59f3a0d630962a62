"""Triton row kernel of the fused losses: the GPU twin of `losses.rowwise.loss_rows_torch`.

One program handles one row of a chunk (the GEMMs stay outside, in cuBLAS, as in Liger-Kernel). The row
is streamed in blocks of ``BLOCK_V`` columns, at most three times:

1. an online max / sum-exp of the student logits (at temperature 1 for the CE and at ``τ`` for the
   divergence) and of the teacher logits at ``τ``, plus the teacher's first argmax (for the logit swap);
2. the divergence and, for all divergences but forward KL, the row total ``Σ q c`` its gradient needs
   (for forward KL and plain CE the gradient is written in this pass already);
3. the gradient, written in place over the student logits.

The formulas are those documented in `losses.rowwise`. Both buffers are fp32 (the callers compute the
logits into fp32 buffers), which keeps the kernel exact under ``TRITON_INTERPRET=1``: every load is
masked, every float argument is fp32, offsets are int64, and no libdevice function is used.

This module imports triton at import time; `losses.fused` imports it only when the Triton path is used.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from ._common import RowSpec, next_power_of_2

__all__ = ["DIVERGENCE_CODES", "interpreter_enabled", "loss_rows_triton"]

DIVERGENCE_CODES = {
    "forward_kl": 0,
    "reverse_kl": 1,
    "jsd": 2,
    "skew_forward_kl": 3,
    "skew_reverse_kl": 4,
}


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _row_start(row, stride):
    """Offset of a row, computed in int64 so that rows × stride may exceed 2³¹."""
    return row.to(tl.int64) * stride


@triton.jit
def _finite_or_zero(m):
    """A running maximum usable as a shift: 0 while it is still −inf (an all −inf block so far).

    exp(z − m) with z = m = −inf is NaN; with the shift 0 it is exp(−inf) = 0, as it should be.
    """
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _log_mix(log_x, log_y, log_w, log_1mw):
    """log(w·x + (1−w)·y) from log x, log y, log w and log(1−w), without overflow."""
    a = log_x + log_w
    b = log_y + log_1mw
    top = _finite_or_zero(tl.maximum(a, b))  # both −inf: exp(−inf − 0) = 0, log 0 = −inf, no NaN
    return top + tl.log(tl.exp(a - top) + tl.exp(b - top))


@triton.jit
def _divergence_terms(log_q, log_p, beta, log_beta, log_1mbeta, DIVERGENCE: tl.constexpr):
    """Per element: the loss term e (D = Σ e) and c (∂D/∂s = q (c − Σ q c)); forward KL returns c = 0."""
    # Terms weighted by a zero probability are 0 (0·log 0 = 0): this keeps columns that are −inf in
    # both logit sets (a masked, padded vocabulary) out of every sum instead of making NaN.
    q = tl.exp(log_q)
    p = tl.exp(log_p)
    if DIVERGENCE == 0:  # forward KL
        e = tl.where(p > 0.0, p * (log_p - log_q), 0.0)
        c = e * 0.0
    elif DIVERGENCE == 1:  # reverse KL
        c = tl.where(q > 0.0, log_q - log_p, 0.0)
        e = q * c
    elif DIVERGENCE == 2:  # JSD(β), m = β p + (1−β) q
        log_m = _log_mix(log_p, log_q, log_beta, log_1mbeta)
        e = tl.where(p > 0.0, beta * p * (log_p - log_m), 0.0) + tl.where(
            q > 0.0, (1.0 - beta) * q * (log_q - log_m), 0.0
        )
        c = tl.where(q > 0.0, (1.0 - beta) * (log_q - log_m), 0.0)
    elif DIVERGENCE == 3:  # skew KL, m = β p + (1−β) q
        log_m = _log_mix(log_p, log_q, log_beta, log_1mbeta)
        e = tl.where(p > 0.0, p * (log_p - log_m), 0.0)
        c = tl.where(p > 0.0, -(1.0 - beta) * tl.exp(log_p - log_m), 0.0)
    else:  # skew reverse KL, m = β q + (1−β) p
        log_m = _log_mix(log_q, log_p, log_beta, log_1mbeta)
        e = tl.where(q > 0.0, q * (log_q - log_m), 0.0)
        c = tl.where(q > 0.0, (log_q - log_m) - beta * tl.exp(log_q - log_m), 0.0)
    return e, c, q, p


@triton.jit
def _loss_rows_kernel(
    s_ptr,
    s_stride,
    t_ptr,
    t_stride,
    y_ptr,
    y_stride,
    scale_ptr,
    scale_stride,
    scale_value,
    ce_ptr,
    kl_ptr,
    V,
    inv_tau,
    beta,
    log_beta,
    log_1mbeta,
    ce_weight,
    kl_coef,
    kl_scale,
    HAS_TEACHER: tl.constexpr,
    DIVERGENCE: tl.constexpr,
    SWAP: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    SCALE_FROM_PTR: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    s_row = s_ptr + _row_start(row, s_stride)
    t_row = t_ptr + _row_start(row, t_stride)
    y = tl.load(y_ptr + _row_start(row, y_stride))  # labels may be a strided view
    cols0 = tl.arange(0, BLOCK_V)

    # ---- pass 1: online max and sum-exp; the teacher's first argmax ----------------------------------
    m = float("-inf")  # max_j z_j
    d1 = 0.0  # Σ exp(z_j − m)
    dq = 0.0  # Σ exp((z_j − m)/τ)
    mt = float("-inf")  # max_j t_j (raw teacher logits)
    dp = 0.0  # Σ exp((t_j − mt)/τ)
    arg_t = tl.program_id(0) * 0  # first index of the teacher's maximum
    for start in range(0, V, BLOCK_V):
        cols = start + cols0
        mask = cols < V
        z = tl.load(s_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        # The shift is the running max, or 0 while every logit so far is −inf (a leading all −inf
        # block would otherwise give exp(−inf − (−inf)) = NaN).
        m_new = tl.maximum(m, tl.max(z, axis=0))
        shift = _finite_or_zero(m_new)
        d1 = d1 * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
        if HAS_TEACHER:
            dq = dq * tl.exp((m - shift) * inv_tau) + tl.sum(tl.exp((z - shift) * inv_tau), axis=0)
            zt = tl.load(t_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            block_max = tl.max(zt, axis=0)
            block_arg = tl.argmax(zt, axis=0, tie_break_left=True)
            arg_t = tl.where(block_max > mt, start + block_arg, arg_t)
            mt_new = tl.maximum(mt, block_max)
            shift_t = _finite_or_zero(mt_new)
            dp = dp * tl.exp((mt - shift_t) * inv_tau) + tl.sum(
                tl.exp((zt - shift_t) * inv_tau), axis=0
            )
            mt = mt_new
        m = m_new

    lse_1 = m + tl.log(d1)  # logsumexp(z)
    z_y = tl.load(s_row + y).to(tl.float32)
    tl.store(ce_ptr + row, lse_1 - z_y)
    if SCALE_FROM_PTR:  # a per-row or device-resident factor
        scale = tl.load(scale_ptr + _row_start(row, scale_stride)).to(tl.float32)
    else:  # a host float passed by value: no host-to-device copy per chunk
        scale = tl.cast(scale_value, tl.float32)
    ce_coef = ce_weight * scale

    if HAS_TEACHER:
        lse_q = m * inv_tau + tl.log(dq)  # logsumexp(z/τ)
        lse_p = mt * inv_tau + tl.log(dp)  # logsumexp(t/τ), unchanged by the swap
        t_y = tl.load(t_row + y).to(tl.float32)
        grad_coef = kl_coef * scale

        # ---- pass 2: the divergence and Σ q c (forward KL also writes its gradient here) -------------
        loss = 0.0
        sum_qc = 0.0
        for start in range(0, V, BLOCK_V):
            cols = start + cols0
            mask = cols < V
            z = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
            zt = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
            if SWAP:
                zt = tl.where(cols == arg_t, t_y, tl.where(cols == y, mt, zt))
            log_q = z * inv_tau - lse_q
            log_p = zt * inv_tau - lse_p
            e, c, q, p = _divergence_terms(log_q, log_p, beta, log_beta, log_1mbeta, DIVERGENCE)
            loss += tl.sum(tl.where(mask, e, 0.0), axis=0)
            sum_qc += tl.sum(tl.where(mask, q * c, 0.0), axis=0)
            if WRITE_GRAD and DIVERGENCE == 0:
                g_ce = tl.exp(z - lse_1) - tl.where(cols == y, 1.0, 0.0)
                tl.store(s_row + cols, ce_coef * g_ce + grad_coef * (q - p), mask=mask)
        tl.store(kl_ptr + row, loss * kl_scale)

        # ---- pass 3: the gradient, q (c − Σ q c), for the other divergences ---------------------------
        if WRITE_GRAD and DIVERGENCE != 0:
            for start in range(0, V, BLOCK_V):
                cols = start + cols0
                mask = cols < V
                z = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
                zt = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
                if SWAP:
                    zt = tl.where(cols == arg_t, t_y, tl.where(cols == y, mt, zt))
                log_q = z * inv_tau - lse_q
                log_p = zt * inv_tau - lse_p
                e, c, q, p = _divergence_terms(log_q, log_p, beta, log_beta, log_1mbeta, DIVERGENCE)
                g_ce = tl.exp(z - lse_1) - tl.where(cols == y, 1.0, 0.0)
                tl.store(s_row + cols, ce_coef * g_ce + grad_coef * q * (c - sum_qc), mask=mask)
    else:
        tl.store(kl_ptr + row, 0.0)
        # ---- pass 2 (plain CE): the gradient softmax(z) − e_y --------------------------------------
        if WRITE_GRAD:
            for start in range(0, V, BLOCK_V):
                cols = start + cols0
                mask = cols < V
                z = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
                g_ce = tl.exp(z - lse_1) - tl.where(cols == y, 1.0, 0.0)
                tl.store(s_row + cols, ce_coef * g_ce, mask=mask)


@triton.jit
def _row_offset_probe_kernel(rows_ptr, out_ptr, stride):
    """Test hook: writes `_row_start(rows[i], stride)` to out[i] (checks the int64 offset arithmetic)."""
    i = tl.program_id(0)
    tl.store(out_ptr + i, _row_start(tl.load(rows_ptr + i), stride))


def row_offsets(rows: torch.Tensor, stride: int) -> torch.Tensor:
    """Run `_row_start` for each int32 row index in ``rows``; returns int64 offsets (test hook)."""
    out = torch.empty(rows.numel(), dtype=torch.int64, device=rows.device)
    _row_offset_probe_kernel[(rows.numel(),)](rows, out, stride)
    return out


def loss_rows_triton(
    s: torch.Tensor,
    t: torch.Tensor | None,
    y: torch.Tensor,
    spec: RowSpec,
    grad_scale=None,
    *,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `losses.rowwise.loss_rows_torch`, for fp32 buffers (rows and labels may be
    strided). A float ``grad_scale`` is passed by value (no host-to-device copy); a tensor one must be
    on the logits' device. The launch runs under ``torch.cuda.device(s.device)``.

    ``s`` is overwritten with the gradient when ``grad_scale`` is given (and left unchanged otherwise);
    ``t`` is only read.
    """
    rows, vocab = s.shape
    if s.dtype != torch.float32 or (t is not None and t.dtype != torch.float32):
        raise ValueError("the Triton row kernel works on fp32 logit buffers")
    if s.stride(1) != 1 or (t is not None and t.stride(1) != 1):
        raise ValueError("the Triton row kernel needs rows with unit column stride")
    ce = torch.empty(rows, dtype=torch.float32, device=s.device)
    kl = torch.empty(rows, dtype=torch.float32, device=s.device)
    if rows == 0:
        return ce, kl
    write_grad = grad_scale is not None
    scale_from_ptr = isinstance(grad_scale, torch.Tensor)
    scale_value = 1.0 if grad_scale is None or scale_from_ptr else float(grad_scale)
    scale, scale_stride = ce, 0  # the pointer is not read when the factor is passed by value
    if scale_from_ptr:
        if grad_scale.device != s.device:
            raise ValueError(
                f"grad_scale is on {grad_scale.device} but the logits are on {s.device}"
            )
        scale = grad_scale.reshape(-1)
        if scale.numel() not in (1, rows):
            raise ValueError(
                f"grad_scale must be a scalar or have {rows} entries, got {scale.numel()}"
            )
        scale_stride = scale.stride(0) if scale.numel() == rows and rows > 1 else 0
    if block_v is None:
        block_v = min(next_power_of_2(vocab), 4096 if s.is_cuda else 1024)
    if num_warps is None:
        num_warps = 8 if block_v >= 2048 else 4
    teacher = t if t is not None else s
    if y.numel() != rows:
        raise ValueError(f"y must have {rows} labels, got {y.numel()}")
    guard = torch.cuda.device(s.device) if s.is_cuda else contextlib.nullcontext()
    with guard:  # launch on the tensors' GPU, not the current one
        _launch(
            s,
            teacher,
            y,
            scale,
            scale_stride,
            scale_value,
            ce,
            kl,
            vocab,
            spec,
            has_teacher=t is not None and spec.has_teacher,
            write_grad=write_grad,
            scale_from_ptr=scale_from_ptr,
            block_v=block_v,
            num_warps=num_warps,
        )
    return ce, kl


def _launch(
    s, teacher, y, scale, scale_stride, scale_value, ce, kl, vocab, spec: RowSpec, **flags
) -> None:
    """One program per row of `_loss_rows_kernel` (arguments checked by `loss_rows_triton`)."""
    # log β and log(1 − β) of the mixture (only read for jsd and the skew KLs, where 0 < β < 1)
    beta = spec.beta
    log_beta = math.log(beta) if beta > 0 else -1e30
    log_1mbeta = math.log1p(-beta) if beta < 1 else -1e30
    _loss_rows_kernel[(s.shape[0],)](
        s,
        s.stride(0),
        teacher,
        teacher.stride(0),
        y,
        y.stride(0),
        scale,
        scale_stride,
        scale_value,
        ce,
        kl,
        vocab,
        1.0 / spec.temperature,
        beta,
        log_beta,
        log_1mbeta,
        spec.ce_weight,
        spec.kl_grad_coef,
        spec.kl_scale,
        HAS_TEACHER=flags["has_teacher"],
        DIVERGENCE=DIVERGENCE_CODES[spec.divergence],
        SWAP=bool(spec.logit_swap),
        WRITE_GRAD=flags["write_grad"],
        SCALE_FROM_PTR=flags["scale_from_ptr"],
        BLOCK_V=flags["block_v"],
        num_warps=flags["num_warps"],
    )
