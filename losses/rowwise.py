r"""The per-row work of the fused losses, in torch: loss values and the gradient w.r.t. the student logits.

This is the math of one chunk of rows, written once for the CPU path; `losses.triton_kernels` runs the
same formulas row by row on the GPU. No autograd is involved: the gradient is written analytically.

Notation for one row (all in fp32, or fp64 for fp64 inputs): ``z`` the student logits, ``y`` the label,
``τ`` the temperature, ``s = z/τ``, ``t`` the (possibly logit-swapped) teacher logits divided by ``τ``,
``q = softmax(s)``, ``p = softmax(t)``, ``e_y`` the one-hot vector of the label.

Loss of the row: ``w_ce · CE + w_kl · c · D`` with ``CE = logsumexp(z) − z_y`` (temperature 1) and
``c = τ²`` or 1.

Gradients (``∂/∂z = (1/τ) ∂/∂s`` for the divergence):

* CE:           ``∂CE/∂z = softmax(z) − e_y``
* forward KL:   ``D = Σ p (log p − log q)``,                 ``∂D/∂s = q − p``
* the others share one form, ``∂D/∂s_j = q_j (c_j − Σ_k q_k c_k)`` (the softmax Jacobian applied to
  ``c = ∂D/∂q`` up to a constant), with

  ======================  ==========================================  ====================================
  divergence              D                                           c
  ======================  ==========================================  ====================================
  reverse KL              Σ q (log q − log p)                         log q − log p
  JSD(β), m = βp+(1−β)q   β Σ p log(p/m) + (1−β) Σ q log(q/m)         (1−β)(log q − log m)
  skew KL, m = βp+(1−β)q  Σ p (log p − log m)                         −(1−β) p/m
  skew RKL, m = βq+(1−β)p Σ q (log q − log m)                         log q − log m − β q/m
  ======================  ==========================================  ====================================

  (For reverse KL ``Σ q c`` is the loss itself.) ``log m`` is computed as a log-add-exp, so that no
  probability is ever divided by an underflowed one (``p/m ≤ 1/β``, ``q/m ≤ 1/β``).

The full gradient of a row is ``scale · [w_ce (softmax(z) − e_y) + (w_kl c / τ) ∂D/∂s]``, where
``scale`` is the row's share of the reduction (``1/n_valid`` for the mean, 1 for the sum, the upstream
gradient for ``reduction="none"``) times the row's token weight, if any.

The logit swap exchanges, per row, the teacher's first maximal logit and the label's logit.
"""

from __future__ import annotations

import math

import torch

from ._common import RowSpec

__all__ = ["divergence_rows", "loss_rows_torch", "swap_rows_"]


def swap_rows_(t: torch.Tensor, y: torch.Tensor) -> None:
    """In place: in each row, exchange the first maximal entry and the entry at the label."""
    t_max, a = t.max(dim=1)  # torch returns the first maximal index
    t_y = t.gather(1, y[:, None])
    t.scatter_(1, a[:, None], t_y)
    t.scatter_(1, y[:, None], t_max[:, None])


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij b_ij per row, in one fused pass (a batched matmul is 10x slower here on CPU)."""
    return torch.linalg.vecdot(a, b, dim=1)


def _log_mix(log_x: torch.Tensor, log_y: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·x + (1−w)·y) from log x and log y."""
    if w == 1.0:
        return log_x.clone()
    if w == 0.0:
        return log_y.clone()
    return torch.logaddexp(log_x + math.log(w), log_y + math.log1p(-w))


def _centered(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """q ⊙ (c − Σ q c), in place on ``c``: the softmax Jacobian applied to c."""
    return c.sub_(_row_dot(q, c)[:, None]).mul_(q)


def divergence_rows(
    log_q: torch.Tensor, log_p: torch.Tensor, divergence: str, beta: float, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row D(p ‖ q) and, if wanted, ∂D/∂s (``s`` the temperature-scaled student logits)."""
    if divergence == "forward_kl":
        p = log_p.exp()
        loss = _row_dot(p, log_p - log_q)
        return loss, (log_q.exp().sub_(p) if want_grad else None)
    q = log_q.exp()
    if divergence == "reverse_kl":
        a = log_q - log_p
        loss = _row_dot(q, a)
        return loss, (a.sub_(loss[:, None]).mul_(q) if want_grad else None)
    if divergence == "jsd":
        log_m = _log_mix(log_p, log_q, beta)
        b = log_q - log_m
        loss = beta * _row_dot(log_p.exp(), log_p - log_m) + (1.0 - beta) * _row_dot(q, b)
        return loss, (_centered(q, b.mul_(1.0 - beta)) if want_grad else None)
    if divergence == "skew_forward_kl":
        log_m = _log_mix(log_p, log_q, beta)
        log_ratio = log_p - log_m  # log(p/m)
        loss = _row_dot(log_p.exp(), log_ratio)
        return loss, (_centered(q, log_ratio.exp_().mul_(-(1.0 - beta))) if want_grad else None)
    if divergence == "skew_reverse_kl":
        log_m = _log_mix(log_q, log_p, beta)
        log_ratio = log_q - log_m  # log(q/m)
        loss = _row_dot(q, log_ratio)
        if not want_grad:
            return loss, None
        c = log_ratio.exp().mul_(-beta).add_(log_ratio)
        return loss, _centered(q, c)
    raise ValueError(f"unknown divergence {divergence!r}")


def _as_row_scale(grad_scale, like: torch.Tensor):
    """A float stays a float (no host-to-device copy); a 0-dim or (rows,) tensor → broadcastable to
    (rows, vocab), in ``like``'s dtype. Token weights are already folded into per-row factors."""
    if not isinstance(grad_scale, torch.Tensor):
        return float(grad_scale)
    scale = grad_scale.to(like.dtype)
    return scale[:, None] if scale.dim() == 1 else scale


def _axpy_(out: torch.Tensor, t: torch.Tensor, coef) -> torch.Tensor:
    """out += coef · t, for a Python float or a broadcastable tensor ``coef``."""
    if isinstance(coef, torch.Tensor):
        return out.addcmul_(t, coef)
    return out.add_(t, alpha=coef)


def loss_rows_torch(
    s: torch.Tensor,
    t: torch.Tensor | None,
    y: torch.Tensor,
    spec: RowSpec,
    grad_scale=None,
    *,
    block_elements: int = 2**20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of a chunk of rows and, optionally, their gradient w.r.t. the student logits.

    Args:
        s: (rows, V) student logits, fp32 or fp64. Overwritten with the gradient when ``grad_scale`` is
            given; clobbered otherwise.
        t: (rows, V) teacher logits in the same dtype, or None without a teacher. Used as scratch.
        y: (rows,) labels, all inside [0, V) (ignored rows are dropped before this call).
        spec: the loss options.
        grad_scale: None for the loss only, else each row's gradient factor (its share of the
            reduction times its token weight): a float, a 0-dim tensor or a (rows,) tensor.
        block_elements: the rows are processed in blocks of about this many elements, so that the
            temporaries stay small and cache-sized whatever the GEMM chunk is. The default, 2²⁰ (4 MiB
            per fp32 temporary, 2 MiB per thread on 2 threads), fits the 2 MiB-per-core L2 of the
            project's CPU machine; it ran the forward-KL row step about 2x faster than 2²¹ (1 thread,
            V = 32000 and 128256).

    Returns:
        ``(ce, kl)``: per-row cross-entropy and per-row ``c · D`` (zeros without a teacher).
    """
    n_rows, vocab = s.shape
    block = max(1, block_elements // max(vocab, 1))
    if n_rows <= block:
        return _loss_block(s, t, y, spec, grad_scale)
    ce = s.new_empty(n_rows)
    kl = s.new_empty(n_rows)
    per_row = isinstance(grad_scale, torch.Tensor) and grad_scale.dim() == 1
    for start in range(0, n_rows, block):
        end = min(start + block, n_rows)
        scale = grad_scale[start:end] if per_row else grad_scale
        ce[start:end], kl[start:end] = _loss_block(
            s[start:end], None if t is None else t[start:end], y[start:end], spec, scale
        )
    return ce, kl


def _subtract_at_labels(g: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, coef) -> None:
    """g[i, y_i] −= coef_i (coef a float or broadcastable to (rows, 1))."""
    if isinstance(coef, torch.Tensor):
        coef = coef.expand(g.shape[0], 1).squeeze(1)
    g[rows, y] -= coef


def _loss_block(s, t, y, spec: RowSpec, grad_scale):
    """`loss_rows_torch` on one block of rows (``s`` is overwritten, ``t`` is scratch)."""
    rows = torch.arange(s.shape[0], device=s.device)
    want_grad = grad_scale is not None
    scale = _as_row_scale(grad_scale, s) if want_grad else None
    tau = spec.temperature

    # Cross-entropy on the raw logits.
    log_sm = torch.log_softmax(s, dim=1)
    ce = -log_sm[rows, y]
    if not spec.has_teacher:
        if want_grad:  # s ← scale · w_ce (softmax(z) − e_y)
            torch.exp(log_sm, out=s).mul_(spec.ce_weight * scale)
            _subtract_at_labels(s, rows, y, spec.ce_weight * scale)
        return ce, torch.zeros_like(ce)

    # log q and log p at temperature τ (at τ = 1, log q is the CE's log-softmax).
    log_q = log_sm if tau == 1.0 else torch.log_softmax(s.mul_(1.0 / tau), dim=1)
    if spec.logit_swap:
        swap_rows_(t, y)
    log_p = torch.log_softmax(t.mul_(1.0 / tau) if tau != 1.0 else t, dim=1)

    if spec.divergence == "forward_kl":
        # The common case, with few passes: p into t, D = Σ p (log p − log q), ∂D/∂s = q − p.
        p = torch.exp(log_p, out=t)
        kl = _row_dot(p, log_p.sub_(log_q)) * spec.kl_scale
        del log_p
        if want_grad:  # s ← scale · [w_ce softmax(z) + (w_kl c/τ)(q − p)] − scale · w_ce e_y
            coef_kl = spec.kl_grad_coef * scale
            q = torch.exp(log_q, out=s)
            if tau == 1.0:  # softmax(z) = q
                q.mul_(spec.ce_weight * scale + coef_kl)
            else:
                q.mul_(coef_kl)
                if spec.ce_weight != 0.0:
                    _axpy_(q, log_sm.exp_(), spec.ce_weight * scale)
            _axpy_(q, p, -coef_kl)
            _subtract_at_labels(s, rows, y, spec.ce_weight * scale)
        return ce, kl

    d, grad_d = divergence_rows(log_q, log_p, spec.divergence, spec.beta, want_grad)
    del log_p
    if want_grad:  # s ← scale · [w_ce (softmax(z) − e_y) + (w_kl c/τ) ∂D/∂s]
        if spec.ce_weight != 0.0:
            torch.exp(log_sm, out=s).mul_(spec.ce_weight * scale)
            _subtract_at_labels(s, rows, y, spec.ce_weight * scale)
        else:
            s.zero_()
        _axpy_(s, grad_d, spec.kl_grad_coef * scale)
    return ce, d * spec.kl_scale
