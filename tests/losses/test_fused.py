"""The fused, chunked losses (torch path) against the materializing reference."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import losses
from losses import LossSpec
from losses import fused as fused_mod
from losses import reference as R
from losses._common import row_spec
from losses.rowwise import loss_rows_torch
from tests.losses.helpers import assert_all_close, assert_close, kd, make_case, run_linear

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
FP64 = dict(atol=1e-10, rtol=1e-9)
FP32 = dict(atol=1e-5, rtol=5e-4)


def both(case, teacher=True, chunk_size=4, *, spec=None, **kwargs):
    """(fused, reference) results for one case; ``spec`` defaults to CE + forward KL."""
    spec = spec or kd()
    fused_spec = LossSpec(**{**spec.__dict__, "chunk_size": chunk_size})
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        teacher=teacher,
        spec=fused_spec,
        backend="torch",
        **kwargs,
    )
    ref = run_linear(R.linear_distillation_loss, case, teacher=teacher, spec=spec, **kwargs)
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
    spec = LossSpec(
        ce_weight=0.7,
        kl_weight=1.3,
        divergence=divergence,
        beta=0.3,
        temperature=tau,
        scale_by_temperature_squared=tau != 1.0,
        logit_swap=swap,
    )
    got, ref = both(case, spec=spec, reduction=reduction)
    assert_all_close(got, ref, **FP64)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_betas_fp64(beta):
    got, ref = both(make_case(seed=11), spec=kd(divergence="jsd", beta=beta, temperature=2.0))
    assert_all_close(got, ref, **FP64)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("swap", [False, True])
def test_matches_reference_fp32(divergence, swap):
    case = make_case(n=21, h=16, ht=12, v=53, seed=5)
    spec = kd(divergence=divergence, temperature=2.0, logit_swap=swap, beta=0.4)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        spec=LossSpec(**{**spec.__dict__, "chunk_size": 8}),
    )
    ref = run_linear(R.linear_distillation_loss, case, spec=spec)
    assert_all_close(got, ref, **FP32)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_bf16_inputs_loose(divergence):
    """bf16 hidden states and heads: fp32 inside, compared with the fp32 reference on the same bf16 values."""
    case = make_case(n=24, h=16, ht=16, v=45, seed=8).to(torch.bfloat16)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        spec=kd(divergence=divergence, logit_swap=True, chunk_size=8),
    )
    ref = run_linear(
        R.linear_distillation_loss, case, spec=kd(divergence=divergence, logit_swap=True)
    )
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
    got, ref = both(case, spec=kd(logit_swap=True), ignore_index=ignore_index)
    assert_all_close(got, ref, **FP64)


def test_all_ignored_chunk():
    case = make_case(n=12, seed=3, ignore_frac=0.0)
    case.y[4:8] = -100  # exactly the second chunk of 4 rows
    for reduction in ("mean", "sum", "none"):
        got, ref = both(case, chunk_size=4, spec=kd(divergence="jsd"), reduction=reduction)
        assert_all_close(got, ref, **FP64)
        assert torch.count_nonzero(got[2]["x"][4:8]) == 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_batch_gives_zero_loss_and_zero_grads(reduction):
    case = make_case(seed=4)
    case.y[:] = -100
    loss, parts, grads = run_linear(
        losses.fused_linear_distillation_loss,
        case,
        spec=kd(divergence="reverse_kl", logit_swap=True),
        reduction=reduction,
    )
    assert torch.count_nonzero(loss) == 0 and not torch.isnan(loss).any()
    assert torch.count_nonzero(parts["ce"]) == 0 and torch.count_nonzero(parts["kl"]) == 0
    for g in grads.values():
        assert g is not None and torch.count_nonzero(g) == 0


def _integer_teacher(case, *, seed: int, tied_columns=()):
    """Replace the teacher by small-integer hidden states and head: every product and partial sum of
    its GEMMs is an exact integer in fp32/fp64, so any GEMM kernel, blocking or summation order (MKL's
    edge micro-kernels, chunk shapes) gives bit-identical logits. ``tied_columns`` get one shared,
    dominant head row: exact ties at the maximum of every row."""
    g = torch.Generator().manual_seed(seed)
    n, ht = case.xt.shape
    v = case.wt.shape[0]
    xt = torch.randint(-2, 3, (n, ht), generator=g).to(case.xt.dtype)
    xt[:, 0] = 3  # so that the dominant row below wins in every row
    wt = torch.randint(-2, 3, (v, ht), generator=g).to(case.wt.dtype)
    if tied_columns:
        top = torch.zeros(ht, dtype=wt.dtype)
        top[0] = 20  # logit 60 + 0, versus at most 3·2 + (ht−1)·4 = 26 elsewhere
        wt[list(tied_columns)] = top
    case.xt, case.wt = xt, wt
    return case


def test_label_already_the_teacher_argmax_makes_the_swap_a_no_op():
    case = _integer_teacher(make_case(seed=6, ignore_frac=0.0), seed=6)
    zt = case.xt @ case.wt.T  # exact: the same bits as the fused loop's chunked GEMMs
    is_unique_max = (zt == zt.max(-1, keepdim=True).values).sum(-1) == 1
    case.y[:] = zt.argmax(-1)
    case.y[~is_unique_max] = -100  # keep the rows whose argmax is unambiguous
    assert (case.y != -100).sum() >= 5
    plain, _ = both(case, spec=kd(logit_swap=False))
    swapped, ref = both(case, spec=kd(logit_swap=True))
    assert_all_close(swapped, ref, **FP64)
    assert_all_close(swapped, plain, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_teacher_ties_are_resolved_to_the_first_maximum(dtype):
    """Exact ties at the maximum (columns 3, 5, 17) built from integer-valued teacher inputs, so that
    they are ties in every GEMM, whatever its kernel (duplicated float rows are not: MKL's edge
    micro-kernel gives the duplicated columns different last bits on AMD EPYC)."""
    case = _integer_teacher(
        make_case(v=20, seed=7, ignore_frac=0.0), seed=7, tied_columns=(3, 5, 17)
    )
    zt = case.xt @ case.wt.T
    assert (zt[:, 3] == zt[:, 17]).all() and (zt[:, 5] == zt[:, 3]).all()
    assert (zt.argmax(-1) == 3).all()
    case.y[:4] = torch.tensor(
        [5, 17, 3, 0]
    )  # labels on the other tied columns, the first, elsewhere
    case = case.to(dtype)
    tol = FP64 if dtype == torch.float64 else FP32
    got, ref = both(case, spec=kd(logit_swap=True, divergence="reverse_kl"))
    assert_all_close(got, ref, **tol)
    # A label on a tied column exchanges equal values (no change); elsewhere column 3 is the one moved.
    swapped = R.swap_teacher_logits(zt, case.y)
    assert torch.equal(swapped[:3], zt[:3])
    assert swapped[3, 0] == zt[3, 3] and swapped[3, 3] == zt[3, 0] and swapped[3, 5] == zt[3, 5]


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
    got, ref = both(case, chunk_size=chunk_size, spec=kd(divergence="jsd", logit_swap=True))
    assert_all_close(got, ref, **FP64)


def test_chunk_size_does_not_change_the_result_beyond_rounding():
    case = make_case(n=33, h=16, ht=8, v=61, seed=10).to(torch.float32)
    results = [
        run_linear(
            losses.fused_linear_distillation_loss,
            case,
            spec=kd(divergence="reverse_kl", logit_swap=True, chunk_size=c),
        )
        for c in (1, 5, 16, 33)
    ]
    for other in results[1:]:
        assert_all_close(other, results[0], atol=2e-6, rtol=1e-5)


def test_row_blocks_inside_a_chunk_do_not_change_the_result():
    from losses._common import row_spec
    from losses.rowwise import loss_rows_torch

    g = torch.Generator().manual_seed(12)
    s0, t0 = torch.randn(2, 9, 23, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 23, (9,), generator=g)
    spec = row_spec(
        kd(divergence="jsd", beta=0.3, temperature=2.0, logit_swap=True), has_teacher=True
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
    spec = kd(divergence=divergence, temperature=2.0, logit_swap=True)
    got = run_linear(
        losses.fused_linear_distillation_loss,
        case.to(torch.float32),
        spec=LossSpec(**{**spec.__dict__, "chunk_size": 4}),
    )
    for t in (got[0], *got[1].values(), *got[2].values()):
        assert torch.isfinite(t).all()
    ref = run_linear(R.linear_distillation_loss, case, spec=spec)
    # fp32 logits of size 1e4 carry absolute errors of about 1e-3, so compare relatively to the scale.
    assert_close(
        got[0], ref[0], atol=1e-2 * max(1.0, ref[0].abs().item()) * 1e-2, rtol=1e-3, what="loss"
    )
    assert_close(got[2]["b"], ref[2]["b"], atol=1e-3, rtol=1e-2, what="grad b")


def test_bf16_teacher_next_to_an_fp32_student():
    """A frozen teacher kept in bf16 while the student trains in fp32 (each head in its own dtype)."""
    case = make_case(n=20, h=16, ht=12, v=45, seed=33).to(torch.float32)
    case.xt, case.wt = case.xt.to(torch.bfloat16), case.wt.to(torch.bfloat16)
    got = run_linear(
        losses.fused_linear_distillation_loss, case, spec=kd(divergence="jsd", chunk_size=8)
    )
    ref = run_linear(R.linear_distillation_loss, case, spec=kd(divergence="jsd"))
    assert got[2]["w"].dtype == torch.float32
    assert_all_close(got, ref, atol=1e-4, rtol=1e-3)


def test_teacher_hidden_size_differs_and_no_bias():
    case = make_case(h=12, ht=5, seed=14, bias=False)
    got, ref = both(case, spec=kd(divergence="skew_reverse_kl", beta=0.2))
    assert got[2]["b"] is None
    assert_all_close(got, ref, **FP64)


def test_batched_inputs_are_flattened_and_none_keeps_the_label_shape():
    case = make_case(n=12, seed=15)
    x = case.x.reshape(3, 4, -1).clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        x,
        case.w,
        case.y.reshape(3, 4),
        spec=kd(),
        teacher_hidden=case.xt.reshape(3, 4, -1),
        teacher_weight=case.wt,
        reduction="none",
    )
    ref = R.linear_distillation_loss(
        case.x,
        case.w,
        case.y,
        spec=kd(),
        teacher_hidden=case.xt,
        teacher_weight=case.wt,
        reduction="none",
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
        spec=LossSpec(
            ce_weight=0.3, kl_weight=2.0, temperature=2.0, scale_by_temperature_squared=True
        ),
    )
    torch.testing.assert_close(loss, 0.3 * parts["ce"] + 2.0 * parts["kl"])
    assert not parts["ce"].requires_grad


def test_pure_distillation_and_teacher_given_with_zero_kl_weight():
    case = make_case(seed=17)
    disc = kd(ce_weight=0.0, temperature=2.0, scale_by_temperature_squared=True)
    got, ref = both(case, spec=disc)
    assert_all_close(got, ref, **FP64)
    got, ref = both(case, spec=LossSpec())  # KL still reported, no gradient from it
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
            spec=kd(divergence="jsd", temperature=2.0, logit_swap=True, chunk_size=4),
            teacher_hidden=case.xt,
            teacher_weight=case.wt,
            reduction=reduction,
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
            spec=kd(logit_swap=True),
            teacher_hidden=case.xt[part],
            teacher_weight=case.wt,
            normalizer=normalizer,
        )
        loss.backward()
        total += loss.detach()
    w_one = case.w.clone().requires_grad_()
    one = losses.fused_linear_distillation_loss(
        case.x,
        w_one,
        case.y,
        spec=kd(logit_swap=True),
        teacher_hidden=case.xt,
        teacher_weight=case.wt,
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
        x, case.w, case.y, spec=kd(), teacher_hidden=xt, teacher_weight=wt
    ).backward()
    assert xt.grad is None and wt.grad is None
    # LoRA-style teacher: the very same head tensor for both
    w = case.w.clone().requires_grad_()
    losses.fused_linear_distillation_loss(
        case.x, w, case.y, spec=kd(), teacher_hidden=case.xt, teacher_weight=w
    ).backward()
    w_ref = case.w.clone().requires_grad_()
    R.linear_distillation_loss(
        case.x, w_ref, case.y, spec=kd(), teacher_hidden=case.xt, teacher_weight=w_ref
    ).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, **dict(atol=1e-10, rtol=1e-9))


def test_inputs_are_not_mutated():
    case = make_case(seed=21)
    before = [t.clone() for t in (case.x, case.w, case.b, case.xt, case.wt, case.y)]
    run_linear(
        losses.fused_linear_distillation_loss, case, spec=kd(logit_swap=True, divergence="jsd")
    )
    z = (case.x @ case.w.T).requires_grad_()
    zt = case.xt @ case.wt.T
    z0, zt0 = z.detach().clone(), zt.clone()
    losses.fused_distillation_loss(z, zt, case.y, spec=kd(logit_swap=True)).backward()
    for a, b in zip(before, (case.x, case.w, case.b, case.xt, case.wt, case.y)):
        assert torch.equal(a, b)
    assert torch.equal(z.detach(), z0) and torch.equal(zt, zt0)


def test_frozen_head_gets_no_gradient_work():
    case = make_case(seed=22)
    x = case.x.clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        x,
        case.w,
        case.y,
        spec=kd(),
        student_bias=case.b,
        teacher_hidden=case.xt,
        teacher_weight=case.wt,
    )
    loss.backward()
    ref = run_linear(R.linear_distillation_loss, case, spec=kd())
    torch.testing.assert_close(x.grad, ref[2]["x"] / 1.7, atol=1e-10, rtol=1e-9)


def test_second_backward_needs_allow_retain_graph():
    case = make_case(seed=23)
    w = case.w.clone().requires_grad_()
    loss = losses.fused_linear_distillation_loss(
        case.x, w, case.y, spec=kd(), teacher_hidden=case.xt, teacher_weight=case.wt
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="allow_retain_graph"):
        loss.backward()


def test_runs_under_torch_compile():
    case = make_case(seed=24).to(torch.float32)

    def step(x, w):
        return (
            losses.fused_linear_distillation_loss(
                x,
                w,
                case.y,
                spec=kd(logit_swap=True),
                teacher_hidden=case.xt,
                teacher_weight=case.wt,
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
    spec = kd(divergence=divergence, logit_swap=True, temperature=2.0)
    for fn, chunk in ((losses.fused_distillation_loss, 3), (R.distillation_loss, None)):
        z = (case.x @ case.w.T).requires_grad_()
        loss, parts = fn(
            z,
            zt,
            case.y,
            spec=LossSpec(**{**spec.__dict__, "chunk_size": chunk}),
            reduction=reduction,
            return_parts=True,
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
    teacher = dict(teacher_hidden=case.xt, teacher_weight=case.wt)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        call(case.x, case.w, case.y, spec=kd(), teacher_hidden=case.xt, teacher_weight=case.wt[:-1])
    with pytest.raises(ValueError, match="hidden size"):
        call(case.x[:, :-1], case.w, case.y, spec=kd(), **teacher)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bad = case.y.clone()
        bad[0] = 10_000
        call(case.x, case.w, bad, spec=kd(), **teacher)
    with pytest.raises(ValueError, match="already be shifted"):
        call(case.x, case.w, case.y[:-1], spec=kd(), **teacher)
    with pytest.raises(ValueError, match="no teacher"):
        call(case.x, case.w, case.y, spec=kd())
    with pytest.raises(ValueError, match="normalizer"):
        call(case.x, case.w, case.y, reduction="sum", normalizer=3)
    with pytest.raises(ValueError, match="spec must be a losses.LossSpec"):
        call(case.x, case.w, case.y, spec={"kl_weight": 1.0})
    with pytest.raises(ValueError, match="cast one of them"):
        call(case.x.float(), case.w, case.y)
    with pytest.raises(ValueError, match="token_weights has shape"):
        call(case.x, case.w, case.y, token_weights=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        call(case.x, case.w, case.y, token_weights=torch.ones_like(case.y))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(divergence="tvd"), "LossSpec.divergence must be one of"),
        (dict(temperature=0.0), "LossSpec.temperature must be a finite number > 0, got 0.0"),
        (dict(temperature=-1), "LossSpec.temperature must be a finite number > 0, got -1"),
        (dict(temperature=float("inf")), "LossSpec.temperature"),
        (dict(ce_weight=float("nan")), "LossSpec.ce_weight must be a finite number"),
        (dict(kl_weight="1"), "LossSpec.kl_weight must be a finite number"),
        (dict(beta=1.5), "LossSpec.beta must lie in"),
        (dict(divergence="skew_forward_kl", beta=1.0), "identically 0"),
        (dict(logit_swap=1), "LossSpec.logit_swap must be a bool"),
        (dict(scale_by_temperature_squared="yes"), "LossSpec.scale_by_temperature_squared"),
        (dict(chunk_size=0), "LossSpec.chunk_size must be a positive int or None"),
        (dict(chunk_size=2.5), "LossSpec.chunk_size"),
    ],
)
def test_loss_spec_validates_each_field_once(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LossSpec(**kwargs)


def test_loss_spec_defaults_and_uses_teacher():
    spec = LossSpec()
    assert (spec.ce_weight, spec.kl_weight, spec.divergence) == (1.0, 0.0, "forward_kl")
    assert not spec.uses_teacher and LossSpec(kl_weight=0.5).uses_teacher
    assert hash(spec) == hash(LossSpec())  # frozen, usable as a key
    doc = LossSpec.__doc__
    for field in spec.__dataclass_fields__:
        assert f"    {field}:" in doc, f"Args: section lacks {field}"


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(fused_mod, "_triton_importable", lambda: True)
    case = make_case(seed=29).to(torch.float32)
    with pytest.raises(ValueError, match="CUDA"):
        losses.fused_linear_distillation_loss(case.x, case.w, case.y, backend="triton")


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


def test_any_triton_failure_falls_back_to_torch_with_one_warning(monkeypatch):
    """backend="auto" on CUDA: an exception while importing/compiling/launching the kernel (not only
    ImportError) switches to the torch row step, warning once with the error's name."""
    import losses.triton_kernels as K

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly aborted (simulated)")

    monkeypatch.setattr(fused_mod, "_triton_importable", lambda: True)
    monkeypatch.setattr(K, "loss_rows_triton", broken)
    monkeypatch.setattr(fused_mod, "_TRITON_FAILURE", [])
    step = fused_mod._row_step("auto", torch.device("cuda"), torch.bfloat16)
    assert step is fused_mod._triton_or_torch_row_step
    spec = row_spec(kd(divergence="jsd", temperature=2.0), has_teacher=True)
    g = torch.Generator().manual_seed(30)
    s, t = torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (5,), generator=g)
    expected_s = s.clone()
    expected = loss_rows_torch(expected_s, t.clone(), y, spec, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            s_run = s.clone()
            got = step(s_run, t.clone(), y, spec, 0.5)
            torch.testing.assert_close(got, expected, atol=0, rtol=0)
            torch.testing.assert_close(s_run, expected_s, atol=0, rtol=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "RuntimeError: PTX assembly aborted" in messages[0]
    # An explicit backend="triton" never hides errors behind the fallback.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused_mod._row_step("triton", torch.device("cpu"), torch.float32) is broken


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_autocast_uses_the_autocast_dtype_explicitly(divergence):
    """Under CPU bf16 autocast: bf16 inputs give exactly the result without autocast (no silent fp32
    GEMMs, no crash); fp32 inputs are cast to bf16 once, as an explicit bf16 call does."""
    case = make_case(n=24, h=16, ht=16, v=45, seed=31)
    spec = kd(divergence=divergence, logit_swap=True, chunk_size=8)
    low = case.to(torch.bfloat16)
    plain = run_linear(losses.fused_linear_distillation_loss, low, spec=spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = run_linear(losses.fused_linear_distillation_loss, low, spec=spec)
    assert_all_close(under, plain, atol=0.0, rtol=0.0)
    assert under[2]["w"].dtype == torch.bfloat16
    full = case.to(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = run_linear(losses.fused_linear_distillation_loss, full, spec=spec)
    assert cast[2]["w"].dtype == torch.float32  # the gradient flows back through the cast
    assert_close(cast[0], plain[0], atol=0.0, rtol=0.0, what="loss")
    for key in ("x", "w", "b"):
        assert_close(cast[2][key], plain[2][key].float(), atol=0.0, rtol=0.0, what=key)
    # the logits variant under autocast: logits used in their own dtype
    z = (full.x @ full.w.T).detach()
    zt = full.xt @ full.wt.T
    ref = losses.fused_distillation_loss(z, zt, full.y, spec=spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.fused_distillation_loss(z, zt, full.y, spec=spec)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_cross_entropy_under_autocast_matches_explicit_bf16():
    case = make_case(n=16, seed=32).to(torch.float32)
    low = case.to(torch.bfloat16)
    plain = losses.fused_linear_cross_entropy(low.x, low.w, low.y, low.b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = losses.fused_linear_cross_entropy(case.x, case.w, case.y, case.b)
    assert torch.equal(under, plain)


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


def test_no_gradient_work_under_no_grad(monkeypatch):
    """Under `torch.no_grad` (evaluation) the fused loop computes no gradient, even for a trainable
    LM-head weight, and gives the same loss."""
    import losses.fused as fused

    seen = []
    original = fused._run_chunks

    def spy(*args, **kwargs):
        seen.append(kwargs["needs"])
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "_run_chunks", spy)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(11, 8, generator=g))
    y = torch.randint(0, 11, (6,), generator=g)
    spec = LossSpec(ce_weight=0.0, kl_weight=1.0)
    xt, wt = torch.randn(6, 8, generator=g), torch.randn(11, 8, generator=g)
    with torch.no_grad():
        quiet = losses.fused_linear_distillation_loss(
            x, w, y, spec=spec, teacher_hidden=xt, teacher_weight=wt, reduction="sum"
        )
        ce = losses.fused_linear_cross_entropy(x, w, y, reduction="sum")
    assert seen == [(False, False, False)] * 2
    loud = losses.fused_linear_distillation_loss(
        x, w, y, spec=spec, teacher_hidden=xt, teacher_weight=wt, reduction="sum"
    )
    assert seen[-1][:2] == (True, True)
    torch.testing.assert_close(quiet, loud.detach())
    assert not quiet.requires_grad and not ce.requires_grad
