"""The fused, chunked losses (torch path) against the materializing reference."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import losses
from losses import fused as fused_mod
from losses import reference as R
from tests.losses.helpers import assert_all_close, assert_close, make_case, run_linear

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
FP64 = dict(atol=1e-10, rtol=1e-9)
FP32 = dict(atol=1e-5, rtol=5e-4)


def both(case, teacher=True, chunk_size=4, **kwargs):
    """(fused, reference) results for one case."""
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        teacher=teacher,
        chunk_size=chunk_size,
        backend="torch",
        **kwargs,
    )
    ref = run_linear(R.linear_distillation_loss, case, teacher=teacher, **kwargs)
    return got, ref


# ----------------------------------------------------------------------------------------------
# Every divergence × temperature × swap × reduction, in fp64 (tight) and fp32
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_matches_reference_fp64(divergence, tau, swap, reduction):
    case = make_case(seed=hash((divergence, tau, swap, reduction)) % 1000)
    got, ref = both(
        case,
        divergence=divergence,
        beta=0.3,
        temperature=tau,
        logit_swap=swap,
        reduction=reduction,
        ce_weight=0.7,
        kl_weight=1.3,
        scale_by_temperature_squared=tau != 1.0,
    )
    assert_all_close(got, ref, **FP64)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_betas_fp64(beta):
    got, ref = both(make_case(seed=11), divergence="jsd", beta=beta, temperature=2.0)
    assert_all_close(got, ref, **FP64)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("swap", [False, True])
def test_matches_reference_fp32(divergence, swap):
    case = make_case(n=21, h=16, ht=12, v=53, seed=5)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        chunk_size=8,
        divergence=divergence,
        temperature=2.0,
        logit_swap=swap,
        beta=0.4,
    )
    ref = run_linear(
        R.linear_distillation_loss,
        case,
        divergence=divergence,
        temperature=2.0,
        logit_swap=swap,
        beta=0.4,
    )
    assert_all_close(got, ref, **FP32)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_bf16_inputs_loose(divergence):
    """bf16 hidden states and heads: fp32 inside, compared with the fp32 reference on the same bf16 values."""
    case = make_case(n=24, h=16, ht=16, v=45, seed=8).to(torch.bfloat16)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        chunk_size=8,
        divergence=divergence,
        logit_swap=True,
    )
    ref = run_linear(R.linear_distillation_loss, case, divergence=divergence, logit_swap=True)
    assert got[0].dtype == torch.float32 and got[2]["w"].dtype == torch.bfloat16
    assert_close(got[0], ref[0], atol=5e-3, rtol=5e-2, what="loss")
    for key in ("x", "w", "b"):
        assert_close(got[2][key], ref[2][key], atol=5e-2, rtol=5e-1, what=key)


# ----------------------------------------------------------------------------------------------
# Ignore masks, chunking, ties, large logits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", [-100, 42])
def test_random_ignore_mask_and_custom_ignore_index(ignore_index):
    case = make_case(v=50, seed=2, ignore_frac=0.4, ignore_index=ignore_index)
    assert (case.y == ignore_index).any()
    got, ref = both(case, ignore_index=ignore_index, logit_swap=True)
    assert_all_close(got, ref, **FP64)


def test_all_ignored_chunk():
    case = make_case(n=12, seed=3, ignore_frac=0.0)
    case.y[4:8] = -100  # exactly the second chunk of 4 rows
    for reduction in ("mean", "sum", "none"):
        got, ref = both(case, chunk_size=4, reduction=reduction, divergence="jsd")
        assert_all_close(got, ref, **FP64)
        assert torch.count_nonzero(got[2]["x"][4:8]) == 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_batch_gives_zero_loss_and_zero_grads(reduction):
    case = make_case(seed=4)
    case.y[:] = -100
    loss, parts, grads = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        reduction=reduction,
        divergence="reverse_kl",
        logit_swap=True,
    )
    assert torch.count_nonzero(loss) == 0 and not torch.isnan(loss).any()
    assert torch.count_nonzero(parts["ce"]) == 0 and torch.count_nonzero(parts["kl"]) == 0
    for g in grads.values():
        assert g is not None and torch.count_nonzero(g) == 0


def test_label_already_the_teacher_argmax_makes_the_swap_a_no_op():
    case = make_case(seed=6, ignore_frac=0.0)
    with torch.no_grad():
        case.y[:] = (case.xt @ case.wt.T).argmax(-1)
    plain, _ = both(case, logit_swap=False)
    swapped, ref = both(case, logit_swap=True)
    assert_all_close(swapped, ref, **FP64)
    assert_all_close(swapped, plain, atol=0.0, rtol=0.0)


def test_teacher_ties_are_resolved_to_the_first_maximum():
    """Duplicate teacher rows in the head make exact ties in every teacher row's logits."""
    case = make_case(v=20, seed=7, ignore_frac=0.0)
    case.wt[3] *= 50.0  # column 3 becomes the maximum of many rows…
    case.wt[5] = case.wt[3]  # …tied with columns 5 and 17
    case.wt[17] = case.wt[3]
    zt = case.xt @ case.wt.T
    tied = zt.max(-1).values == zt[:, 17]
    assert tied.sum() >= 3 and (zt.argmax(-1)[tied] == 3).all()
    got, ref = both(case, logit_swap=True, divergence="reverse_kl")
    assert_all_close(got, ref, atol=1e-8, rtol=1e-8)


def test_swap_rows_in_place_semantics():
    from losses.rowwise import swap_rows_

    t = torch.tensor([[1.0, 5.0, 2.0, 5.0], [0.0, 3.0, 1.0, 2.0], [2.0, 7.0, 7.0, 1.0]])
    swap_rows_(t, torch.tensor([2, 1, 2]))
    assert torch.equal(
        t, torch.tensor([[1.0, 2.0, 5.0, 5.0], [0.0, 3.0, 1.0, 2.0], [2.0, 7.0, 7.0, 1.0]])
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, None])
def test_vocab_and_rows_not_multiples_of_the_chunk(chunk_size):
    case = make_case(n=19, v=41, seed=9)
    got, ref = both(case, chunk_size=chunk_size, divergence="jsd", logit_swap=True)
    assert_all_close(got, ref, **FP64)


def test_chunk_size_does_not_change_the_result_beyond_rounding():
    case = make_case(n=33, h=16, ht=8, v=61, seed=10).to(torch.float32)
    results = [
        run_linear(
            losses.fused_linear_distillation_loss,
            case,
            chunk_size=c,
            divergence="reverse_kl",
            logit_swap=True,
        )
        for c in (1, 5, 16, 33)
    ]
    for other in results[1:]:
        assert_all_close(other, results[0], atol=2e-6, rtol=1e-5)


def test_row_blocks_inside_a_chunk_do_not_change_the_result():
    from losses._common import make_spec
    from losses.rowwise import loss_rows_torch

    g = torch.Generator().manual_seed(12)
    s0, t0 = torch.randn(2, 9, 23, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 23, (9,), generator=g)
    spec = make_spec(
        ce_weight=1.0,
        kl_weight=1.0,
        divergence="jsd",
        beta=0.3,
        temperature=2.0,
        scale_by_temperature_squared=False,
        logit_swap=True,
        has_teacher=True,
    )
    outs = []
    for block in (23, 3 * 23, 10**6):
        s, t = s0.clone(), t0.clone()
        ce, kl = loss_rows_torch(
            s, t, y, spec, torch.linspace(0.5, 1, 9, dtype=torch.float64), block_elements=block
        )
        outs.append((ce, kl, s))
    for other in outs[1:]:
        for a, b in zip(other, outs[0]):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_huge_logits_do_not_overflow(divergence):
    """Logits of order 1e4 (exp would overflow in fp32 and fp64)."""
    case = make_case(n=10, v=30, seed=13, logit_scale=1e4)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        chunk_size=4,
        divergence=divergence,
        temperature=2.0,
        logit_swap=True,
    )
    for t in (got[0], *got[1].values(), *got[2].values()):
        assert torch.isfinite(t).all()
    ref = run_linear(
        R.linear_distillation_loss, case, divergence=divergence, temperature=2.0, logit_swap=True
    )
    # fp32 logits of size 1e4 carry absolute errors of about 1e-3, so compare relatively to the scale.
    assert_close(
        got[0], ref[0], atol=1e-2 * max(1.0, ref[0].abs().item()) * 1e-2, rtol=1e-3, what="loss"
    )
    assert_close(got[2]["b"], ref[2]["b"], atol=1e-3, rtol=1e-2, what="grad b")


def test_teacher_hidden_size_differs_and_no_bias():
    case = make_case(h=12, ht=5, seed=14, bias=False)
    got, ref = both(case, divergence="skew_reverse_kl", beta=0.2)
    assert got[2]["b"] is None
    assert_all_close(got, ref, **FP64)


def test_batched_inputs_are_flattened_and_none_keeps_the_label_shape():
    case = make_case(n=12, seed=15)
    x = case.x.reshape(3, 4, -1).clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        x,
        case.w,
        case.y.reshape(3, 4),
        teacher_hidden=case.xt.reshape(3, 4, -1),
        teacher_weight=case.wt,
        reduction="none",
    )
    ref = R.linear_distillation_loss(
        case.x, case.w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt, reduction="none"
    )
    assert loss.shape == (3, 4)
    torch.testing.assert_close(loss.reshape(-1), ref, **dict(atol=1e-10, rtol=1e-9))
    loss.sum().backward()
    assert x.grad.shape == x.shape


def test_parts_add_up_to_the_loss():
    case = make_case(seed=16)
    loss, parts, _ = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        ce_weight=0.3,
        kl_weight=2.0,
        temperature=2.0,
        scale_by_temperature_squared=True,
    )
    torch.testing.assert_close(loss, 0.3 * parts["ce"] + 2.0 * parts["kl"])
    assert not parts["ce"].requires_grad


def test_pure_distillation_and_teacher_given_with_zero_kl_weight():
    case = make_case(seed=17)
    got, ref = both(case, ce_weight=0.0, temperature=2.0, scale_by_temperature_squared=True)  # DiSC
    assert_all_close(got, ref, **FP64)
    got, ref = both(case, kl_weight=0.0)  # KL still reported, no gradient from it
    assert_all_close(got, ref, **FP64)
    assert got[1]["kl"] > 0


# ----------------------------------------------------------------------------------------------
# Autograd contract: gradcheck, normalizer, teacher gets nothing, inputs untouched
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    case = make_case(n=6, h=4, ht=3, v=9, seed=18, ignore_frac=0.2)
    x = case.x.clone().requires_grad_()
    w = case.w.clone().requires_grad_()
    b = case.b.clone().requires_grad_()

    def fn(x, w, b):
        return losses.fused_linear_distillation_loss(
            x,
            w,
            case.y,
            student_bias=b,
            teacher_hidden=case.xt,
            teacher_weight=case.wt,
            divergence="jsd",
            temperature=2.0,
            logit_swap=True,
            reduction=reduction,
            chunk_size=4,
            allow_retain_graph=True,
        )

    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-7, fast_mode=True)


def test_external_normalizer_accumulates_like_one_batch():
    """Two micro-batches with normalizer = the step's token count give the one-batch mean and gradients."""
    case = make_case(n=20, seed=19)
    n_tokens = int((case.y != -100).sum())
    w = case.w.clone().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for part, normalizer in ((slice(0, 8), n_tokens), (slice(8, 20), torch.tensor(n_tokens))):
        loss = losses.fused_linear_distillation_loss(
            case.x[part],
            w,
            case.y[part],
            teacher_hidden=case.xt[part],
            teacher_weight=case.wt,
            normalizer=normalizer,
            logit_swap=True,
        )
        loss.backward()
        total += loss.detach()
    w_one = case.w.clone().requires_grad_()
    one = losses.fused_linear_distillation_loss(
        case.x, w_one, case.y, teacher_hidden=case.xt, teacher_weight=case.wt, logit_swap=True
    )
    one.backward()
    torch.testing.assert_close(total, one.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(w.grad, w_one.grad, atol=1e-12, rtol=1e-12)


def test_no_gradient_reaches_the_teacher_even_when_it_shares_the_student_head():
    case = make_case(h=6, ht=6, seed=20)
    xt = case.xt.clone().requires_grad_()
    wt = case.wt.clone().requires_grad_()
    x = case.x.clone().requires_grad_()
    losses.fused_linear_distillation_loss(
        x, case.w, case.y, teacher_hidden=xt, teacher_weight=wt
    ).backward()
    assert xt.grad is None and wt.grad is None
    # LoRA-style teacher: the very same head tensor for both
    w = case.w.clone().requires_grad_()
    losses.fused_linear_distillation_loss(
        case.x, w, case.y, teacher_hidden=case.xt, teacher_weight=w
    ).backward()
    w_ref = case.w.clone().requires_grad_()
    R.linear_distillation_loss(
        case.x, w_ref, case.y, teacher_hidden=case.xt, teacher_weight=w_ref
    ).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, **dict(atol=1e-10, rtol=1e-9))


def test_inputs_are_not_mutated():
    case = make_case(seed=21)
    before = [t.clone() for t in (case.x, case.w, case.b, case.xt, case.wt, case.y)]
    run_linear(losses.fused_linear_distillation_loss, case, logit_swap=True, divergence="jsd")
    z = (case.x @ case.w.T).requires_grad_()
    zt = case.xt @ case.wt.T
    z0, zt0 = z.detach().clone(), zt.clone()
    losses.fused_distillation_loss(z, zt, case.y, logit_swap=True).backward()
    for a, b in zip(before, (case.x, case.w, case.b, case.xt, case.wt, case.y)):
        assert torch.equal(a, b)
    assert torch.equal(z.detach(), z0) and torch.equal(zt, zt0)


def test_frozen_head_gets_no_gradient_work():
    case = make_case(seed=22)
    x = case.x.clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        x, case.w, case.y, student_bias=case.b, teacher_hidden=case.xt, teacher_weight=case.wt
    )
    loss.backward()
    ref = run_linear(R.linear_distillation_loss, case)
    torch.testing.assert_close(x.grad, ref[2]["x"] / 1.7, atol=1e-10, rtol=1e-9)


def test_second_backward_needs_allow_retain_graph():
    case = make_case(seed=23)
    w = case.w.clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        case.x, w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="allow_retain_graph"):
        loss.backward()


def test_runs_under_torch_compile():
    case = make_case(seed=24).to(torch.float32)

    def step(x, w):
        return (
            losses.fused_linear_distillation_loss(
                x, w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt, logit_swap=True
            )
            * 2.0
        )

    x = case.x.clone().requires_grad_()
    compiled = torch.compile(step, backend="eager")(x, case.w)
    compiled.backward()
    eager_x = case.x.clone().requires_grad_()
    eager = step(eager_x, case.w)
    eager.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(x.grad, eager_x.grad)


# ----------------------------------------------------------------------------------------------
# The logits variant and plain cross-entropy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_logits_variant_matches_reference(reduction, divergence):
    case = make_case(seed=25)
    zt = case.xt @ case.wt.T
    results = []
    for fn, extra in (
        (losses.fused_distillation_loss, dict(chunk_size=3)),
        (R.distillation_loss, {}),
    ):
        z = (case.x @ case.w.T).requires_grad_()
        loss, parts = fn(
            z,
            zt,
            case.y,
            divergence=divergence,
            logit_swap=True,
            temperature=2.0,
            reduction=reduction,
            return_parts=True,
            **extra,
        )
        loss.backward(torch.ones_like(loss) * 1.3)
        results.append((loss.detach(), parts, z.grad))
    (l1, p1, g1), (l2, p2, g2) = results
    torch.testing.assert_close(l1, l2, **dict(atol=1e-10, rtol=1e-9))
    torch.testing.assert_close(p1["kl"], p2["kl"], **dict(atol=1e-10, rtol=1e-9))
    torch.testing.assert_close(g1, g2, **dict(atol=1e-10, rtol=1e-9))


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_linear_cross_entropy(backend, reduction):
    if backend == "native" and not losses.native_linear_cross_entropy_available():
        pytest.skip("torch has no F.linear_cross_entropy")
    case = make_case(n=17, seed=26).to(torch.float32)
    results = []
    for fn in (losses.fused_linear_cross_entropy, R.linear_cross_entropy):
        x = case.x.clone().requires_grad_()
        w = case.w.clone().requires_grad_()
        b = case.b.clone().requires_grad_()
        kwargs = (
            dict(chunk_size=4, backend=backend) if fn is losses.fused_linear_cross_entropy else {}
        )
        loss = fn(x, w, case.y, b, reduction=reduction, **kwargs)
        loss.backward(torch.ones_like(loss) * 0.7)
        results.append((loss.detach(), x.grad, w.grad, b.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **FP32)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_cross_entropy_matches_torch_oracles_and_handles_all_ignored(backend):
    if backend == "native" and not losses.native_linear_cross_entropy_available():
        pytest.skip("torch has no F.linear_cross_entropy")
    case = make_case(n=16, seed=27).to(torch.float32)
    oracle = F.cross_entropy(F.linear(case.x, case.w, case.b), case.y)
    got = losses.fused_linear_cross_entropy(case.x, case.w, case.y, case.b, backend=backend)
    torch.testing.assert_close(got, oracle, **FP32)
    if losses.native_linear_cross_entropy_available():
        native = F.linear_cross_entropy(
            case.x, case.w, case.y, linear_bias=case.b, options=torch.nn.LinearCrossEntropyOptions()
        )
        torch.testing.assert_close(got, native, **FP32)
    w = case.w.clone().requires_grad_()
    ignored = torch.full_like(case.y, -100)
    loss = losses.fused_linear_cross_entropy(case.x, w, ignored, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(w.grad) == 0
    n = torch.tensor(40)
    with_norm = losses.fused_linear_cross_entropy(
        case.x, case.w, case.y, case.b, normalizer=n, backend=backend
    )
    summed = losses.fused_linear_cross_entropy(
        case.x, case.w, case.y, case.b, reduction="sum", backend=backend
    )
    torch.testing.assert_close(with_norm, summed / 40)


# ----------------------------------------------------------------------------------------------
# Errors and dispatch
# ----------------------------------------------------------------------------------------------


def test_clear_errors():
    case = make_case(seed=28)
    call = losses.fused_linear_distillation_loss
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        call(case.x, case.w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt[:-1])
    with pytest.raises(ValueError, match="hidden size"):
        call(case.x[:, :-1], case.w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bad = case.y.clone()
        bad[0] = 10_000
        call(case.x, case.w, bad, teacher_hidden=case.xt, teacher_weight=case.wt)
    with pytest.raises(ValueError, match="already be shifted"):
        call(case.x, case.w, case.y[:-1], teacher_hidden=case.xt, teacher_weight=case.wt)
    with pytest.raises(ValueError, match="no teacher"):
        call(case.x, case.w, case.y)
    with pytest.raises(ValueError, match="normalizer"):
        call(case.x, case.w, case.y, kl_weight=0.0, reduction="sum", normalizer=3)
    with pytest.raises(ValueError, match="divergence"):
        call(
            case.x, case.w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt, divergence="tvd"
        )
    with pytest.raises(ValueError, match="temperature"):
        call(
            case.x, case.w, case.y, teacher_hidden=case.xt, teacher_weight=case.wt, temperature=0.0
        )
    with pytest.raises(ValueError, match="identically 0"):
        call(
            case.x,
            case.w,
            case.y,
            teacher_hidden=case.xt,
            teacher_weight=case.wt,
            divergence="skew_forward_kl",
            beta=1.0,
        )
    with pytest.raises(ValueError, match="cast one of them"):
        call(case.x.float(), case.w, case.y, kl_weight=0.0)


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(fused_mod, "_triton_importable", lambda: True)
    case = make_case(seed=29).to(torch.float32)
    with pytest.raises(ValueError, match="CUDA"):
        losses.fused_linear_distillation_loss(
            case.x, case.w, case.y, kl_weight=0.0, backend="triton"
        )


def test_cuda_without_triton_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(fused_mod, "_triton_importable", lambda: False)
    fused_mod._warn_no_triton_once.cache_clear()
    cuda = torch.device("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fused_mod._row_step("auto", cuda, torch.bfloat16) is fused_mod.loss_rows_torch
        assert fused_mod._row_step("auto", cuda, torch.bfloat16) is fused_mod.loss_rows_torch
    assert len([w for w in caught if "triton is not installed" in str(w.message)]) == 1
    assert (
        fused_mod._row_step("auto", torch.device("cpu"), torch.float32) is fused_mod.loss_rows_torch
    )


def test_importing_losses_loads_neither_triton_nor_dynamo():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, losses; print('triton' in sys.modules, 'torch._dynamo' in sys.modules)"
    root = Path(losses.__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.split() == ["False", "False"]
