"""DPO variants on hand-computed cases; sequence log-probabilities from hidden states."""

from __future__ import annotations

import math

import pytest
import torch

import losses
from losses import reference as R


def _logsigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v))


# One pair: policy (chosen, rejected) = (−1, −3), reference = (−2, −2.5).
# Margin h = (−1 + 3) − (−2 + 2.5) = 1.5; reference-free margin = 2.
PAIR = dict(
    policy_chosen_logps=torch.tensor([-1.0], dtype=torch.float64),
    policy_rejected_logps=torch.tensor([-3.0], dtype=torch.float64),
    reference_chosen_logps=torch.tensor([-2.0], dtype=torch.float64),
    reference_rejected_logps=torch.tensor([-2.5], dtype=torch.float64),
)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(loss_type="sigmoid"), -_logsigmoid(0.15)),
        (
            dict(loss_type="sigmoid", label_smoothing=0.1),
            -0.9 * _logsigmoid(0.15) - 0.1 * _logsigmoid(-0.15),
        ),
        (
            dict(loss_type="robust", label_smoothing=0.1),
            (-0.9 * _logsigmoid(0.15) + 0.1 * _logsigmoid(-0.15)) / 0.8,
        ),
        (dict(loss_type="robust"), -_logsigmoid(0.15)),
        (dict(loss_type="hinge"), 1 - 0.15),
        (dict(loss_type="ipo", average_log_prob=True), (1.5 - 1 / (2 * 0.1)) ** 2),
        (dict(loss_type="sigmoid", reference_free=True), -_logsigmoid(0.2)),
        (dict(loss_type="hinge", beta=1.0), 0.0),
    ],
)
def test_dpo_variants_by_hand(kwargs, expected):
    kwargs = {"beta": 0.1, **kwargs}
    out = losses.dpo_loss(**PAIR, **kwargs)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_dpo_rewards_gradients_and_reductions():
    pc = torch.tensor([-1.0, -4.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-3.0, -2.0], dtype=torch.float64, requires_grad=True)
    rc = torch.tensor([-2.0, -4.0], dtype=torch.float64)
    rr = torch.tensor([-2.5, -2.0], dtype=torch.float64)
    out = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        out.rejected_rewards, torch.tensor([-0.25, 0.0], dtype=torch.float64)
    )
    out.loss.backward()
    # d/dh of −log σ(βh) is −β σ(−βh); the mean over 2 pairs halves it. Pair 2 has h = 0.
    expected = torch.tensor([-0.5 * torch.sigmoid(torch.tensor(-0.75)).item(), -0.5 * 0.5]) / 2
    torch.testing.assert_close(pc.grad, expected.to(torch.float64))
    torch.testing.assert_close(pr.grad, -expected.to(torch.float64))
    per_pair = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, reduction="none").loss
    assert per_pair.shape == (2,)
    torch.testing.assert_close(
        losses.dpo_loss(pc, pr, rc, rr, beta=0.5, reduction="sum").loss, per_pair.sum()
    )


def test_dpo_argument_errors():
    with pytest.raises(ValueError, match="loss_type"):
        losses.dpo_loss(**PAIR, loss_type="kto")
    with pytest.raises(ValueError, match="reference_free"):
        losses.dpo_loss(PAIR["policy_chosen_logps"], PAIR["policy_rejected_logps"])
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.dpo_loss(**PAIR, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing applies"):
        losses.dpo_loss(**PAIR, loss_type="ipo", label_smoothing=0.1)


def test_ipo_requires_length_averaged_log_probs():
    """IPO's margin target 1/(2β) is defined on length-averaged log-probs (TRL); summed ones would
    silently optimize another objective, so the caller must say which it passes."""
    with pytest.raises(ValueError, match=r"sequence_log_probs\(\.\.\., average=True\)"):
        losses.dpo_loss(**PAIR, loss_type="ipo")
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 6, 8, generator=g)
    labels = torch.randint(0, 17, (4, 6), generator=g)
    labels[:, :2] = -100
    labels[1, 2:4] = -100  # sequences of different lengths
    w = torch.randn(17, 8, generator=g) * 0.5
    summed = losses.sequence_log_probs(hidden, w, labels)
    averaged = losses.sequence_log_probs(hidden, w, labels, average=True)
    torch.testing.assert_close(averaged, summed / (labels != -100).sum(-1))
    out = losses.dpo_loss(
        averaged[:2], averaged[2:], reference_free=True, loss_type="ipo", average_log_prob=True
    )
    margin = averaged[:2] - averaged[2:]
    torch.testing.assert_close(out.loss, ((margin - 1 / (2 * 0.1)) ** 2).mean())


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_probs_match_the_reference(backend, average):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=g)
    weight = torch.randn(29, 8, generator=g) * 0.5
    labels = torch.randint(0, 29, (3, 5), generator=g)
    labels[0, :2] = -100  # a prompt
    labels[2, :] = -100  # nothing to score
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = losses.sequence_log_probs(h1, w1, labels, average=average, chunk_size=4, backend=backend)
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = R.sequence_log_probs(h2 @ w2.T, labels, average=average)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert got[2].item() == 0.0
    upstream = torch.tensor([1.0, -2.0, 0.5])
    got.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-5, rtol=1e-4)


def test_dpo_from_hidden_states_end_to_end():
    """Policy and reference log-probs from hidden states feed dpo_loss; only the policy gets gradients."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 8, generator=g)  # rows 0-1 chosen, rows 2-3 rejected
    labels = torch.randint(0, 17, (4, 6), generator=g)
    labels[:, :2] = -100
    w = (torch.randn(17, 8, generator=g) * 0.5).requires_grad_()
    w_ref = w.detach().clone() + 0.01
    logps = losses.sequence_log_probs(hidden, w, labels)
    with torch.no_grad():
        ref_logps = losses.sequence_log_probs(hidden, w_ref, labels)
    out = losses.dpo_loss(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], beta=0.1)
    out.loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
