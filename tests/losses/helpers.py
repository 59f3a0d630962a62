"""Tiny random problems and a runner that returns a loss with all its gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from losses import LossSpec


def kd(**fields) -> LossSpec:
    """A `LossSpec` for CE + divergence: ``kl_weight=1`` unless given (the default is plain CE)."""
    return LossSpec(**{"kl_weight": 1.0, **fields})


@dataclass
class Case:
    x: torch.Tensor  # student hidden (N, H)
    w: torch.Tensor  # student head (V, H)
    b: torch.Tensor | None  # student bias (V,)
    xt: torch.Tensor  # teacher hidden (N, Ht)
    wt: torch.Tensor  # teacher head (V, Ht)
    y: torch.Tensor  # labels (N,)

    def to(self, dtype: torch.dtype) -> Case:
        def cast(t):
            return None if t is None else t.detach().to(dtype)

        return Case(
            cast(self.x), cast(self.w), cast(self.b), cast(self.xt), cast(self.wt), self.y.clone()
        )


def make_case(
    n: int = 13,
    h: int = 8,
    ht: int = 6,
    v: int = 37,
    *,
    seed: int = 0,
    ignore_frac: float = 0.25,
    bias: bool = True,
    logit_scale: float = 2.0,
    ignore_index: int = -100,
) -> Case:
    """fp64 student/teacher heads whose logits have standard deviation about ``logit_scale``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * (logit_scale / h**0.5)
    b = torch.randn(v, generator=g, dtype=torch.float64) * 0.5 if bias else None
    xt = torch.randn(n, ht, generator=g, dtype=torch.float64)
    wt = torch.randn(v, ht, generator=g, dtype=torch.float64) * (logit_scale / ht**0.5)
    y = torch.randint(0, v, (n,), generator=g)
    drop = torch.rand(n, generator=g) < ignore_frac
    y[drop] = ignore_index
    return Case(x, w, b, xt, wt, y)


def grad_output_for(loss: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A non-unit upstream gradient: 1.7 for a scalar, random positive weights per token otherwise."""
    if loss.dim() == 0:
        return torch.tensor(1.7, dtype=loss.dtype)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss.dtype)


def run_linear(fn, case: Case, *, teacher: bool = True, **kwargs):
    """Call ``fn`` (reference or fused linear distillation) and backprop; returns (loss, parts, grads)."""
    x = case.x.detach().clone().requires_grad_()
    w = case.w.detach().clone().requires_grad_()
    b = None if case.b is None else case.b.detach().clone().requires_grad_()
    extra = {}
    if teacher:
        extra = dict(teacher_hidden=case.xt, teacher_weight=case.wt)
    loss, parts = fn(x, w, case.y, student_bias=b, return_parts=True, **extra, **kwargs)
    loss.backward(grad_output_for(loss))
    grads = {"x": x.grad, "w": w.grad, "b": None if b is None else b.grad}
    return loss.detach(), parts, grads


def assert_close(actual, expected, *, atol: float, rtol: float, what: str = "") -> None:
    if actual is None or expected is None:
        assert actual is None and expected is None, what
        return
    torch.testing.assert_close(
        actual.to(torch.float64),
        expected.to(torch.float64),
        atol=atol,
        rtol=rtol,
        msg=lambda m: f"{what}: {m}",
    )


def assert_all_close(got, ref, *, atol: float, rtol: float) -> None:
    """Compare (loss, parts, grads) triples from `run_linear`."""
    assert_close(got[0], ref[0], atol=atol, rtol=rtol, what="loss")
    for key in ("ce", "kl"):
        assert_close(got[1][key], ref[1][key], atol=atol, rtol=rtol, what=f"parts[{key}]")
    for key in ("x", "w", "b"):
        assert_close(got[2][key], ref[2][key], atol=atol, rtol=rtol, what=f"grad {key}")
