"""Where the `pretrained` world base model's build time goes, and whether another implementation of
the same optimizer step is faster on this CPU.

The build (`experiments/configs/world_models/default/pretrained.yaml`, what `make demo` trains on a
fresh machine) is 700 optimizer steps of 16 × 256 packed tokens on the 1.3M-parameter Llama. This
benchmark builds that stage's module and batches through the CLI, exactly as the build does, and
times one step (forward, backward, `AdamW.step()`, `zero_grad`) of each variant from the same
initial weights, in rounds whose order rotates:

- `reference`: the build as it is (SDPA attention, float32, eager);
- `eager_attention`: transformers' eager attention instead of SDPA;
- `compiled_blocks`: `torch.compile` on every decoder layer's MLP and RMSNorms (regional
  compilation of the element-wise chains; attention and the fused loss stay eager);
- `bf16_autocast`: the step under `torch.autocast("cpu", torch.bfloat16)`.

It also measures float32 GEMM throughput on the step's own matmul shapes, so the report says how
much of the reference step the matmuls would take at that rate, and the op-level split of the
reference step (torch.profiler: matmul, attention, everything else), and the bytes the everything
else reads and writes per step against the machine's copy bandwidth: where moving them takes most
of their time, those ops are memory-bound and only fusing them can save it. The projected build
time is `first step + 700 × median step`; the first step holds the compilation of `compiled_blocks`, into
a fresh inductor cache (what a fresh machine pays).

    python -m benchmarks.bench_world_build            # ≈ 1 min on 2 cores
    python -m benchmarks.bench_world_build --quick    # fewer rounds

Another variant changes the floating-point order and so the trained model (as another thread count
does, docs/world.md); only a large speed-up would justify one.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    Timing,
    command_line,
    make_step,
    model_shape,
    round_robin,
    start,
    timing_report,
    train_with_adamw,
    warm_up,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
STAGE_CONFIG = REPO / "experiments/configs/world_models/default/pretrained.yaml"
BUILD_STEPS = 700
VARIANTS = ("reference", "eager_attention", "compiled_blocks", "bf16_autocast")


def build_module_and_batch(world_cache_dir: str, attn_implementation: str) -> tuple[Any, dict]:
    """The pretrained stage's module (initialized, its student built) and its first batch."""
    from experiments.cli import build_cli

    args = [
        "--config",
        str(STAGE_CONFIG),
        f"--data.init_args.world_cache_dir={world_cache_dir}",
        f"--model.init_args.attn_implementation={attn_implementation}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
    cli = build_cli(args, run=False)
    datamodule, module = cli.datamodule, cli.model
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    module.configure_model()
    return module, batch


def compile_blocks(module: Any) -> None:
    """Regional compilation of every decoder layer's MLP and RMSNorms (in place)."""
    from lightning_modules.modeling import decoder_layers

    for layer in decoder_layers(module.transformer_model()):
        layer.mlp.compile()
        layer.input_layernorm.compile()
        layer.post_attention_layernorm.compile()


def autocast_step(step):
    """`step` under bfloat16 autocast on the CPU."""
    import torch

    def run() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step()

    return run


def build_steps(world_cache_dir: str) -> tuple[dict[str, Any], dict[str, int], dict]:
    """One step closure per variant, each on its own module from the same initial weights."""
    steps: dict[str, Any] = {}
    shape: dict[str, int] = {}
    batch: dict = {}
    for variant in VARIANTS:
        attn = "eager" if variant == "eager_attention" else "sdpa"
        module, batch = build_module_and_batch(world_cache_dir, attn)
        if variant == "compiled_blocks":
            compile_blocks(module)
        module, optimizer = train_with_adamw(module)
        step = make_step(module, optimizer, batch)
        steps[variant] = autocast_step(step) if variant == "bf16_autocast" else step
        shape = {
            **model_shape(module),
            "intermediate": module.transformer_model().config.intermediate_size,
        }
    return steps, shape, batch


def matmul_shapes(shape: dict[str, int], tokens: int, intermediate: int) -> list[tuple[int, ...]]:
    """(m, k, n, count) of the forward matmuls of one step: q/k/v/o, gate/up/down, the LM head."""
    h, layers = shape["hidden"], shape["layers"]
    return [
        (tokens, h, h, 4 * layers),
        (tokens, h, intermediate, 2 * layers),
        (tokens, intermediate, h, layers),
        (tokens, h, shape["vocab"], 1),
    ]


def best_seconds(run: Callable[[], Any], repeats: int, calls: int = 1) -> float:
    """The shortest of `repeats` timings of `calls` back-to-back calls of `run`, per call."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def gemm_rates(shapes: Sequence[tuple[int, ...]], repeats: int) -> dict[str, float]:
    """Measured float32 GEMM GFLOP/s of each `m×k @ k×n` (best of `repeats` runs of 10)."""
    import torch

    rates = {}
    for m, k, n, _ in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        best = best_seconds(functools.partial(torch.matmul, a, b), repeats, calls=10)
        rates[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best / 1e9
    return rates


def matmul_seconds(shapes: Sequence[tuple[int, ...]], rates: dict[str, float]) -> float:
    """Seconds the step's matmuls (forward, and backward's two per forward one) take at `rates`."""
    total = 0.0
    for m, k, n, count in shapes:
        total += 3 * count * 2.0 * m * k * n / (rates[f"{m}x{k}x{n}"] * 1e9)
    return total


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")


def op_group(name: str) -> str:
    """`matmul`, `attention` or `other` for an aten op name (`aten::mm`)."""
    if name in MATMUL_OPS:
        return "matmul"
    return "attention" if "scaled_dot_product" in name else "other"


def profile_split(step, steps: int) -> dict[str, float]:
    """Seconds per step of the reference step's ops, split into matmul, attention and the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    split = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        split[op_group(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return split


def moves_data(func: Any) -> bool:
    """Whether an aten op overload reads or writes tensor data: not a view (`_unsafe_view`
    included, which its schema does not mark) and not an uninitialized allocation."""
    name = func._schema.name
    return not (func.is_view or name == "aten::_unsafe_view" or "empty" in name)


def rest_traffic_bytes(step) -> int:
    """Bytes one run of `step` moves through its `other` ops: the tensor inputs each reads and the
    outputs it writes (`moves_data`: views and allocations move nothing)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    moved = 0

    class CountTraffic(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal moved
            out = func(*args, **(kwargs or {}))
            if moves_data(func) and op_group(func._schema.name) == "other":
                moved += sum(
                    t.numel() * t.element_size()
                    for t in tree_leaves((args, kwargs, out))
                    if isinstance(t, torch.Tensor)
                )
            return out

    with CountTraffic():
        step()
    return moved


def copy_bandwidth(repeats: int, megabytes: int = 256) -> float:
    """Best GB/s (bytes read plus bytes written) of copying a float32 tensor much larger than the
    caches: the rate at which memory-bound element-wise ops can move their operands."""
    import torch

    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = best_seconds(lambda: target.copy_(source), repeats)
    return 2.0 * source.numel() * source.element_size() / best / 1e9


def report_text(
    timing: dict[str, Any],
    first: dict[str, float],
    matmul_s: float,
    split: dict[str, float],
    rates: dict[str, float],
    rest_bytes: int,
    bandwidth: float,
) -> str:
    reference = timing["reference"]["median"]
    lines = [
        "| variant | median step ms | best step ms | ÷ reference (median) | first step s | "
        f"projected {BUILD_STEPS}-step build s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        t = timing[v]
        projected = first[v] + BUILD_STEPS * t["median"]
        lines.append(
            f"| {v} | {t['median'] * 1e3:.1f} | {t['best'] * 1e3:.1f} | "
            f"{t['median'] / reference:.2f} | {first[v]:.1f} | {projected:.0f} |"
        )
    profiled = sum(split.values())
    rest_s = rest_bytes / (bandwidth * 1e9)
    lines += [
        "",
        "Reference step by op (torch.profiler, self time per step): "
        + ", ".join(f"{k} {v * 1e3:.0f} ms ({v / profiled:.0%})" for k, v in split.items()),
        f"The step's matmuls at the measured GEMM rates would take {matmul_s * 1e3:.0f} ms "
        f"({matmul_s / reference:.0%} of the reference step's median).",
        "float32 GEMM GFLOP/s on the step's shapes: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()),
        f"The other ops read and write {rest_bytes / 1e9:.2f} GB per step; at the measured copy "
        f"bandwidth ({bandwidth:.1f} GB/s) moving it takes {rest_s * 1e3:.0f} ms "
        f"({rest_s / split['other']:.0%} of their profiled time).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-cache-dir", default=".cache/adaptlm/worlds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (5)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 5)
    args.repeats = args.repeats or (2 if args.quick else 4)

    # A fresh inductor cache: the first step of `compiled_blocks` is the compilation a fresh
    # machine pays, not a read of an earlier run's kernels.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_world_build_inductor_")
    threads, env, log, started = start(args)
    steps, shape, batch = build_steps(args.world_cache_dir)
    log(f"built {len(steps)} variants; model {shape}")
    first_times, first_losses = {}, {}
    for v, step in steps.items():
        t0 = time.perf_counter()
        first_losses[v] = step()
        first_times[v] = time.perf_counter() - t0
    log("first steps: " + ", ".join(f"{v} {s:.1f} s" for v, s in first_times.items()))
    timing = {v: Timing() for v in steps}
    warm_up(steps, timing, first_losses, args.warmup)
    round_robin(steps, timing, args.repeats, args.steps, log)

    tokens = int(batch["input_ids"].numel())
    shapes = matmul_shapes(shape, tokens, shape["intermediate"])
    rates = gemm_rates(shapes, repeats=3 if args.quick else 5)
    split = profile_split(steps["reference"], steps=2 if args.quick else 4)
    rest_bytes = rest_traffic_bytes(steps["reference"])
    bandwidth = copy_bandwidth(repeats=3 if args.quick else 10)
    report = timing_report(timing)
    matmul_s = matmul_seconds(shapes, rates)
    text = report_text(report, first_times, matmul_s, split, rates, rest_bytes, bandwidth)

    full = {
        "command": command_line("benchmarks.bench_world_build", argv),
        "environment": env,
        "settings": {"stage_config": str(STAGE_CONFIG.relative_to(REPO)), "threads": threads},
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "shape": shape,
        "tokens_per_step": tokens,
        "timing": report,
        "first_step_s": first_times,
        "gemm_gflops": rates,
        "matmul_s_at_gemm_rates": matmul_s,
        "profile_split_s": split,
        "other_ops_bytes_per_step": rest_bytes,
        "copy_bandwidth_gb_s": bandwidth,
        "median_ratio": {v: report[v]["median"] / report["reference"]["median"] for v in steps},
    }
    write_results("bench_world_build", args, full, text, started)
    return full


if __name__ == "__main__":
    main()
