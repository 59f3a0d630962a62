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
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._harness import (
    RUN_DEFAULTS,
    Timing,
    _mib,
    add_common_arguments,
    add_output_arguments,
    add_run_arguments,
    base_report,
    finish_variant,
    first_steps,
    forward_flops,
    memory_ok,
    memory_table,
    model_shape,
    model_source,
    module_kwargs,
    peak_memory,
    quick_defaults,
    ratio_line,
    round_robin,
    row_widths,
    run_settings,
    save_and_measure,
    serve_worker,
    start,
    synthetic_texts,
    synthetic_tokenizer,
    time_ratio,
    timing_report,
    verdict,
    vocab_check,
    vocab_info_lines,
    vocab_watch,  # noqa: F401  (re-exported: tests/test_bench_disc.py)
    warm_up,
    watch_default_chunk,
    watch_steps,
    world_texts,
    write_results,
)
from benchmarks._harness import Settings as BaseSettings
from benchmarks._harness import make_step as single_batch_step

BENCHMARK = "benchmarks.bench_disc"
VARIANTS = ("disc", "per_split", "ft")
TARGETS = {
    "speedup": "DiSC step ≥ 1.5 × faster than the per-split implementation",
    "vs_ft": "DiSC step ≤ 1.25 × an FT step",
    "memory": "DiSC peak ≤ 1.1 × (FT peak + teacher weights)",
    "no_vocab_tensor": "no [tokens, vocab] tensor during a DiSC step",
}


@dataclass
class Settings(BaseSettings):
    """What a worker process needs to rebuild a variant exactly as the parent did."""

    temperature: float = 2.0


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
    from lightning_modules import CausalLMModule, DiSCModule
    from losses import LossSpec

    common = module_kwargs(settings)
    if variant in ("disc", "per_split"):
        module = DiSCModule(
            temperature=settings.temperature, chunk_size=settings.chunk_size, **common
        )
    elif variant == "ft":
        module = CausalLMModule(loss=LossSpec(chunk_size=settings.chunk_size), **common)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return finish_variant(module, settings)


def make_step(variant: str, module, optimizer, batches: dict[str, Any]):
    """A closure running one optimizer step of `variant`; returns the step's objective."""
    from lightning_modules.forward import TeacherInputs

    if variant != "per_split":
        return single_batch_step(module, optimizer, batches[variant])
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


# --------------------------------------------------------------------------------- FLOPs


def expected_flops(batches: dict[str, Any], shape: dict[str, int]) -> dict[str, float]:
    """The FLOPs of one step of each variant (module docstring)."""
    vh = float(shape["vocab"] * shape["hidden"])
    targets = batches["tokens"]["targets"]
    disc = batches["disc"]
    flops = {
        "disc": forward_flops(row_widths(disc["teacher_input_ids"]), shape)
        + 3 * forward_flops(row_widths(disc["input_ids"]), shape)
        + 8 * vh * targets,
        "per_split": sum(
            forward_flops(row_widths(b["teacher_input_ids"]), shape)
            + 3 * forward_flops(row_widths(b["input_ids"]), shape)
            for b in batches["per_split"]
        )
        + 8 * vh * targets,
        "ft": 3 * forward_flops(row_widths(batches["ft"]["input_ids"]), shape)
        + 6 * vh * batches["tokens"]["ft"]["targets"],
    }
    return flops


# --------------------------------------------------------------------------------- worker: memory


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS and peak live tensor bytes of `spec["variant"]` in this fresh process."""
    import torch

    batches = torch.load(spec["batches"], weights_only=False)
    variant = spec["variant"]

    def build(settings: Settings):
        module, optimizer = build_variant(variant, settings)
        return module, optimizer, make_step(variant, module, optimizer, batches)

    return peak_memory(build, Settings(**spec["settings"]), spec)


# --------------------------------------------------------------------------------- report


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
    speed = checks["speedup"] = time_ratio(timing, flops, "per_split", "disc")
    speed["ok"] = speed["median"] >= 1.5 and speed["best"] >= 1.5
    vs_ft = checks["vs_ft"] = time_ratio(timing, flops, "disc", "ft")
    vs_ft["ok"] = vs_ft["median"] <= 1.25 and vs_ft["best"] <= 1.25
    lines += [
        "| ratio | median | best | FLOP expectation | target |",
        "|---|---:|---:|---:|---|",
        f"| per-split ÷ DiSC (speedup) | {speed['median']:.2f} | {speed['best']:.2f} | "
        f"{speed['flop_expectation']:.2f} | ≥ 1.5: {verdict(speed['ok'])} |",
        f"| DiSC ÷ FT | {vs_ft['median']:.2f} | {vs_ft['best']:.2f} | "
        f"{vs_ft['flop_expectation']:.2f} | ≤ 1.25: {verdict(vs_ft['ok'])} |",
        "",
    ]
    memory = report["memory"]
    if memory_ok(memory, VARIANTS):
        lines += memory_table(memory, VARIANTS)
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
    checks["no_vocab_tensor"], line = vocab_check(
        TARGETS["no_vocab_tensor"],
        [watch["disc"]],
        tokens["targets"],
        report["settings"]["chunk_size"],
    )
    lines.append(line)
    lines += vocab_info_lines(watch, ("per_split", "ft", "disc_default_chunk"))
    lines.append(ratio_line(TARGETS["speedup"], speed))
    lines.append(ratio_line(TARGETS["vs_ft"], vs_ft))
    return "\n".join(lines), checks


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 documents, fewer steps (≈ 1 min)")
    add_common_arguments(parser)
    parser.add_argument("--docs", type=int, default=None, help="documents per step (16; quick 8)")
    parser.add_argument("--num-splits", type=int, default=5, help="k, targets per document")
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of targets")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    return quick_defaults(args, (("docs", 16, 8), *RUN_DEFAULTS))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(run_worker, args.worker)

    threads, env, log, started = start(args)
    with tempfile.TemporaryDirectory(prefix="bench_disc-") as tmp:
        workdir = Path(tmp)
        if args.documents == "world":
            texts, tokenizer = world_texts(args.docs, args.world_cache_dir)
        else:
            texts, tokenizer = synthetic_texts(args.docs), synthetic_tokenizer(workdir)
        tokenizer, model_config = model_source(args, tokenizer)
        settings = run_settings(Settings, args, tokenizer, model_config, threads)
        batches = build_batches(texts, tokenizer, args, workdir)
        log(f"documents ({args.documents}) and batches: {json.dumps(batches['tokens'])}")
        built = {v: build_variant(v, settings) for v in VARIANTS}
        steps = {v: make_step(v, *built[v], batches) for v in VARIANTS}
        shape = model_shape(built["disc"][0])
        flops = expected_flops(batches, shape)
        gflops = {v: round(f / 1e9, 3) for v, f in flops.items()}
        log(f"model: {json.dumps(shape)}; GFLOP per step: {json.dumps(gflops)}")

        timing = {v: Timing() for v in VARIANTS}
        first = first_steps(steps)  # the same student weights: compare the losses
        disc_vs_ref = abs(first["disc"] - first["per_split"]) / max(abs(first["per_split"]), 1e-12)
        log(
            f"first-step objective: {first}; DiSC vs per-split relative difference {disc_vs_ref:.2e}"
        )
        if disc_vs_ref > 1e-4:
            raise AssertionError(f"DiSC and the per-split reference disagree: {first}")
        warm_up(steps, timing, first, args.warmup)
        round_robin(steps, timing, args.repeats, args.steps, log)

        watch = watch_steps(steps, shape)
        watch["disc_default_chunk"] = watch_default_chunk(built["disc"][0], steps["disc"], shape)
        log(f"vocabulary watch: {json.dumps(watch)}")
        del built, steps

        memory = save_and_measure(BENCHMARK, VARIANTS, settings, batches, workdir, args, log)

    report = {
        **base_report(BENCHMARK, argv, env, settings, args),
        "model": shape,
        "tokens": batches["tokens"],
        "flops": flops,
        "timing": timing_report(timing),
        "memory": memory,
        "vocab_watch": watch,
    }
    text, checks = summarize(report)
    report["checks"] = checks
    write_results("bench_disc", args, report, text, started)
    return 0 if checks["no_vocab_tensor"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
