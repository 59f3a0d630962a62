"""Step time and peak memory of DiSC against a per-split implementation and FT, side by side.

    python -m benchmarks.bench_disc                  # the recorded benchmark (≈ 2-3 min on 2 cores)
    python -m benchmarks.bench_disc --quick          # 8 documents, fewer steps (≈ 1 min): the harness
    python -m benchmarks.bench_disc --threads 1      # torch threads (default: torch's own default)
    python -m benchmarks.bench_disc --model .cache/adaptlm/world_models/default-seed0/chat

**Documents.** `--documents world` (default): the first `--docs` new-domain articles of the world of
`experiments/configs/world/default.yaml` (built or reused by `datamodules.world.materialize_world`,
as `datamodules.world` does), tokenized with the world's tokenizer. `--documents synthetic`: a seeded
set of article-like documents (8-12 sentences of 8-16 words) and a byte-level BPE (vocab 2048)
trained on them (`benchmarks.bench_loop.train_tokenizer`); no world needed. The documents are written
to one JSONL file that all three variants read through their real data modules.

**Model.** A fresh, seeded model of the world base models' shape (`--model-config`, default
`experiments/configs/model/world_base.yaml`: Llama, hidden 128, 4 layers, tied head, vocab from the
tokenizer), or `--model PATH` (a local `save_pretrained` directory; its own tokenizer is then used).
The three students start from the same weights: the initial model plus the same small seeded noise
(`--noise`), so that the student differs from the frozen teacher (the initial model) and the KL and
its gradient are not zero. fp32, sdpa attention, AdamW (0.9/0.999, eps 1e-8, wd 0.01; the paper's).

**Variants** (one optimizer step = forward + backward of every micro-batch + `AdamW.step()` +
`zero_grad`; the objective is divided by the step's weight as `CausalLMModule.training_step` does):

* ``disc``       `DiSCModule.compute_losses` on the batch of `SplitContextDataModule`'s collator for
                 the `--docs` documents (one micro-batch): the teacher reads each document once
                 (documents packed into `--max-length` rows), the student the drawn targets packed
                 into rows, the fused KL only at target rows (`teacher_rows`).
* ``per_split``  what the authors' code does, made reasonably efficient: per document, one batch of
                 its `k` splits; the teacher reads every `context + target` (right-padded, one row
                 per split), the student every target alone (right-padded), and the same fused loss
                 (`losses.fused_linear_distillation_loss` through `CausalLMWithLoss`, the LM head
                 applied only at target positions, the same weights `1/((L-1)·|I|)`); one backward
                 per document (gradient accumulation), one optimizer step for all documents. Same
                 draw, same targets: its loss equals DiSC's (checked at the first step).
* ``ft``         `CausalLMModule` (CE) on the same documents packed as the FT data does
                 (`PretrainingDataModule`, `kind: document`: each whole text tokenized, EOS appended,
                 concatenated and cut into `--max-length` rows; every token a target).

**"The same documents" in tokens.** All three read the same `--docs` texts per step. FT reads every
token of them once (whole-text tokenization + one EOS each) with CE on all of them. DiSC's teacher
reads each document's sentence-tokenized sequence once, up to the end of its last drawn target
(the last sentence is always drawn, so the whole document), and its student reads only the `k`
drawn targets (≈ 5 of 11 sentences). The per-split teacher reads `Σ (context + target)` over the
splits: ≈ `k/2`-`k` times the document. The printed table gives each count, real and as computed
(padded tensor tokens).

**FLOP expectation** (printed beside each ratio; the time ratio it predicts at an equal FLOP rate).
With `N` the decoder's matmul parameters (the linear layers of the decoder blocks), `H` the hidden
size, `ℓ` the layers, `V` the vocabulary, and for a pass over rows of widths `W_r` (padded tokens
`T = Σ W_r`):

    F_fwd(rows)  = 2·N·T + 4·ℓ·H·Σ_r W_r²      (linear layers + QKᵀ and AV, dense per row: the mask
                                              of packed or padded rows is applied, nothing skipped)
    DiSC       = F_fwd(teacher rows) + 3·F_fwd(student rows) + 8·V·H·n_targets
    per-split  = Σ_docs [F_fwd(k split rows of the document) + 3·F_fwd(its k target rows)]
                 + 8·V·H·n_targets
    FT         = 3·F_fwd(FT rows) + 6·V·H·n_FT_targets

The teacher only runs forward (1×), the student forward + backward (3×). The fused LM-head loss
computes only target rows: student logits, teacher logits, ∂X and ∂W are 2·V·H each per target row
for DiSC (8·V·H), no teacher logits for FT's CE (6·V·H). Embedding lookups, norms, the row step and
AdamW (O(params)) are left out. The expectation assumes an equal FLOP rate; many small batches (the
per-split variant) run at a lower rate on CPU, so its measured speedup can exceed the expectation.

**Peak memory.** Each variant runs again in a fresh subprocess (the three side by side; each
measures only its own process) that loads the same batches and first runs one step of the variant
on a throwaway 1-layer, hidden-16 model, so that imports, kernel initialisation and first-call
allocations are done; then it records `VmRSS` (the baseline), builds the module(s), runs `--warmup`
steps (AdamW's state now exists), resets the RSS high-water mark (`/proc/self/clear_refs`) and runs
`--mem-steps` steps: **peak RSS** = `VmHWM` − the baseline: everything the process holds for
training (student, teacher, gradients, AdamW state, activations, the fused loss's buffers,
op-internal temporaries, allocator overhead). `ru_maxrss` would also hold the data preparation's
and imports' peaks; `tracemalloc` does not see torch's allocator. A second figure counts tensor bytes
exactly, free of allocator noise: **peak live tensors** = the bytes of the persistent tensors
(student parameters, AdamW state, teacher parameters) + the peak of the storages created during one
step and alive at the same time (a `TorchDispatchMode`, `benchmarks.bench_losses._live_tensor_mode`;
gradients included, temporaries internal to one op not). The check is `DiSC ≤ 1.1 × (FT + teacher
weights)` on both.

**No `[tokens, vocab]` tensor.** One more DiSC step runs under a `TorchDispatchMode` that sees the
output of every op (forward, backward, optimizer) and records each tensor with a dimension equal to
the vocabulary other than the `[V, H]`-shaped ones and their transposes (the head, its gradient,
AdamW's state); its "rows" are `numel / V`. The check fails if any has `rows ≥ n_targets` (the step's predicted tokens):
a logits tensor for all target tokens, in whatever shape. The fused loss's chunks are
`[chunk, V]`; `--chunk-size` (default 256; quick 64) is set well below `n_targets` (≈ 900 for 16
documents) so that the distinction is meaningful. With the library's CPU default (512-1024 rows,
capped at the row count) a 16-document step would be one chunk of all its targets, i.e. a
`[n_targets, V]` buffer: that step is also watched and its largest vocabulary tensor printed, for
information (not a check).

**Timing.** After `--warmup` steps of each variant, `--repeats` rounds each run `--steps` steps of
every variant, the order rotating between rounds so that all share the machine's noise. Per variant:
the median and the best step time, steps/s and document tokens/s (the sentence-tokenized document
tokens of the step / step time, the same numerator for all three). Ratios: speedup = per-split ÷
DiSC and DiSC ÷ FT, from the medians and from the bests. Results: `benchmarks/results/
bench_disc[-quick]-<timestamp>.json` and `.md`.
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
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
VARIANTS = ("disc", "per_split", "ft")
TARGETS = {
    "speedup": "DiSC step ≥ 1.5 × faster than the per-split implementation",
    "vs_ft": "DiSC step ≤ 1.25 × an FT step",
    "memory": "DiSC peak ≤ 1.1 × (FT peak + teacher weights)",
    "no_vocab_tensor": "no [tokens, vocab] tensor during a DiSC step",
}
DEFAULT_MODEL_CONFIG = REPO / "experiments/configs/model/world_base.yaml"
DEFAULT_WORLD_CONFIG = REPO / "experiments/configs/world/default.yaml"


@dataclass
class Settings:
    """What a worker process needs to rebuild a variant exactly as the parent did."""

    tokenizer: str
    model_config: dict[str, Any] | None
    model: str | None
    max_length: int
    chunk_size: int | None
    threads: int
    noise: float
    lr: float = 1e-4
    temperature: float = 2.0


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


def world_texts(n: int, cache_dir: str) -> tuple[list[str], str]:
    """The first `n` new-domain articles of the default world and the world's tokenizer directory."""
    from common.jsonl import read_jsonl
    from datamodules.world import WorldConfig
    from datamodules.world.materialize import materialize_world
    from experiments.include import load_yaml

    values = load_yaml(DEFAULT_WORLD_CONFIG.read_text(encoding="utf-8"))
    artifacts = materialize_world(WorldConfig(**values), cache_dir)
    texts = []
    for _, record in read_jsonl(artifacts.split_path("domain_documents")):
        texts.append(record["text"])
        if len(texts) == n:
            break
    return texts, str(artifacts.tokenizer_dir)


# --------------------------------------------------------------------------------- batches


def per_split_batches(documents, pad_token_id: int) -> list[dict[str, Any]]:
    """Per document with a kept split: the reference's batch of its `k` splits.

    Teacher: `k` right-padded rows `context + target` (`attention_mask`, no packing). Student: `k`
    right-padded rows `target`, labels the target with its first token -100, `loss_weights`
    `1/((L-1)·|I|)`, and `rows` mapping student position `t` of split `j` to the teacher's flattened
    row `j·L_t + c_j + t` (`lightning_modules.forward.TeacherInputs`)."""
    import torch

    from common import IGNORE_INDEX

    out = []
    for d in documents:
        if not d.splits:
            continue
        k = len(d.splits)
        lt = max(c + n for c, n in d.splits)
        ls = max(n for _, n in d.splits)
        t_ids = np.full((k, lt), pad_token_id, dtype=np.int64)
        t_mask = np.zeros((k, lt), dtype=np.int64)
        ids = np.full((k, ls), pad_token_id, dtype=np.int64)
        labels = np.full((k, ls), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((k, ls), dtype=np.int64)
        weights = np.zeros((k, ls), dtype=np.float32)
        rows = np.zeros((k, ls), dtype=np.int64)
        for j, ((c, n), w) in enumerate(zip(d.splits, d.weights)):
            t_ids[j, : c + n] = d.tokens[: c + n]
            t_mask[j, : c + n] = 1
            piece = d.tokens[c : c + n]
            ids[j, :n] = piece
            labels[j, 1:n] = piece[1:]
            mask[j, :n] = 1
            weights[j, 1:n] = w
            rows[j, : n - 1] = j * lt + c + np.arange(n - 1)
        arrays = {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "loss_weights": weights,
            "teacher_input_ids": t_ids,
            "teacher_attention_mask": t_mask,
            "teacher_rows": rows,
        }
        out.append({k_: torch.from_numpy(v) for k_, v in arrays.items()})
    return out


def build_batches(texts: list[str], tokenizer: str, args, workdir: Path) -> dict[str, Any]:
    """The step's batches of the three variants from one JSONL of `texts`, through the real data
    modules, and their token counts."""
    import torch

    from datamodules import PretrainingDataModule, SourceSpec
    from datamodules.packing import collate_rows
    from datamodules.split_context import SplitContextCollator, SplitContextDataModule

    path = workdir / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    split = SplitContextDataModule(
        tokenizer=tokenizer,
        train_sources=[SourceSpec(path=str(path))],
        val_sources={},
        max_length=args.max_length,
        micro_batch_size=len(texts),
        num_splits=args.num_splits,
        split_mode="random",
        seed=args.seed,
        cache_dir=str(workdir / "stores"),
    )
    split.setup("fit")
    dataset = split.split_dataset
    items = [dataset[i] for i in range(len(dataset))]  # visit 0: the first epoch's draw
    documents = [item["document"] for item in items]
    pad = int(split.tokenizer.pad_token_id)
    disc = SplitContextCollator(args.max_length, pad)(items)
    per_split = per_split_batches(documents, pad)
    ft_data = PretrainingDataModule(
        tokenizer=tokenizer,
        train_sources=[SourceSpec(path=str(path), kind="document")],
        val_sources={},
        max_length=args.max_length,
        micro_batch_size=1,
        cache_dir=str(workdir / "stores"),
    )
    ft_data.prepare_data()
    ft_data.setup("fit")
    ft_rows = [ft_data.train_dataset[i] for i in range(len(ft_data.train_dataset))]
    ft = collate_rows(ft_rows)
    step_weight = float(disc["step_weight"])
    targets = int((disc["labels"][:, 1:] != -100).sum())

    def shape(t: torch.Tensor) -> list[int]:
        return list(t.shape)

    tokens = {
        "documents": len(texts),
        "documents_with_splits": int(step_weight),
        "splits": sum(len(d.splits) for d in documents),
        "document_tokens": sum(len(d.tokens) for d in documents),
        "targets": targets,
        "disc": {
            "teacher_tokens": int(disc["teacher_attention_mask"].sum()),
            "teacher_tensor": shape(disc["teacher_input_ids"]),
            "student_tokens": int(disc["attention_mask"].sum()),
            "student_tensor": shape(disc["input_ids"]),
            "micro_batches": 1,
        },
        "per_split": {
            "teacher_tokens": sum(int(b["teacher_attention_mask"].sum()) for b in per_split),
            "teacher_tensor_tokens": sum(b["teacher_input_ids"].numel() for b in per_split),
            "student_tokens": sum(int(b["attention_mask"].sum()) for b in per_split),
            "student_tensor_tokens": sum(b["input_ids"].numel() for b in per_split),
            "micro_batches": len(per_split),
        },
        "ft": {
            "tokens": int(ft["attention_mask"].sum()),
            "tensor": shape(ft["input_ids"]),
            "targets": int(ft["step_weight"]),
            "micro_batches": 1,
        },
    }
    assert sum(int((b["labels"][:, 1:] != -100).sum()) for b in per_split) == targets
    return {"disc": disc, "per_split": per_split, "ft": ft, "tokens": tokens}


# --------------------------------------------------------------------------------- modules and steps


def build_variant(variant: str, settings: Settings):
    """(module, optimizer) of a variant: built, students perturbed by the same seeded noise."""
    import torch

    from lightning_modules import CausalLMModule, DiSCModule
    from losses import LossSpec

    def adamw(params):
        return torch.optim.AdamW(
            params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
        )

    common = dict(
        tokenizer=settings.tokenizer,
        max_length=settings.max_length,
        attn_implementation="sdpa",
        optimizer=adamw,
        init_seed=0,
    )
    if settings.model is not None:
        common["model_name_or_path"] = settings.model
    else:
        common["model_config"] = settings.model_config
    if variant in ("disc", "per_split"):
        module = DiSCModule(
            temperature=settings.temperature, chunk_size=settings.chunk_size, **common
        )
    elif variant == "ft":
        module = CausalLMModule(loss=LossSpec(chunk_size=settings.chunk_size), **common)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    module.configure_model()
    generator = torch.Generator().manual_seed(1234)
    with (
        torch.no_grad()
    ):  # the same student for all three, away from the teacher (the initial model)
        for p in module.model.parameters():
            p.add_(settings.noise * torch.randn(p.shape, generator=generator))
    module.lm.train()
    optimizer = module.optimizer_factory(module.parameter_groups())
    return module, optimizer


def make_step(variant: str, module, optimizer, batches: dict[str, Any]):
    """A closure running one optimizer step of `variant`; returns the step's objective."""
    from lightning_modules.forward import TeacherInputs

    if variant == "per_split":
        step_weight = float(batches["disc"]["step_weight"])
        pieces = [
            (
                {k: b[k] for k in ("input_ids", "labels", "attention_mask", "loss_weights")},
                TeacherInputs(
                    input_ids=b["teacher_input_ids"],
                    rows=b["teacher_rows"],
                    attention_mask=b["teacher_attention_mask"],
                ),
            )
            for b in batches["per_split"]
        ]

        def step() -> float:
            total = 0.0
            for student_batch, teacher_inputs in pieces:
                loss = module.student_loss(student_batch, teacher_inputs=teacher_inputs)["loss"]
                loss = loss / step_weight
                loss.backward()
                total += float(loss.detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return total

        return step

    batch = batches[variant]
    step_weight = float(batch["step_weight"])

    def step() -> float:
        loss = module.compute_losses(batch)["loss"] / step_weight
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


# --------------------------------------------------------------------------------- FLOPs


def model_shape(module) -> dict[str, int]:
    """N (decoder matmul parameters), hidden, layers, vocab and parameter counts of the student."""
    from torch import nn

    from lightning_modules.modeling import decoder_layers

    model = module.transformer_model()
    layers = decoder_layers(model)
    matmul = sum(
        m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)
    )
    head = model.get_output_embeddings().weight
    return {
        "decoder_matmul_params": matmul,
        "hidden": int(head.shape[1]),
        "layers": len(layers),
        "vocab": int(head.shape[0]),
        "params": sum(p.numel() for p in model.parameters()),
        "teacher_params": sum(p.numel() for p in module.teacher.parameters())
        if module.teacher is not None
        else 0,
    }


def forward_flops(widths: list[int], shape: dict[str, int]) -> float:
    """`2·N·Σ W + 4·ℓ·H·Σ W²` for one forward over rows of widths `widths`."""
    n, h, layers = shape["decoder_matmul_params"], shape["hidden"], shape["layers"]
    return 2.0 * n * sum(widths) + 4.0 * layers * h * sum(w * w for w in widths)


def expected_flops(batches: dict[str, Any], shape: dict[str, int]) -> dict[str, float]:
    """The FLOPs of one step of each variant (module docstring)."""
    vh = float(shape["vocab"] * shape["hidden"])
    targets = batches["tokens"]["targets"]

    def rows(t) -> list[int]:
        return [int(t.shape[1])] * int(t.shape[0])

    disc = batches["disc"]
    flops = {
        "disc": forward_flops(rows(disc["teacher_input_ids"]), shape)
        + 3 * forward_flops(rows(disc["input_ids"]), shape)
        + 8 * vh * targets,
        "per_split": sum(
            forward_flops(rows(b["teacher_input_ids"]), shape)
            + 3 * forward_flops(rows(b["input_ids"]), shape)
            for b in batches["per_split"]
        )
        + 8 * vh * targets,
        "ft": 3 * forward_flops(rows(batches["ft"]["input_ids"]), shape)
        + 6 * vh * batches["tokens"]["ft"]["targets"],
    }
    return flops


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


def watch_step(step, vocab: int, weight_shape: tuple[int, ...]) -> dict[str, Any]:
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


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS and peak live tensor bytes of `spec["variant"]` in this fresh process."""
    import gc

    import torch

    from benchmarks.bench_losses import _live_tensor_mode, _reset_peak_rss, _status_kib

    settings = Settings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    batches = torch.load(spec["batches"], weights_only=False)
    prime = dataclasses.replace(settings, model=None, model_config=PRIME_MODEL)
    make_step(spec["variant"], *build_variant(spec["variant"], prime), batches)()
    gc.collect()
    base = _status_kib("VmRSS")
    module, optimizer = build_variant(spec["variant"], settings)
    step = make_step(spec["variant"], module, optimizer, batches)
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


def measure_memory(settings: Settings, batches_path: Path, args) -> dict[str, dict[str, Any]]:
    """`run_worker` of every variant, each in a fresh subprocess (run concurrently: each measures
    its own process only)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    procs = {}
    for variant in VARIANTS:
        spec = {
            "variant": variant,
            "settings": asdict(settings),
            "batches": str(batches_path),
            "warmup": args.warmup,
            "steps": args.mem_steps,
        }
        procs[variant] = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_disc", "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
    results = {}
    for variant, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        result = None
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
        if result is None:
            tail = (stderr or stdout).strip().splitlines()[-5:]
            result = {
                "variant": variant,
                "error": f"worker exited {proc.returncode}: {' | '.join(tail)}",
            }
        results[variant] = result
    return results


# --------------------------------------------------------------------------------- report


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


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


def _mib(b: float) -> str:
    return f"{b / MiB:,.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summarize(report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The markdown tables and the checks of a finished run."""
    tokens, timing, flops = report["tokens"], report["timing"], report["flops"]
    doc_tokens = tokens["document_tokens"]
    lines = [
        f"### {tokens['documents']} documents per step, {tokens['splits']} splits, "
        f"{tokens['targets']} target tokens",
        "",
        "| variant | micro-batches | teacher tokens (computed) | student tokens (computed) | "
        "step ms median (best) | steps/s | doc tokens/s | GFLOP/step | first objective |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    d, p, f = tokens["disc"], tokens["per_split"], tokens["ft"]
    cells = {
        "disc": (
            d["micro_batches"],
            f"{d['teacher_tokens']} ({d['teacher_tensor'][0]}×{d['teacher_tensor'][1]})",
            f"{d['student_tokens']} ({d['student_tensor'][0]}×{d['student_tensor'][1]})",
        ),
        "per_split": (
            p["micro_batches"],
            f"{p['teacher_tokens']} ({p['teacher_tensor_tokens']})",
            f"{p['student_tokens']} ({p['student_tensor_tokens']})",
        ),
        "ft": (f["micro_batches"], "—", f"{f['tokens']} ({f['tensor'][0]}×{f['tensor'][1]})"),
    }
    for v in VARIANTS:
        t = timing[v]
        med, best = t["median"], t["best"]
        lines.append(
            f"| {v} | {cells[v][0]} | {cells[v][1]} | {cells[v][2]} | {med * 1e3:.1f} "
            f"({best * 1e3:.1f}) | {1 / med:.2f} | {doc_tokens / med:,.0f} | {flops[v] / 1e9:.2f} "
            f"| {t['losses'][0]:.5f} |"
        )
    lines += [
        "",
        f"Document tokens per step (sentence-tokenized, what DiSC's teacher reads): {doc_tokens}; "
        f"FT reads {f['tokens']} (whole texts + EOS) with {f['targets']} CE targets.",
        "",
    ]
    checks: dict[str, Any] = {}
    speed_med = timing["per_split"]["median"] / timing["disc"]["median"]
    speed_best = timing["per_split"]["best"] / timing["disc"]["best"]
    speed_flops = flops["per_split"] / flops["disc"]
    ft_med = timing["disc"]["median"] / timing["ft"]["median"]
    ft_best = timing["disc"]["best"] / timing["ft"]["best"]
    ft_flops = flops["disc"] / flops["ft"]
    checks["speedup"] = {
        "median": speed_med,
        "best": speed_best,
        "flop_expectation": speed_flops,
        "ok": speed_med >= 1.5 and speed_best >= 1.5,
    }
    checks["vs_ft"] = {
        "median": ft_med,
        "best": ft_best,
        "flop_expectation": ft_flops,
        "ok": ft_med <= 1.25 and ft_best <= 1.25,
    }
    lines += [
        "| ratio | median | best | FLOP expectation | target |",
        "|---|---:|---:|---:|---|",
        f"| per-split ÷ DiSC (speedup) | {speed_med:.2f} | {speed_best:.2f} | {speed_flops:.2f} "
        f"| ≥ 1.5: {verdict(checks['speedup']['ok'])} |",
        f"| DiSC ÷ FT | {ft_med:.2f} | {ft_best:.2f} | {ft_flops:.2f} "
        f"| ≤ 1.25: {verdict(checks['vs_ft']['ok'])} |",
        "",
    ]
    memory = report["memory"]
    if all("error" not in memory.get(v, {"error": 1}) for v in VARIANTS):
        lines += [
            "| variant | peak RSS MiB | peak live tensors MiB | student | AdamW state | teacher | "
            "step's own tensors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for v in VARIANTS:
            m = memory[v]
            lines.append(
                f"| {v} | {_mib(m['peak_rss'])} | {_mib(m['peak_live'])} | "
                f"{_mib(m['student_bytes'])} | {_mib(m['adam_bytes'])} | "
                f"{_mib(m['teacher_bytes'])} | {_mib(m['step_live_peak'])} |"
            )
        teacher = memory["disc"]["teacher_bytes"]
        mem_check = {}
        for what, key in (("rss", "peak_rss"), ("live", "peak_live")):
            bound = 1.1 * (memory["ft"][key] + teacher)
            mem_check[what] = {
                "disc": memory["disc"][key],
                "ft": memory["ft"][key],
                "teacher": teacher,
                "bound": bound,
                "ratio": memory["disc"][key] / (memory["ft"][key] + teacher),
                "ok": memory["disc"][key] <= bound,
            }
        mem_check["ok"] = mem_check["rss"]["ok"] and mem_check["live"]["ok"]
        checks["memory"] = mem_check
        lines.append("")
        for what in ("rss", "live"):
            c = mem_check[what]
            lines.append(
                f"- {TARGETS['memory']} ({'peak RSS' if what == 'rss' else 'peak live tensors'}): "
                f"{_mib(c['disc'])} ≤ 1.1 × ({_mib(c['ft'])} + {_mib(c['teacher'])}) = "
                f"{_mib(c['bound'])} MiB (DiSC ÷ (FT + teacher) = {c['ratio']:.2f}) → "
                f"{verdict(c['ok'])}"
            )
    else:
        checks["memory"] = {"ok": False, "error": {v: memory.get(v) for v in VARIANTS}}
        lines.append(f"- memory: a worker failed: {checks['memory']['error']}")
    watch = report["vocab_watch"]
    disc_watch = watch["disc"]
    meaningful = report["settings"]["chunk_size"] < tokens["targets"]
    checks["no_vocab_tensor"] = {
        "threshold_rows": tokens["targets"],
        "largest_rows": disc_watch["largest_rows"],
        "largest_shape": disc_watch["largest_shape"],
        "chunk_size": report["settings"]["chunk_size"],
        "meaningful": meaningful,
        "ok": disc_watch["largest_rows"] < tokens["targets"] and meaningful,
    }
    lines.append(
        f"- {TARGETS['no_vocab_tensor']}: largest tensor with a vocabulary dimension "
        f"{disc_watch['largest_shape']} ({disc_watch['largest_rows']} rows, by {disc_watch['largest_op']}) "
        f"< {tokens['targets']} target tokens (chunk {report['settings']['chunk_size']}) → "
        f"{verdict(checks['no_vocab_tensor']['ok'])}"
        + ("" if meaningful else " (chunk ≥ targets: not meaningful)")
    )
    for v in ("per_split", "ft", "disc_default_chunk"):
        w = watch.get(v)
        if w:
            lines.append(
                f"  - for information, {v}: largest vocabulary tensor {w['largest_shape']} "
                f"({w['largest_rows']} rows)"
            )
    lines.append(
        f"- {TARGETS['speedup']}: median {speed_med:.2f}, best {speed_best:.2f} "
        f"(FLOP expectation {speed_flops:.2f}) → {verdict(checks['speedup']['ok'])}"
    )
    lines.append(
        f"- {TARGETS['vs_ft']}: median {ft_med:.2f}, best {ft_best:.2f} "
        f"(FLOP expectation {ft_flops:.2f}) → {verdict(checks['vs_ft']['ok'])}"
    )
    return "\n".join(lines), checks


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 documents, fewer steps (≈ 1 min)")
    parser.add_argument(
        "--documents", choices=("world", "synthetic"), default="world", help="which documents"
    )
    parser.add_argument("--docs", type=int, default=None, help="documents per step (16; quick 8)")
    parser.add_argument("--model", default=None, help="a local save_pretrained model directory")
    parser.add_argument(
        "--model-config", type=Path, default=DEFAULT_MODEL_CONFIG, help="YAML of a fresh model"
    )
    parser.add_argument("--world-cache-dir", default=".cache/adaptlm/worlds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    parser.add_argument("--max-length", type=int, default=256, help="row length (the configs')")
    parser.add_argument("--num-splits", type=int, default=5, help="k, targets per document")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of targets")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per memory worker")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("docs", 16, 8),
        ("chunk_size", 256, 64),
        ("steps", 6, 2),
        ("repeats", 5, 2),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(json.loads(args.worker))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

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
    with tempfile.TemporaryDirectory(prefix="bench_disc-") as tmp:
        workdir = Path(tmp)
        if args.documents == "world":
            texts, tokenizer = world_texts(args.docs, args.world_cache_dir)
        else:
            from benchmarks.bench_loop import train_tokenizer

            texts = synthetic_texts(args.docs)
            corpus = workdir / "corpus.jsonl"
            corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in synthetic_texts(400)))
            tokenizer = str(train_tokenizer(workdir, corpus))
        if args.model is not None:
            tokenizer = args.model
        if Path(tokenizer).exists():  # workers run from the repository root
            tokenizer = str(Path(tokenizer).resolve())
        model_config = None
        if args.model is None:
            from experiments.include import load_yaml

            model_config = load_yaml(args.model_config.read_text(encoding="utf-8"))
        settings = Settings(
            tokenizer=tokenizer,
            model_config=model_config,
            model=args.model,
            max_length=args.max_length,
            chunk_size=args.chunk_size,
            threads=threads,
            noise=args.noise,
        )
        batches = build_batches(texts, tokenizer, args, workdir)
        log(f"documents ({args.documents}) and batches: {json.dumps(batches['tokens'])}")
        built = {v: build_variant(v, settings) for v in VARIANTS}
        steps = {v: make_step(v, *built[v], batches) for v in VARIANTS}
        shape = model_shape(built["disc"][0])
        flops = expected_flops(batches, shape)
        gflops = {v: round(f / 1e9, 3) for v, f in flops.items()}
        log(f"model: {json.dumps(shape)}; GFLOP per step: {json.dumps(gflops)}")

        timing = {v: Timing() for v in VARIANTS}
        first = {v: steps[v]() for v in VARIANTS}  # the same student weights: compare the losses
        disc_vs_ref = abs(first["disc"] - first["per_split"]) / max(abs(first["per_split"]), 1e-12)
        log(
            f"first-step objective: {first}; DiSC vs per-split relative difference {disc_vs_ref:.2e}"
        )
        if disc_vs_ref > 1e-4:
            raise AssertionError(f"DiSC and the per-split reference disagree: {first}")
        for v in VARIANTS:
            timing[v].losses.append(first[v])
            for _ in range(args.warmup - 1):
                steps[v]()
        for round_ in range(args.repeats):
            shift = round_ % len(VARIANTS)
            order = VARIANTS[shift:] + VARIANTS[:shift]
            for v in order:
                for _ in range(args.steps):
                    t0, c0 = time.perf_counter(), _cpu_seconds()
                    steps[v]()
                    timing[v].times.append(time.perf_counter() - t0)
                    timing[v].cpu_times.append(_cpu_seconds() - c0)
            log(
                f"round {round_ + 1}/{args.repeats}: "
                + ", ".join(
                    f"{v} {statistics.median(timing[v].times[-args.steps :]) * 1e3:.1f} ms"
                    for v in VARIANTS
                )
            )

        vocab, hidden = shape["vocab"], shape["hidden"]
        weight_shape = (vocab, hidden)
        watch = {v: watch_step(steps[v], vocab, weight_shape) for v in VARIANTS}
        disc_module = built["disc"][0]
        spec = disc_module.loss_spec
        disc_module.loss_spec = dataclasses.replace(spec, chunk_size=None)
        watch["disc_default_chunk"] = watch_step(steps["disc"], vocab, weight_shape)
        disc_module.loss_spec = spec
        log(f"vocabulary watch: {json.dumps(watch)}")
        del built, steps

        batches_path = workdir / "batches.pt"
        torch.save(batches, batches_path)
        memory = measure_memory(settings, batches_path, args)
        for v in VARIANTS:
            log(f"memory {v}: {json.dumps(memory[v])}")

    command = "python -m benchmarks.bench_disc " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report = {
        "command": command,
        "environment": env,
        "settings": asdict(settings),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
        "model": shape,
        "tokens": batches["tokens"],
        "flops": flops,
        "timing": {v: {**asdict(t), "median": t.median, "best": t.best} for v, t in timing.items()},
        "memory": memory,
        "vocab_watch": watch,
    }
    text, checks = summarize(report)
    report["checks"] = checks
    env["loadavg_end"] = _loadavg()
    report["elapsed_s"] = time.time() - started
    print("\n" + text + "\n", flush=True)
    out = args.out or REPO / "benchmarks" / "results" / (
        f"bench_disc{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(
        f"`{command}`\n\n```\n{json.dumps(env, indent=1)}\n```\n\n{text}\n"
    )
    print(f"results: {out} (+ .md); {report['elapsed_s']:.0f} s in all")
    return 0 if checks["no_vocab_tensor"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
