"""Per-token weights: each row's loss times its weight before the reduction, in every function and path."""

from __future__ import annotations

import pytest
import torch

import losses
from losses import LossSpec
from losses import reference as R
from tests.losses.helpers import assert_all_close, assert_close, kd, make_case, run_linear

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
FP64 = dict(atol=1e-10, rtol=1e-9)
FP32 = dict(atol=1e-5, rtol=5e-4)


def _weights(n: int, seed: int = 0, zeros: int = 2) -> torch.Tensor:
    """Positive weights in [0, 2) with a few exact zeros (a masked document, a zero TALR weight)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=torch.float64) * 2
    w[torch.randperm(n, generator=g)[:zeros]] = 0.0
    return w


def _with_chunk(spec: LossSpec, chunk: int | None) -> LossSpec:
    return LossSpec(**{**spec.__dict__, "chunk_size": chunk})


def test_reference_weighting_by_hand():
    """The oracle itself: Σ w·loss, Σ w·loss / Σ w over the non-ignored rows, w·loss per token."""
    case = make_case(n=9, seed=1, ignore_frac=0.3)
    z, zt = case.x @ case.w.T, case.xt @ case.wt.T
    w = _weights(9, seed=1)
    spec = kd(divergence="jsd", temperature=2.0)
    per_token = R.distillation_loss(z, zt, case.y, spec=spec, reduction="none")
    valid = case.y != -100
    got_none = R.distillation_loss(z, zt, case.y, spec=spec, token_weights=w, reduction="none")
    torch.testing.assert_close(got_none, per_token * w)
    got_sum = R.distillation_loss(z, zt, case.y, spec=spec, token_weights=w, reduction="sum")
    torch.testing.assert_close(got_sum, (per_token * w).sum())
    got_mean = R.distillation_loss(z, zt, case.y, spec=spec, token_weights=w)
    torch.testing.assert_close(got_mean, (per_token * w).sum() / w[valid].sum())
    zero = R.distillation_loss(z, zt, case.y, spec=spec, token_weights=torch.zeros(9))
    assert zero.item() == 0.0 and not torch.isnan(zero)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fused_matches_reference_fp64(divergence, reduction):
    case = make_case(n=15, seed=hash((divergence, reduction)) % 1000, ignore_frac=0.3)
    w = _weights(15, seed=3)
    spec = LossSpec(
        ce_weight=0.6, kl_weight=1.4, divergence=divergence, beta=0.3, temperature=2.0,
        logit_swap=True, scale_by_temperature_squared=True,
    )  # fmt: skip
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        spec=_with_chunk(spec, 4),
        token_weights=w,
        reduction=reduction,
        backend="torch",
    )
    ref = run_linear(
        R.linear_distillation_loss, case, spec=spec, token_weights=w, reduction=reduction
    )
    assert_all_close(got, ref, **FP64)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fused_matches_reference_fp32_and_bf16(divergence):
    case = make_case(n=21, h=16, ht=12, v=53, seed=5, ignore_frac=0.25)
    w = _weights(21, seed=4)
    spec = kd(divergence=divergence, temperature=2.0, logit_swap=True, beta=0.4)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        spec=_with_chunk(spec, 8),
        token_weights=w.float(),
    )
    ref = run_linear(R.linear_distillation_loss, case, spec=spec, token_weights=w)
    assert_all_close(got, ref, **FP32)
    low = case.to(torch.bfloat16)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        low,
        spec=_with_chunk(spec, 8),
        token_weights=w.to(torch.bfloat16),
    )
    ref = run_linear(R.linear_distillation_loss, low, spec=spec, token_weights=w.to(torch.bfloat16))
    assert_close(got[0], ref[0], atol=5e-3, rtol=5e-2, what="loss")
    for key in ("x", "w", "b"):
        assert_close(got[2][key], ref[2][key], atol=5e-2, rtol=5e-1, what=key)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_weights_give_zero_loss_and_gradients(reduction):
    case = make_case(seed=6)
    loss, parts, grads = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        spec=kd(divergence="reverse_kl"),
        token_weights=torch.zeros(case.y.shape, dtype=torch.float64),
        reduction=reduction,
    )
    assert torch.count_nonzero(loss) == 0 and not torch.isnan(loss).any()
    assert torch.count_nonzero(parts["kl"]) == 0
    for g in grads.values():
        assert torch.count_nonzero(g) == 0


def test_unit_weights_equal_no_weights_and_weights_are_constants():
    case = make_case(seed=7)
    plain = run_linear(losses.fused_linear_distillation_loss, case, spec=kd(logit_swap=True))
    w = torch.ones(case.y.shape, dtype=torch.float64, requires_grad=True)
    ones = run_linear(
        losses.fused_linear_distillation_loss, case, spec=kd(logit_swap=True), token_weights=w
    )
    assert_all_close(ones, plain, **FP64)
    assert w.grad is None  # detached: no gradient flows to the weights


def test_normalizer_with_weights_divides_the_weighted_sum():
    case = make_case(seed=8)
    w = _weights(case.y.numel(), seed=8)
    call = losses.fused_linear_distillation_loss
    teacher = dict(teacher_hidden=case.xt, teacher_weight=case.wt)
    summed = call(case.x, case.w, case.y, spec=kd(), token_weights=w, reduction="sum", **teacher)
    normed = call(case.x, case.w, case.y, spec=kd(), token_weights=w, normalizer=7, **teacher)
    torch.testing.assert_close(normed, summed / 7, **FP64)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    case = make_case(n=6, h=4, ht=3, v=9, seed=9, ignore_frac=0.2)
    w_tok = _weights(6, seed=9, zeros=1)
    args = tuple(t.clone().requires_grad_() for t in (case.x, case.w, case.b))

    def fn(x, w, b):
        return losses.fused_linear_distillation_loss(
            x,
            w,
            case.y,
            student_bias=b,
            spec=kd(divergence="skew_reverse_kl", temperature=2.0, logit_swap=True, chunk_size=4),
            teacher_hidden=case.xt,
            teacher_weight=case.wt,
            token_weights=w_tok,
            reduction=reduction,
            allow_retain_graph=True,
        )

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_logits_variant(reduction):
    case = make_case(seed=10, ignore_frac=0.3)
    zt = case.xt @ case.wt.T
    w = _weights(case.y.numel(), seed=10)
    spec = kd(divergence="jsd", logit_swap=True, temperature=2.0)
    results = []
    for fn, chunk in ((losses.fused_distillation_loss, 3), (R.distillation_loss, None)):
        z = (case.x @ case.w.T).requires_grad_()
        loss, parts = fn(
            z,
            zt,
            case.y,
            spec=_with_chunk(spec, chunk),
            token_weights=w,
            reduction=reduction,
            return_parts=True,
        )
        loss.backward(torch.ones_like(loss) * 1.3)
        results.append((loss.detach(), parts["ce"], parts["kl"], z.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **FP64)


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_with_weights(backend, reduction):
    if backend == "native" and not losses.native_linear_cross_entropy_available():
        pytest.skip("torch has no F.linear_cross_entropy")
    case = make_case(n=17, seed=11, ignore_frac=0.3).to(torch.float32)
    w_tok = _weights(17, seed=11).float()
    results = []
    for fused in (True, False):
        x, w, b = (t.clone().requires_grad_() for t in (case.x, case.w, case.b))
        if fused:
            loss = losses.fused_linear_cross_entropy(
                x, w, case.y, b, token_weights=w_tok, reduction=reduction, chunk_size=4,
                backend=backend,
            )  # fmt: skip
        else:
            loss = R.linear_cross_entropy(x, w, case.y, b, token_weights=w_tok, reduction=reduction)
        loss.backward(torch.ones_like(loss) * 0.7)
        results.append((loss.detach(), x.grad, w.grad, b.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **FP32)


def test_all_zero_weights_with_native_backend_give_zero():
    if not losses.native_linear_cross_entropy_available():
        pytest.skip("torch has no F.linear_cross_entropy")
    case = make_case(n=8, seed=12).to(torch.float32)
    loss = losses.fused_linear_cross_entropy(
        case.x, case.w, case.y, token_weights=torch.zeros(8), backend="native"
    )
    assert loss.item() == 0.0


def test_sequence_weighting_matches_per_sequence_means():
    """Per-document reduction (SFT/DiSC style): weights 1/len(doc) make the sum a mean of means."""
    g = torch.Generator().manual_seed(13)
    hidden = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(19, 8, generator=g, dtype=torch.float64) * 0.5
    labels = torch.randint(0, 19, (3, 5), generator=g)
    labels[0, :3] = -100
    valid = labels != -100
    w = valid.double() / valid.sum(-1, keepdim=True)
    got = losses.fused_linear_cross_entropy(
        hidden, weight, labels, token_weights=w, reduction="sum"
    )
    per_doc = -R.sequence_log_probs(hidden @ weight.T, labels, average=True)
    torch.testing.assert_close(got, per_doc.sum(), **FP64)
