"""The Triton row kernel against the torch row step: on CPU under TRITON_INTERPRET=1, on CUDA natively.

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports the kernels when no GPU is present.
Interpreted kernels are slow, so every case here is tiny; all buffers are fp32 (the interpreter's
bf16 is unreliable, and the kernel only ever sees fp32 buffers).
"""

from __future__ import annotations

import os

import pytest
import torch

import losses
from losses import LossSpec
from losses import reference as R
from losses._common import row_spec
from losses.rowwise import loss_rows_torch
from tests.losses.helpers import assert_all_close, make_case, run_linear

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it and triton does not declare it
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True
    )

from losses import triton_kernels as K

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(atol=2e-6, rtol=2e-5)


def _spec(
    divergence="forward_kl", *, teacher=True, swap=True, tau=2.0, ce_weight=0.7, kl_weight=1.3
):
    spec = LossSpec(
        ce_weight=ce_weight,
        kl_weight=kl_weight if teacher else 0.0,
        divergence=divergence,
        beta=0.3,
        temperature=tau,
        scale_by_temperature_squared=True,
        logit_swap=swap,
    )
    return row_spec(spec, has_teacher=teacher)


def _rows(n=4, v=37, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, v, generator=g) * scale).to(DEVICE)
    t = (torch.randn(n, v, generator=g) * scale).to(DEVICE)
    y = torch.randint(0, v, (n,), generator=g).to(DEVICE)
    return s, t, y


def _compare(s, t, y, spec, scale, block_v=16):
    s_torch, s_triton = s.clone(), s.clone()
    t_torch = None if t is None else t.clone()
    ce_a, kl_a = loss_rows_torch(s_torch, t_torch, y, spec, scale)
    ce_b, kl_b = K.loss_rows_triton(s_triton, t, y, spec, scale, block_v=block_v)
    torch.testing.assert_close(ce_b, ce_a, **TOL)
    torch.testing.assert_close(kl_b, kl_a, **TOL)
    if scale is not None:
        torch.testing.assert_close(s_triton, s_torch, **TOL)


@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
)
def test_row_kernel_matches_torch_row_step(divergence):
    """V = 37 with 16-wide blocks: several blocks and a masked tail; per-row gradient factors."""
    s, t, y = _rows(seed=1)
    _compare(s, t, y, _spec(divergence), torch.tensor([0.5, 1.0, 2.0, 0.25], device=DEVICE))


def test_plain_ce_and_loss_only_leave_no_trace():
    s, t, y = _rows(seed=2)
    _compare(s, None, y, _spec(teacher=False), 0.1)
    before = s.clone()
    K.loss_rows_triton(s, t, y, _spec("reverse_kl"), None, block_v=16)
    assert torch.equal(s, before)  # no gradient requested: the logits stay as they were


def test_ties_and_label_equal_to_the_argmax():
    s, t, y = _rows(n=3, v=20, seed=3)
    t[0, 4] = t[0, 17] = t[0].max() + 1.0  # tie across two blocks: the first (4) is swapped
    y[0] = 9
    y[1] = int(t[1].argmax())  # label already the argmax: swap is a no-op
    t[2, 2] = t[2, 11] = t[2].max() + 1.0  # the label ties the maximum
    y[2] = 11
    _compare(s, t, y, _spec("jsd", tau=1.0), 1.0, block_v=8)


def test_huge_logits_stay_finite():
    s, t, y = _rows(n=2, v=24, seed=4, scale=1e4)
    s_torch = s.clone()
    loss_rows_torch(s_torch, t.clone(), y, _spec("reverse_kl"), 1.0)
    ce, kl = K.loss_rows_triton(s, t, y, _spec("reverse_kl"), 1.0, block_v=16)
    assert torch.isfinite(ce).all() and torch.isfinite(kl).all() and torch.isfinite(s).all()
    torch.testing.assert_close(s, s_torch, atol=1e-5, rtol=1e-4)


def test_guard_padding_is_never_written():
    """Strided rows inside a larger buffer: the kernel must not touch the padding columns or rows."""
    n, v, pad = 3, 21, 5
    sentinel = 7.25
    s_full = torch.full((n + 2, v + pad), sentinel, device=DEVICE)
    t_full = torch.full((n + 2, v + pad), sentinel, device=DEVICE)
    s0, t0, y = _rows(n=n, v=v, seed=5)
    s_full[:n, :v] = s0
    t_full[:n, :v] = t0
    K.loss_rows_triton(s_full[:n, :v], t_full[:n, :v], y, _spec("skew_reverse_kl"), 1.0, block_v=16)
    assert (s_full[:, v:] == sentinel).all() and (s_full[n:] == sentinel).all()
    assert (t_full[:, v:] == sentinel).all() and (t_full[n:] == sentinel).all()
    assert torch.equal(t_full[:n, :v], t0)  # the teacher buffer is read-only


def test_row_offsets_are_int64():
    rows = torch.tensor([2**31 - 1, 70_000, 3], dtype=torch.int32, device=DEVICE)
    stride = 2**20 + 3
    expected = rows.to(torch.int64) * stride
    assert expected[0] > 2**31
    assert torch.equal(K.row_offsets(rows, stride), expected)


def test_fused_loss_with_the_triton_backend_matches_the_reference():
    case = make_case(n=9, h=8, ht=5, v=37, seed=6, ignore_frac=0.3)
    spec = LossSpec(kl_weight=1.0, divergence="jsd", beta=0.3, temperature=2.0, logit_swap=True)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        spec=LossSpec(**{**spec.__dict__, "chunk_size": 4}),
        backend="triton",
    )
    ref = run_linear(R.linear_distillation_loss, case, spec=spec)
    assert_all_close(got, ref, atol=1e-5, rtol=5e-4)


def test_fused_cross_entropy_with_the_triton_backend():
    case = make_case(n=7, v=29, seed=7).to(torch.float32)
    x = case.x.clone().requires_grad_()
    loss = losses.fused_linear_cross_entropy(x, case.w, case.y, case.b, backend="triton")
    loss.backward()
    x_ref = case.x.clone().requires_grad_()
    ref = R.linear_cross_entropy(x_ref, case.w, case.y, case.b)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=5e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=5e-4)


def test_strided_labels_are_read_with_their_stride():
    """A strided label view (labels[::2]) used to be read as if contiguous: a silently wrong loss."""
    s, t, y = _rows(n=5, v=37, seed=8)
    spread = torch.full((10,), 36, dtype=torch.int64, device=DEVICE)  # the wrong neighbours
    spread[::2] = y
    strided = spread[::2]
    assert strided.stride(0) == 2
    s_a, s_b = s.clone(), s.clone()
    ce_a, kl_a = K.loss_rows_triton(s_a, t, y, _spec("jsd"), 1.0, block_v=16)
    ce_b, kl_b = K.loss_rows_triton(s_b, t, strided, _spec("jsd"), 1.0, block_v=16)
    torch.testing.assert_close(ce_b, ce_a, atol=0, rtol=0)
    torch.testing.assert_close(kl_b, kl_a, atol=0, rtol=0)
    torch.testing.assert_close(s_b, s_a, atol=0, rtol=0)


def test_fused_loss_with_strided_labels_and_the_triton_backend():
    case = make_case(n=9, h=8, ht=5, v=37, seed=9, ignore_frac=0.3).to(torch.float32)
    spread = torch.full((18,), 36, dtype=torch.int64)
    spread[::2] = case.y
    spec = LossSpec(kl_weight=1.0, divergence="reverse_kl", logit_swap=True, chunk_size=4)
    got = losses.fused_linear_distillation_loss(
        case.x, case.w, spread[::2], spec=spec, teacher_hidden=case.xt, teacher_weight=case.wt,
        backend="triton",
    )  # fmt: skip
    ref = R.linear_distillation_loss(
        case.x, case.w, case.y, spec=spec, teacher_hidden=case.xt, teacher_weight=case.wt
    )
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=5e-4)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy, in discarded branches
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
)
def test_leading_all_minus_inf_block_is_not_nan(divergence):
    """The first BLOCK columns −inf in both logit sets (a masked vocabulary): the online softmax used
    to compute exp(−inf − (−inf)) = NaN. The result must be the loss on the remaining columns."""
    block, v = 16, 37
    s, t, y = _rows(n=4, v=v, seed=10)
    y = y.clamp(min=block)  # labels outside the masked block
    s[:, :block] = float("-inf")
    t[:, :block] = float("-inf")
    s_kernel = s.clone()
    ce, kl = K.loss_rows_triton(s_kernel, t, y, _spec(divergence), 0.5, block_v=block)
    s_ref = s[:, block:].clone()
    ce_ref, kl_ref = loss_rows_torch(s_ref, t[:, block:].clone(), y - block, _spec(divergence), 0.5)
    for a in (ce, kl, s_kernel):
        assert torch.isfinite(a).all()
    torch.testing.assert_close(ce, ce_ref, **TOL)
    torch.testing.assert_close(kl, kl_ref, **TOL)
    torch.testing.assert_close(s_kernel[:, block:], s_ref, **TOL)
    assert torch.count_nonzero(s_kernel[:, :block]) == 0  # masked columns get no gradient


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
)
def test_minus_inf_bias_masks_columns_in_the_fused_loss(backend, divergence):
    """A bias of −inf on the first 16 columns of both heads equals the loss on the other columns."""
    block = 16
    case = make_case(n=9, h=8, ht=5, v=37, seed=11, ignore_frac=0.2).to(torch.float32)
    case.y[case.y != -100] = case.y[case.y != -100].clamp(min=block)
    bias = case.b.clone()
    bias[:block] = float("-inf")
    spec = LossSpec(
        kl_weight=1.0, divergence=divergence, temperature=0.5, logit_swap=True, chunk_size=4
    )
    x = case.x.clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        x, case.w, case.y, spec=spec, student_bias=bias, teacher_hidden=case.xt,
        teacher_weight=case.wt, teacher_bias=bias, backend=backend,
    )  # fmt: skip
    loss.backward()
    y_ref = torch.where(case.y == -100, case.y, case.y - block)
    x_ref = case.x.clone().requires_grad_()
    ref = R.linear_distillation_loss(
        x_ref, case.w[block:], y_ref, spec=spec, student_bias=case.b[block:],
        teacher_hidden=case.xt, teacher_weight=case.wt[block:], teacher_bias=case.b[block:],
    )  # fmt: skip
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=5e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=5e-4)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
)
def test_token_weights_with_the_triton_backend(divergence, reduction):
    case = make_case(n=9, h=8, ht=5, v=37, seed=12, ignore_frac=0.3)
    g = torch.Generator().manual_seed(12)
    w = torch.rand(9, generator=g, dtype=torch.float64) * 2
    w[3] = 0.0
    spec = LossSpec(
        kl_weight=1.0, divergence=divergence, beta=0.2, temperature=2.0, logit_swap=True
    )
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        spec=LossSpec(**{**spec.__dict__, "chunk_size": 4}),
        token_weights=w.float(),
        reduction=reduction,
        backend="triton",
    )
    ref = run_linear(
        R.linear_distillation_loss, case, spec=spec, token_weights=w, reduction=reduction
    )
    assert_all_close(got, ref, atol=1e-5, rtol=5e-4)
