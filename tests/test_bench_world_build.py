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


def test_rest_traffic_counts_element_wise_operands_not_matmuls_or_views() -> None:
    import torch

    a, b = torch.ones(1000), torch.ones(1000)
    m = torch.ones(8, 8)

    def step() -> None:
        product = a * b  # reads 2 x 4000 bytes, writes 4000
        product.view(10, 100).t()  # views: nothing moved
        torch.ops.aten._unsafe_view(product, (10, 100))
        torch.empty_like(product)
        m @ m  # a matmul: counted with the matmuls, not here
        torch.empty(500)  # uninitialized: nothing written

    assert B.rest_traffic_bytes(step) == 3 * 4000


def test_copy_bandwidth_is_a_positive_rate() -> None:
    assert B.copy_bandwidth(repeats=2, megabytes=4) > 0


def test_op_groups_match_the_profiler_names() -> None:
    assert B.op_group("aten::mm") == "matmul"
    assert B.op_group("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert B.op_group("aten::mul") == "other"
