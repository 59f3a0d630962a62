"""What the step benchmarks (`bench_disc`, `bench_mix_cpt`) share: documents, models, steps, FLOPs,
the vocabulary watch, peak memory in fresh subprocesses, round-robin timing and the report files.

The methodology these pieces implement is described in `benchmarks/bench_disc.py`'s docstring:
variants built from the same seeded student (the initial model plus a small seeded noise on its
trainable parameters, so that it differs from a frozen teacher or reference), one optimizer step =
forward + backward of the micro-batch(es) + `AdamW.step()` + `zero_grad`, the variants timed in
rounds whose order rotates, peak RSS and peak live tensor bytes per variant in a fresh process after
a warm-up, and a `TorchDispatchMode` that records every op output with a vocabulary dimension.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
DEFAULT_MODEL_CONFIG = REPO / "experiments/configs/model/world_base.yaml"
DEFAULT_WORLD_CONFIG = REPO / "experiments/configs/world/default.yaml"

Step = Callable[[], float]


@dataclass
class Settings:
    """What a worker process needs to rebuild a benchmark's variants exactly as the parent did (a
    benchmark subclasses it with its own method settings)."""

    tokenizer: str
    model_config: dict[str, Any] | None
    model: str | None
    max_length: int
    chunk_size: int | None
    threads: int
    noise: float
    lr: float = 1e-4


# --------------------------------------------------------------------------------- documents


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """`n` article-like documents: 8-12 sentences of 8-16 words from a fixed made-up lexicon."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ren", "tal", "vo", "dun", "ost", "bra", "kes", "el", "ir"]
    lexicon = sorted(
        {"".join(rng.choice(syllables, size=int(rng.integers(1, 4)))) for _ in range(600)}
    )
    texts = []
    for _ in range(n):
        sentences = []
        for _ in range(int(rng.integers(8, 13))):
            words = list(rng.choice(lexicon, size=int(rng.integers(8, 17))))
            words[0] = words[0].capitalize()
            if rng.random() < 0.3:
                words.insert(int(rng.integers(1, len(words))), str(int(rng.integers(1900, 2030))))
            sentences.append(" ".join(words) + ".")
        texts.append(" ".join(sentences))
    return texts


def synthetic_tokenizer(workdir: Path) -> str:
    """A byte-level BPE (vocab 2048) trained on 400 `synthetic_texts` (`bench_loop.train_tokenizer`)."""
    from benchmarks.bench_loop import train_tokenizer

    corpus = workdir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in synthetic_texts(400)))
    return str(train_tokenizer(workdir, corpus))


def world_records(split: str, n: int, cache_dir: str) -> tuple[list[dict[str, Any]], str]:
    """The first `n` records of a split of the default world (built or reused) and the world's
    tokenizer directory."""
    from common.jsonl import read_jsonl
    from datamodules.world import WorldConfig
    from datamodules.world.materialize import materialize_world
    from experiments.include import load_yaml

    values = load_yaml(DEFAULT_WORLD_CONFIG.read_text(encoding="utf-8"))
    artifacts = materialize_world(WorldConfig(**values), cache_dir)
    records = []
    for _, record in read_jsonl(artifacts.split_path(split)):
        records.append(record)
        if len(records) == n:
            break
    return records, str(artifacts.tokenizer_dir)


def world_texts(n: int, cache_dir: str) -> tuple[list[str], str]:
    """The first `n` new-domain articles of the default world and the world's tokenizer directory."""
    records, tokenizer = world_records("domain_documents", n, cache_dir)
    return [r["text"] for r in records], tokenizer


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def model_source(args: argparse.Namespace, tokenizer: str) -> tuple[str, dict[str, Any] | None]:
    """(tokenizer, model_config) of the run: `--model`'s own tokenizer and no config, or the given
    tokenizer and `--model-config`'s fresh model. Paths are absolute (workers run from the repo)."""
    if args.model is not None:
        tokenizer = args.model
    if Path(tokenizer).exists():
        tokenizer = str(Path(tokenizer).resolve())
    model_config = None
    if args.model is None:
        from experiments.include import load_yaml

        model_config = load_yaml(args.model_config.read_text(encoding="utf-8"))
    return tokenizer, model_config


# --------------------------------------------------------------------------------- modules and steps


def module_kwargs(settings: Settings) -> dict[str, Any]:
    """The arguments every variant's module shares: model source, tokenizer, sdpa, seeded init and
    AdamW (0.9/0.999, eps 1e-8, wd 0.01)."""
    import torch

    def adamw(params):
        return torch.optim.AdamW(
            params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
        )

    kwargs: dict[str, Any] = dict(
        tokenizer=settings.tokenizer,
        max_length=settings.max_length,
        attn_implementation="sdpa",
        optimizer=adamw,
        init_seed=0,
    )
    if settings.model is not None:
        kwargs["model_name_or_path"] = settings.model
    else:
        kwargs["model_config"] = settings.model_config
    return kwargs


def configure(module, seed: int = 0) -> None:
    """Build the module's student (and teacher): `configure_model`, under a forked, seeded torch RNG
    (LoRA adapters are initialized from it: the same adapters for every variant)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.configure_model()


def perturb(module, noise: float, seed: int = 1234) -> None:
    """Add `noise · N(0, 1)` (seeded) to every trainable parameter of the student, in order: the same
    student for every variant of the same shape, away from its teacher (the initial model; for a
    LoRA student, the frozen base weights)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(noise * torch.randn(p.shape, generator=generator))


def train_with_adamw(module):
    """(module in train mode, its optimizer over `parameter_groups()`)."""
    module.lm.train()
    return module, module.optimizer_factory(module.parameter_groups())


def finish_variant(module, settings: Settings):
    """`configure` + `perturb` + `train_with_adamw`: (module, optimizer) of a built variant."""
    configure(module)
    perturb(module, settings.noise)
    return train_with_adamw(module)


def make_step(
    module, optimizer, batch: dict[str, Any], parts: dict[str, float] | None = None
) -> Step:
    """A closure running one optimizer step on one micro-batch: `compute_losses(batch)["loss"] /
    step_weight`, backward, `AdamW.step()`, `zero_grad`; returns the step's objective. With `parts`,
    every step also writes each scalar of `compute_losses` divided by the step weight into it."""
    import torch

    step_weight = float(batch["step_weight"])

    def step() -> float:
        losses = module.compute_losses(batch)
        loss = losses["loss"] / step_weight
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if parts is not None:
            for name, value in losses.items():
                if torch.is_tensor(value) and value.dim() == 0:
                    parts[name] = float(value.detach()) / step_weight
        return float(loss.detach())

    return step


# --------------------------------------------------------------------------------- FLOPs


def model_shape(module) -> dict[str, int]:
    """N (decoder matmul parameters; LoRA adapters apart), hidden, layers, vocab, LoRA matmul
    parameters and parameter counts of the student."""
    from torch import nn

    from lightning_modules.modeling import decoder_layers

    model = module.transformer_model()
    layers = decoder_layers(model)
    matmul = lora = 0
    for layer in layers:
        for name, m in layer.named_modules():
            if isinstance(m, nn.Linear):
                if "lora_" in name:
                    lora += m.weight.numel()
                else:
                    matmul += m.weight.numel()
    head = model.get_output_embeddings().weight
    shape = {
        "decoder_matmul_params": matmul,
        "hidden": int(head.shape[1]),
        "layers": len(layers),
        "vocab": int(head.shape[0]),
        "params": sum(p.numel() for p in model.parameters()),
        "teacher_params": sum(p.numel() for p in module.teacher.parameters())
        if module.teacher is not None
        else 0,
    }
    if lora:
        shape["lora_matmul_params"] = lora
        shape["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return shape


def linear_flops(widths: list[int], shape: dict[str, int], params: str = "decoder_matmul_params"):
    """`2·N·Σ W`: one forward of the decoder's linear layers (or of `params`) over rows `widths`."""
    return 2.0 * shape.get(params, 0) * sum(widths)


def attention_flops(widths: list[int], shape: dict[str, int]) -> float:
    """`4·ℓ·H·Σ W²`: QKᵀ and AV of one forward, dense per row."""
    return 4.0 * shape["layers"] * shape["hidden"] * sum(w * w for w in widths)


def forward_flops(widths: list[int], shape: dict[str, int]) -> float:
    """`2·N·Σ W + 4·ℓ·H·Σ W²` for one forward over rows of widths `widths`."""
    return linear_flops(widths, shape) + attention_flops(widths, shape)


def row_widths(t) -> list[int]:
    """The widths of the rows of a `[B, L]` tensor: `[L] * B`."""
    return [int(t.shape[1])] * int(t.shape[0])


# --------------------------------------------------------------------------------- vocabulary watch


def vocab_watch(vocab: int, weight_shape: tuple[int, ...]):
    """A `TorchDispatchMode` recording the op outputs that have a dimension equal to `vocab`
    (weight-shaped `[V, H]` ones and their transposes excepted): `largest` = (rows = numel / V,
    shape, op) of the one with most rows."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    skip = {tuple(weight_shape), tuple(reversed(weight_shape))}

    class VocabWatch(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.largest: tuple[int, list[int], str] | None = None
            self.seen = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or vocab not in t.shape:
                    continue
                if tuple(t.shape) in skip:
                    continue
                self.seen += 1
                rows = t.numel() // vocab
                if self.largest is None or rows > self.largest[0]:
                    self.largest = (rows, list(t.shape), str(func))
            return out

    return VocabWatch()


def watch_step(step: Step, vocab: int, weight_shape: tuple[int, ...]) -> dict[str, Any]:
    """Run `step` under `vocab_watch`; the largest vocabulary tensor it saw."""
    mode = vocab_watch(vocab, weight_shape)
    with mode:
        step()
    largest = mode.largest
    return {
        "vocab_tensors": mode.seen,
        "largest_rows": largest[0] if largest else 0,
        "largest_shape": largest[1] if largest else None,
        "largest_op": largest[2] if largest else None,
    }


def watch_steps(steps: dict[str, Step], shape: dict[str, int]) -> dict[str, dict[str, Any]]:
    """`watch_step` of every variant's step (the head `[V, H]` of `shape` excepted)."""
    weight_shape = (shape["vocab"], shape["hidden"])
    return {v: watch_step(step, shape["vocab"], weight_shape) for v, step in steps.items()}


def watch_default_chunk(module, step: Step, shape: dict[str, int]) -> dict[str, Any]:
    """`watch_step` with the module's loss at the library's default chunk size (for information)."""
    spec = module.loss_spec
    module.loss_spec = dataclasses.replace(spec, chunk_size=None)
    try:
        return watch_steps({"step": step}, shape)["step"]
    finally:
        module.loss_spec = spec


# --------------------------------------------------------------------------------- worker: memory


PRIME_MODEL = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 4096,
}
"""A throwaway model whose one step, before the baseline, imports and initializes what the first
step of any variant would (model classes, attention and GEMM kernels, the loss's code paths)."""


def peak_memory(build: Callable[[Any], tuple[Any, Any, Step]], settings, spec) -> dict[str, Any]:
    """Peak RSS and peak live tensor bytes of one variant in this (fresh) process.

    `build(settings)` gives (module, optimizer, step). It first runs once on `PRIME_MODEL`; then the
    baseline `VmRSS`, the real variant, `spec["warmup"]` steps, the RSS high-water mark reset,
    `spec["steps"]` steps (peak RSS = `VmHWM` − baseline) and one step under `_live_tensor_mode`."""
    import gc

    import torch

    from benchmarks.bench_losses import _live_tensor_mode, _reset_peak_rss, _status_kib

    torch.set_num_threads(settings.threads)
    prime = dataclasses.replace(settings, model=None, model_config=PRIME_MODEL)
    build(prime)[2]()
    gc.collect()
    base = _status_kib("VmRSS")
    module, optimizer, step = build(settings)
    for _ in range(spec["warmup"]):
        step()
    _reset_peak_rss()
    for _ in range(spec["steps"]):
        step()
    peak_rss = (_status_kib("VmHWM") - base) * 1024.0
    mode = _live_tensor_mode()
    with mode:
        step()

    def nbytes(tensors) -> int:
        return sum(t.untyped_storage().nbytes() for t in tensors)

    student = nbytes(module.model.parameters())
    adam = nbytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    teacher = nbytes(module.teacher.parameters()) if module.teacher is not None else 0
    return {
        "variant": spec["variant"],
        "baseline_rss": base * 1024.0,
        "peak_rss": peak_rss,
        "student_bytes": student,
        "adam_bytes": adam,
        "teacher_bytes": teacher,
        "step_live_peak": float(mode.peak),
        "peak_live": float(student + adam + teacher + mode.peak),
    }


def worker_spec(variant: str, settings: Settings, batches_path: Path, args) -> dict[str, Any]:
    """What `--worker` gets: the variant, the settings, the saved batches, warm-up and steps."""
    return {
        "variant": variant,
        "settings": asdict(settings),
        "batches": str(batches_path),
        "warmup": args.warmup,
        "steps": args.mem_steps,
    }


def measure_memory(
    benchmark: str, variants, settings: Settings, batches_path: Path, args, jobs: int | None = None
) -> dict[str, dict[str, Any]]:
    """`python -m <benchmark> --worker <spec>` for every variant, each in a fresh subprocess (`jobs`
    at a time, default all: each measures its own process only); the `RESULT` line each prints."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    variants = list(variants)
    jobs = jobs or len(variants)
    results = {}
    for first in range(0, len(variants), jobs):
        procs = {}
        for variant in variants[first : first + jobs]:
            spec = worker_spec(variant, settings, batches_path, args)
            procs[variant] = subprocess.Popen(
                [sys.executable, "-m", benchmark, "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=env,
            )
        for variant, proc in procs.items():
            results[variant] = _worker_result(variant, proc, args.timeout)
    return results


def _worker_result(variant: str, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """The `RESULT` line of a worker, or an `error` naming its exit and last lines."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (stderr or stdout).strip().splitlines()[-5:]
    return {"variant": variant, "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"}


def save_and_measure(
    benchmark: str, variants, settings: Settings, batches, workdir: Path, args, log, jobs=None
) -> dict[str, dict[str, Any]]:
    """Save `batches` for the workers (`workdir/batches.pt`), `measure_memory` and log each result."""
    import torch

    batches_path = workdir / "batches.pt"
    torch.save(batches, batches_path)
    memory = measure_memory(benchmark, variants, settings, batches_path, args, jobs)
    for v in variants:
        log(f"memory {v}: {json.dumps(memory[v])}")
    return memory


def serve_worker(run_worker: Callable[[dict[str, Any]], dict[str, Any]], spec: str) -> int:
    """`--worker`: run it on the JSON `spec` and print its `RESULT` line."""
    print("RESULT " + json.dumps(run_worker(json.loads(spec))), flush=True)
    return 0


def memory_ok(memory: dict[str, dict[str, Any]], variants) -> bool:
    """Whether every worker of `variants` gave a result."""
    return all("error" not in memory.get(v, {"error": 1}) for v in variants)


# --------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def first_steps(steps: dict[str, Step], seed: int | None = None) -> dict[str, float]:
    """One step of every variant (the same student weights: their objectives compare), each after
    `torch.manual_seed(seed)` when a seed is given (the same dropout masks)."""
    import torch

    first = {}
    for v, step in steps.items():
        if seed is not None:
            torch.manual_seed(seed)
        first[v] = step()
    return first


def warm_up(steps: dict[str, Step], timing: dict[str, Timing], first: dict[str, float], warmup):
    """Record the first objectives and run the remaining `warmup - 1` untimed steps per variant."""
    for v, step in steps.items():
        timing[v].losses.append(first[v])
        for _ in range(warmup - 1):
            step()


def round_robin(
    steps: dict[str, Step],
    timing: dict[str, Timing],
    repeats: int,
    per_round: int,
    log: Callable[[str], None],
) -> None:
    """`repeats` rounds of `per_round` timed steps of every variant, the order rotating between
    rounds so that all variants share the machine's noise."""
    names = tuple(steps)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for v in names[shift:] + names[:shift]:
            for _ in range(per_round):
                t0, c0 = time.perf_counter(), _cpu_seconds()
                steps[v]()
                timing[v].times.append(time.perf_counter() - t0)
                timing[v].cpu_times.append(_cpu_seconds() - c0)
        log(
            f"round {round_ + 1}/{repeats}: "
            + ", ".join(
                f"{v} {statistics.median(timing[v].times[-per_round:]) * 1e3:.1f} ms" for v in names
            )
        )


def timing_report(timing: dict[str, Timing]) -> dict[str, Any]:
    return {v: {**asdict(t), "median": t.median, "best": t.best} for v, t in timing.items()}


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------- environment, report


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def environment(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "loadavg_start": _loadavg(),
    }


def start(args: argparse.Namespace) -> tuple[int, dict[str, Any], Callable[[str], None], float]:
    """Quiet the data modules' logs, set `--threads`, print the environment: (threads, environment,
    a logger printing the elapsed seconds, start time)."""
    import logging

    import torch

    logging.getLogger("datamodules").setLevel(logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {message}", flush=True)

    env = environment(threads)
    print("environment: " + json.dumps(env), flush=True)
    return threads, env, log, started


def command_line(benchmark: str, argv: list[str] | None) -> str:
    return f"python -m {benchmark} " + " ".join(argv if argv is not None else sys.argv[1:])


def write_results(
    name: str, args: argparse.Namespace, report: dict[str, Any], text: str, started: float
) -> Path:
    """Print the tables and write `benchmarks/results/<name>[-quick]-<timestamp>.json` (or `--out`)
    and its `.md`; the report gets the end load average and the elapsed seconds."""
    env = report["environment"]
    env["loadavg_end"] = _loadavg()
    report["elapsed_s"] = time.time() - started
    print("\n" + text + "\n", flush=True)
    out = args.out or REPO / "benchmarks" / "results" / (
        f"{name}{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(
        f"`{report['command']}`\n\n```\n{json.dumps(env, indent=1)}\n```\n\n{text}\n"
    )
    print(f"results: {out} (+ .md); {report['elapsed_s']:.0f} s in all")
    return out


def run_settings(
    cls, args: argparse.Namespace, tokenizer: str, model_config, threads: int, **extra
):
    """`cls` (a `Settings`) from the common options, the resolved model source and `extra`."""
    return cls(
        tokenizer=tokenizer,
        model_config=model_config,
        model=args.model,
        max_length=args.max_length,
        chunk_size=args.chunk_size,
        threads=threads,
        noise=args.noise,
        **extra,
    )


def base_report(
    benchmark: str, argv: list[str] | None, env: dict[str, Any], settings, args
) -> dict[str, Any]:
    """The report's first entries: command, environment, settings and arguments (not `--out`,
    not `--worker`)."""
    return {
        "command": command_line(benchmark, argv),
        "environment": env,
        "settings": asdict(settings),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
    }


def time_ratio(timing: dict[str, Any], flops: dict[str, float], num: str, den: str):
    """`num ÷ den` step time from the medians and from the bests, and its FLOP expectation."""
    return {
        "median": timing[num]["median"] / timing[den]["median"],
        "best": timing[num]["best"] / timing[den]["best"],
        "flop_expectation": flops[num] / flops[den],
    }


def ratio_line(target: str, check: dict[str, Any]) -> str:
    """`- <target>: median …, best … (FLOP expectation …) → met/MISSED`."""
    return (
        f"- {target}: median {check['median']:.2f}, best {check['best']:.2f} "
        f"(FLOP expectation {check['flop_expectation']:.2f}) → {verdict(check['ok'])}"
    )


def memory_table(memory: dict[str, dict[str, Any]], variants) -> list[str]:
    """The markdown table of the workers' peak RSS and peak live tensors (MiB)."""
    lines = [
        "| variant | peak RSS MiB | peak live tensors MiB | student | AdamW state | teacher | "
        "step's own tensors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        m = memory[v]
        lines.append(
            f"| {v} | {_mib(m['peak_rss'])} | {_mib(m['peak_live'])} | "
            f"{_mib(m['student_bytes'])} | {_mib(m['adam_bytes'])} | "
            f"{_mib(m['teacher_bytes'])} | {_mib(m['step_live_peak'])} |"
        )
    return lines


def vocab_check(
    target: str, watched: list[dict[str, Any]], threshold: int, chunk: int
) -> tuple[dict[str, Any], str]:
    """The no-`[tokens, vocab]` check over the watches of the checked steps: the largest vocabulary
    tensor has fewer than `threshold` rows, and the chunk is below it (else the check means
    nothing); the check and its line."""
    largest = max(watched, key=lambda w: w["largest_rows"])
    meaningful = chunk < threshold
    check = {
        "threshold_rows": threshold,
        "largest_rows": largest["largest_rows"],
        "largest_shape": largest["largest_shape"],
        "chunk_size": chunk,
        "meaningful": meaningful,
        "ok": largest["largest_rows"] < threshold and meaningful,
    }
    line = (
        f"- {target}: largest tensor with a vocabulary dimension "
        f"{largest['largest_shape']} ({largest['largest_rows']} rows, by {largest['largest_op']}) "
        f"< {threshold} target tokens (chunk {chunk}) → {verdict(check['ok'])}"
        + ("" if meaningful else " (chunk ≥ targets: not meaningful)")
    )
    return check, line


def vocab_info_lines(watch: dict[str, dict[str, Any]], names) -> list[str]:
    """One `for information` line per watched step of `names`."""
    return [
        f"  - for information, {v}: largest vocabulary tensor {watch[v]['largest_shape']} "
        f"({watch[v]['largest_rows']} rows)"
        for v in names
        if watch.get(v)
    ]


def _mib(b: float) -> str:
    return f"{b / MiB:,.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --------------------------------------------------------------------------------- arguments


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both step benchmarks take (their defaults where `None`: `quick_defaults`)."""
    parser.add_argument(
        "--documents", choices=("world", "synthetic"), default="world", help="which documents"
    )
    parser.add_argument("--model", default=None, help="a local save_pretrained model directory")
    parser.add_argument(
        "--model-config", type=Path, default=DEFAULT_MODEL_CONFIG, help="YAML of a fresh model"
    )
    parser.add_argument("--world-cache-dir", default=".cache/adaptlm/worlds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    parser.add_argument("--max-length", type=int, default=256, help="row length (the configs')")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Timing, memory and output options of both step benchmarks."""
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="rows per fused-loss chunk (256; quick 64)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round (6; quick 2)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (5; quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--mem-steps", type=int, default=2, help="steps measured for peak RSS")
    parser.add_argument("--noise", type=float, default=0.01, help="student's offset from teacher")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per memory worker")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def quick_defaults(args: argparse.Namespace, table) -> argparse.Namespace:
    """Fill every option left at None from `table`'s `(name, full, quick)`."""
    for name, full, small in table:
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    return args


RUN_DEFAULTS = (("chunk_size", 256, 64), ("steps", 6, 2), ("repeats", 5, 2))
"""The defaults (full, quick) of `add_run_arguments`'s options."""
