"""The world-build benchmark's arithmetic (not its figures): the matmul shapes of one step add up to
the model's matmul FLOPs, and the seconds at a GEMM rate follow from them."""

from __future__ import annotations

import pytest

from benchmarks import bench_world_build as B

SHAPE = {"hidden": 128, "layers": 4, "vocab": 2048, "decoder_matmul_params": 1_048_576}


def test_the_step_matmuls_are_the_decoder_and_head_flops() -> None:
    tokens = 16 * 256
    shapes = B.matmul_shapes(SHAPE, tokens, intermediate=512)
    forward = sum(2 * m * k * n * count for m, k, n, count in shapes)
    params = SHAPE["decoder_matmul_params"] + SHAPE["hidden"] * SHAPE["vocab"]
    assert forward == 2 * tokens * params
    rates = {f"{m}x{k}x{n}": 100.0 for m, k, n, _ in shapes}  # GFLOP/s
    assert B.matmul_seconds(shapes, rates) == pytest.approx(3 * forward / 100e9)


def test_gemm_rates_are_measured_for_every_shape() -> None:
    rates = B.gemm_rates([(64, 32, 16, 1), (32, 16, 8, 2)], repeats=1)
    assert set(rates) == {"64x32x16", "32x16x8"} and all(r > 0 for r in rates.values())
