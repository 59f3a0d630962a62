"""The loss benchmark's harness (not its figures): optional Liger, the GEMM floor, one-shape runs."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
import torch

from benchmarks import bench_losses as B


def test_missing_liger_is_skipped_with_the_install_hint_and_nothing_is_installed(
    monkeypatch, capsys
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a),
    )

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the benchmark must not run {args!r}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert B.liger_version() is None
    assert "pip install -e .[bench]" in capsys.readouterr().out


def test_gemm_floor_runs_the_four_gemms_in_our_chunking():
    case = B.Case("t", "gemm_floor", n=40, h=8, v=50, repeats=1, threads=1)
    x, w, xt, wt, y = B._inputs(case, case.n)
    step = B._make_step("gemm_floor", x, w, xt, wt, y)
    step()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    ignored = y == -100
    assert torch.count_nonzero(x.grad[ignored]) == 0
    keep = ~ignored
    s = x.detach()[keep] @ w.detach().T  # the floor multiplies the logits back, as G would be
    torch.testing.assert_close(x.grad[keep], s @ w.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w.grad, s.T @ x.detach()[keep], atol=1e-4, rtol=1e-4)


def test_shape_flag_builds_one_configuration(monkeypatch):
    seen = {}

    def fake_measure(config, only, liger, threads, timeout, log, settle=3.0):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(B, "measure", fake_measure)
    monkeypatch.setattr(B, "liger_version", lambda: None)
    with pytest.raises(SystemExit):
        B.main(["--shape", "4096x1024x32000", "--only", "kl", "--rounds", "2"])
    config = seen["config"]
    assert (config.n, config.h, config.v, config.rounds) == (4096, 1024, 32000, 2)
    assert config.impls == ["eager", "ours", "ours_kl", "gemm_floor", "liger", "liger_kl"]
