"""The reference definitions against independent formulas (the oracle must itself be right)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import reference as R


def _explicit(zs, zt, divergence, beta, tau):
    """D(p ‖ q) per row written with plain sums over probabilities (fp64)."""
    q = torch.softmax(zs / tau, -1)
    p = torch.softmax(zt / tau, -1)

    def kl(a, b):  # KL(a ‖ b)
        return (a * (a.log() - b.log())).sum(-1)

    if divergence == "forward_kl":
        return kl(p, q)
    if divergence == "reverse_kl":
        return kl(q, p)
    if divergence == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if divergence == "skew_forward_kl":
        return kl(p, beta * p + (1 - beta) * q)
    return kl(q, beta * q + (1 - beta) * p)


@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_token_divergence_matches_explicit_sums(divergence, beta, tau):
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(5, 11, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(5, 11, generator=g, dtype=torch.float64) * 2
    got = R.token_divergence(zs, zt, divergence, beta, tau)
    torch.testing.assert_close(
        got, _explicit(zs, zt, divergence, beta, tau), atol=1e-12, rtol=1e-10
    )


def test_jsd_endpoints_follow_the_trl_convention():
    """β=0 is KL(teacher ‖ student) and β=1 is KL(student ‖ teacher), as F.kl_div computes them."""
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    log_q, log_p = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
    fwd = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    rev = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(R.token_divergence(zs, zt, "jsd", 0.0), fwd)
    torch.testing.assert_close(R.token_divergence(zs, zt, "jsd", 1.0), rev)
    torch.testing.assert_close(R.token_divergence(zs, zt, "skew_forward_kl", 0.0), fwd)


def test_forward_kl_gradient_equals_the_soft_cross_entropy_form():
    """DistiLLM/torchtune drop the teacher entropy: −Σ p log q has the same student gradient as KL(p ‖ q)."""
    g = torch.Generator().manual_seed(5)
    zs = torch.randn(4, 10, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 10, generator=g, dtype=torch.float64)
    (g_kl,) = torch.autograd.grad(
        R.token_divergence(zs, zt, "forward_kl", temperature=2.0).sum(), zs
    )
    soft_ce = -(torch.softmax(zt / 2, -1) * torch.log_softmax(zs / 2, -1)).sum()
    (g_ce,) = torch.autograd.grad(soft_ce, zs)
    torch.testing.assert_close(g_kl, g_ce, atol=1e-12, rtol=1e-10)


def test_swap_exchanges_first_argmax_and_label_logits():
    z = torch.tensor(
        [
            [1.0, 5.0, 2.0, 5.0],  # tie at 1 and 3: the first (1) trades with the label (2)
            [0.0, 3.0, 1.0, 2.0],  # label is the argmax: unchanged
            [4.0, 0.0, 1.0, 2.0],  # ignored row: unchanged
            [2.0, 7.0, 7.0, 1.0],  # label (2) ties the max at 1: exchanging equal values, unchanged
        ]
    )
    labels = torch.tensor([2, 1, -100, 2])
    out = R.swap_teacher_logits(z, labels)
    expected = torch.tensor(
        [[1.0, 2.0, 5.0, 5.0], [0.0, 3.0, 1.0, 2.0], [4.0, 0.0, 1.0, 2.0], [2.0, 7.0, 7.0, 1.0]]
    )
    assert torch.equal(out, expected)
    assert torch.equal(z[0], torch.tensor([1.0, 5.0, 2.0, 5.0]))  # input untouched


def test_cross_entropy_matches_torch_and_all_ignored_mean_is_zero():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, -100, 3, 8, -100, 0])
    torch.testing.assert_close(R.cross_entropy(z, y), F.cross_entropy(z, y))
    torch.testing.assert_close(
        R.cross_entropy(z, y, reduction="sum"), F.cross_entropy(z, y, reduction="sum")
    )
    everything_ignored = torch.full((6,), -100)
    loss = R.cross_entropy(z, everything_ignored)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0


def test_sequence_log_probs_reference_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], dtype=torch.float64))
    labels = torch.tensor([[0, 2]])
    expected = math.log(0.5) + math.log(0.8)
    assert R.sequence_log_probs(logits, labels).item() == pytest.approx(expected)
    assert R.sequence_log_probs(logits, labels, average=True).item() == pytest.approx(expected / 2)
    masked = torch.tensor([[-100, 2]])
    assert R.sequence_log_probs(logits, masked).item() == pytest.approx(math.log(0.8))
