"""Step time and peak memory of Mix-CPT against plain CPT and SFT, side by side: stage 1 with
logit-swap self-distillation (LSSD), its LoRA form with an `adapters_disabled` teacher, and stage 2's
DPO with cached reference log-probs.

    python -m benchmarks.bench_mix_cpt                 # the recorded benchmark (≈ 2-3 min on 2 cores)
    python -m benchmarks.bench_mix_cpt --quick         # 4 rows, 8 pairs, fewer steps: the harness
    python -m benchmarks.bench_mix_cpt --threads 1     # torch threads (default: torch's own default)
    python -m benchmarks.bench_mix_cpt --model .cache/adaptlm/world_models/default-seed0/pretrained

The methodology is `benchmarks.bench_disc`'s (its docstring; the shared pieces are
`benchmarks._harness`): every variant in one run, on the same batches, from the same seeded student.

**Data.** `--documents world` (default): the new-domain articles of the world of
`experiments/configs/world/default.yaml` and its first `--pairs` preference pairs
(`world:preference_pairs`: chat prompts, chosen = the right answer, rejected = a wrong value or
format), tokenized with the world's tokenizer. `--documents synthetic`: `bench_disc`'s seeded
article-like documents, pairs cut from more of them (prompt = a document's first sentence, chosen =
the next two sentences, rejected = the two after) and a byte-level BPE (vocab 2048) trained on them.
Both go through the real data modules from JSONL files:

* stage-1 rows: `PretrainingDataModule` (`kind: document`: each text tokenized, EOS appended,
  concatenated and cut into `--max-length` rows; every token a target but each document's first);
  the first `--rows` (9) rows form one micro-batch, the same for the four stage-1 variants;
* pairs: `PreferenceDataModule`'s `PairCollator` on the first `--pairs` (24) pairs: one micro-batch of
  `2P` rows `[c_0 … c_{P-1}, r_0 … r_{P-1}]`, right-padded to the longest (a multiple of 8), loss on
  each response and its EOS; the same tensors for the three stage-2 variants.

**Model.** A fresh, seeded model of the world base models' shape (`--model-config`, default
`experiments/configs/model/world_base.yaml`: Llama, hidden 128, 4 layers, tied head, vocab from the
tokenizer), or `--model PATH` (a local `save_pretrained` directory; its own tokenizer is then used).
Every student starts from the same weights: the initial model plus the same small seeded noise
(`--noise`) on its trainable parameters — all weights, or a LoRA student's adapters (whose `B`
starts at zero) — so that it differs from its teacher, the initial model, and the KL and its
gradient are not zero. fp32, sdpa attention, AdamW (0.9/0.999, eps 1e-8, wd 0.01).

**Variants** (one optimizer step = forward + backward of the micro-batch, `AdamW.step()`,
`zero_grad`; the objective `compute_losses(batch)["loss"]` divided by the batch's `step_weight` as
`CausalLMModule.training_step` does). Stage 1, on the rows:

* ``cpt``         `CausalLMModule`: CE (Mix-CPT's ablation without LSSD).
* ``lssd``        `MixCPTModule` (`mode: add`, α = 1, τ = 1, forward KL): CE + LSSD from a frozen copy
                  of the initial model.
* ``cpt_lora``    `CausalLMModule` with LoRA (r = `--lora-r` 16, alpha 32, dropout 0.1, every decoder
                  linear; the base weights and the tied head frozen).
* ``lssd_lora``   `MixCPTModule` with the same LoRA and `teacher: {kind: adapters_disabled}`: the
                  teacher is the student with its adapters off (no second model).

Stage 2, on the pairs:

* ``sft``         `CausalLMModule`: CE on the same rows and labels (the responses; `step_weight` the
                  response targets).
* ``dpo_cached``  `DPOModule` (β = 0.1, sigmoid, `reference: precomputed`). The reference
                  log-probs are computed once by the initial policy, before the noise and untimed,
                  with `DPOModule._compute_reference` (what `on_fit_start` runs through
                  `prepare_reference`), and put in the module's table of the `train` set, so that a
                  step looks them up by `pair_index` and runs no reference model.
* ``dpo_teacher`` `DPOModule` with `reference: teacher`: a frozen copy of the initial model gives the
                  reference row CE in the same forward (for information).

At the first step (the same weights, the same batch, each after the same `torch.manual_seed`, so a
LoRA student draws the same dropout masks) the CE of ``lssd`` must equal that of ``cpt``, the CE of
``lssd_lora`` that of ``cpt_lora`` (relative 1e-5), the KL must be > 0, and ``dpo_cached``'s loss
must equal ``dpo_teacher``'s (1e-4: the cached table is the teacher's row log-probs, batched
differently).

**FLOP expectation** (printed beside each ratio; the time ratio it predicts at an equal FLOP
rate), `bench_disc`'s model: with `N` the decoder's matmul parameters, `N_r` the adapters' (`r·(in +
out)` per adapted linear), `H`, `ℓ`, `V` hidden size, layers and vocabulary, and for a pass over rows
of widths `W_r` (`T = Σ W_r` tokens) `F_lin = 2·N·T`, `F_attn = 4·ℓ·H·Σ_r W_r²`, `F_fwd = F_lin +
F_attn`, `F_lora = 2·N_r·T`; `n` the stage-1 targets, `m` the pairs' response targets:

    cpt         = 3·F_fwd + 6·V·H·n
    lssd        = F_fwd + 3·F_fwd + 8·V·H·n                   (≈ 1.33 × cpt)
    cpt_lora    = 2·F_lin + 3·F_attn + 3·F_lora + 4·V·H·n
    lssd_lora   = F_fwd + (2·F_lin + 3·F_attn + 3·F_lora) + 6·V·H·n
    sft         = 3·F_fwd(pair rows) + 6·V·H·m
    dpo_cached  = 3·F_fwd(pair rows) + 8·V·H·m
    dpo_teacher = F_fwd(pair rows) + 3·F_fwd(pair rows) + 10·V·H·m

A teacher runs forward only (1×), a student forward + backward (3×). A LoRA student's frozen linear
layers need only their input gradient (2×; the first layer's q, k, v input gradients, which nothing
needs, are counted anyway), attention's two products and the adapters 3×. The fused LM-head loss
computes only target rows: student logits, ∂X and ∂W are 2·V·H each per target (6·V·H), LSSD adds
the teacher's logits (8·V·H); a LoRA student's tied head is frozen (no ∂W: 4·V·H, 6·V·H). DPO's row
CE is the fused CE with `reduction="none"`, whose per-token upstream gradient is known only in
backward, so backward computes the logits again (8·V·H); the teacher's row CE adds its logits
(2·V·H). Embedding lookups, norms, the row step, dropout, the DPO loss itself and AdamW are left
out.

**Peak memory**, as `bench_disc`: each variant runs again in a fresh subprocess (`--jobs`, default
2, side by side; each measures its own process only) that first runs one step on a throwaway 1-layer model, then
records `VmRSS`, builds the variant, runs `--warmup` steps, resets the RSS high-water mark and runs
`--mem-steps` steps: **peak RSS** = `VmHWM` − the baseline. **Peak live tensors** = the bytes of the
persistent tensors (student parameters, a LoRA student's frozen base included; AdamW state; an
owned teacher's parameters) + the peak of the storages created during one step and alive at once
(a `TorchDispatchMode`). The check is `lssd_lora ≤ 1.1 × cpt_lora` on both figures (the same LoRA
student, with and without its adapters-disabled teacher); `lssd` against `cpt` (and `cpt + teacher
weights`) and `dpo_cached` against `sft` are printed for information.

**No `[tokens, vocab]` tensor.** A step of every variant runs under `bench_disc`'s vocabulary watch
(every op output with a vocabulary dimension, the head-shaped ones excepted); the check: during an
``lssd`` and an ``lssd_lora`` step no such tensor has `n` rows or more (`--chunk-size`, default 256,
quick 64, is below `n`). The other variants, and ``lssd`` at the library's default chunk, are
printed for information. A batch holding exactly `V` tokens would make its `[tokens, ·]`
activations look like vocabulary tensors to the watch (the defaults avoid it; a note says so).

**Where LSSD's extra time goes** (for information, timed the same way after the main rounds): the
teacher's forward on the rows alone, and the fused LM-head loss alone (forward + backward on `n`
seeded random targets at the head's shape) as CE and as CE + LSSD. The FLOP model counts the loss's
GEMMs only (6 → 8 `V·H` per target); its row step — the teacher's softmax, the swap, the KL and its
gradient over `[chunk, V]` — is elementwise work that weighs more the smaller `H` is, and is what
the measured ``lssd ÷ cpt`` has beyond 1.33 on this model.

**Timing**, as `bench_disc`: after `--warmup` steps of each variant, `--repeats` rounds each run
`--steps` steps of every variant (all seven), the order rotating between rounds so that all share
the machine's noise. Per variant the median and the best step time; each ratio from the medians and
from the bests, a target met when both are. Results: `benchmarks/results/
bench_mix_cpt[-quick]-<timestamp>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    RUN_DEFAULTS,
    Step,
    Timing,
    _mib,
    add_common_arguments,
    add_output_arguments,
    add_run_arguments,
    attention_flops,
    base_report,
    configure,
    first_steps,
    forward_flops,
    linear_flops,
    make_step,
    memory_ok,
    memory_table,
    model_shape,
    model_source,
    module_kwargs,
    peak_memory,
    perturb,
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
    train_with_adamw,
    verdict,
    vocab_check,
    vocab_info_lines,
    warm_up,
    watch_default_chunk,
    watch_steps,
    world_records,
    write_jsonl,
    write_results,
)
from benchmarks._harness import Settings as BaseSettings

BENCHMARK = "benchmarks.bench_mix_cpt"
STAGE1 = ("cpt", "lssd", "cpt_lora", "lssd_lora")
STAGE2 = ("sft", "dpo_cached", "dpo_teacher")
VARIANTS = STAGE1 + STAGE2
LSSD = ("lssd", "lssd_lora")
RATIOS = {  # check: (numerator, denominator, bound or None for information)
    "lssd_vs_cpt": ("lssd", "cpt", 1.4),
    "lssd_lora_vs_cpt_lora": ("lssd_lora", "cpt_lora", None),
    "dpo_cached_vs_sft": ("dpo_cached", "sft", 1.1),
    "dpo_teacher_vs_sft": ("dpo_teacher", "sft", None),
}
TARGETS = {
    "lssd_vs_cpt": "Stage-1 step with LSSD ≤ 1.4 × a plain CPT step",
    "memory": "LSSD with an adapters_disabled teacher: peak ≤ 1.1 × CPT (the same LoRA student)",
    "dpo_cached_vs_sft": "DPO step with cached reference log-probs ≤ 1.1 × an SFT step",
    "no_vocab_tensor": "no [tokens, vocab] tensor during an LSSD step",
    "first_step": "first step: LSSD's CE = CPT's, KL > 0, cached DPO loss = teacher DPO loss",
}


@dataclass
class Settings(BaseSettings):
    """What a worker process needs to rebuild a variant exactly as the parent did."""

    lora_r: int = 16
    beta: float = 0.1


# --------------------------------------------------------------------------------- data


def synthetic_pairs(n: int, seed: int = 1) -> list[dict[str, str]]:
    """`n` preference records cut from `synthetic_texts`: prompt = the first sentence, chosen = the
    next two, rejected = the two after."""
    pairs = []
    for text in synthetic_texts(n, seed):
        sentences = [s if s.endswith(".") else s + "." for s in text.split(". ")]
        pairs.append(
            {
                "prompt": sentences[0],
                "chosen": " " + " ".join(sentences[1:3]),
                "rejected": " " + " ".join(sentences[3:5]),
            }
        )
    return pairs


def build_batches(
    texts: list[str], pairs: list[dict[str, Any]], tokenizer: str, args, workdir: Path
) -> dict[str, Any]:
    """The stage-1 rows and the stage-2 pair batch (module docstring), through the real data
    modules, with the pair items (for the reference log-probs) and the token counts."""
    from datamodules import PretrainingDataModule, SourceSpec
    from datamodules.packing import collate_rows
    from datamodules.preference import PreferenceDataModule, PreferenceSource

    stores = str(workdir / "stores")
    documents = write_jsonl(workdir / "documents.jsonl", [{"text": t} for t in texts])
    data = PretrainingDataModule(
        tokenizer=tokenizer,
        train_sources=[SourceSpec(path=str(documents), kind="document")],
        val_sources={},
        max_length=args.max_length,
        micro_batch_size=1,
        cache_dir=stores,
    )
    data.prepare_data()
    data.setup("fit")
    if len(data.train_dataset) < args.rows:
        raise ValueError(
            f"{len(texts)} documents make {len(data.train_dataset)} rows < {args.rows}"
        )
    rows = collate_rows([data.train_dataset[i] for i in range(args.rows)])

    path = write_jsonl(workdir / "pairs.jsonl", pairs)
    preference = PreferenceDataModule(
        tokenizer=tokenizer,
        train_sources=[PreferenceSource(path=str(path))],
        max_length=args.max_length,
        micro_batch_size=args.pairs,
        cache_dir=stores,
    )
    preference.prepare_data()
    preference.setup("fit")
    kept = preference.train_dataset
    if len(kept) < args.pairs:
        raise ValueError(f"{len(pairs)} records keep {len(kept)} pairs < {args.pairs}")
    items = [kept[i] for i in range(args.pairs)]
    dpo = preference.collator()(items)  # step_weight: the pairs
    responses = int((dpo["labels"][:, 1:] != -100).sum())
    sft = {**dpo, "step_weight": dpo["step_weight"].new_tensor(float(responses))}
    tokens = {
        "rows": {
            "tensor": list(rows["input_ids"].shape),
            "tokens": int(rows["attention_mask"].sum()),
            "targets": int(rows["step_weight"]),
            "documents": len(texts),
        },
        "pairs": {
            "pairs": args.pairs,
            "tensor": list(dpo["input_ids"].shape),
            "tokens": int(dpo["attention_mask"].sum()),
            "targets": responses,
        },
    }
    return {"rows": rows, "dpo": dpo, "sft": sft, "pair_items": items, "tokens": tokens}


def batch_of(variant: str, batches: dict[str, Any]) -> dict[str, Any]:
    """The micro-batch a variant trains on."""
    if variant in STAGE1:
        return batches["rows"]
    return batches["sft" if variant == "sft" else "dpo"]


# --------------------------------------------------------------------------------- modules and steps


def build_variant(variant: str, settings: Settings, batches: dict[str, Any]):
    """(module, optimizer) of a variant: built (``dpo_cached`` with its reference log-probs from
    the initial policy), then the student perturbed by the same seeded noise."""
    from lightning_modules import CausalLMModule, DPOModule, LoraSettings, MixCPTModule
    from lightning_modules.teacher import TeacherSettings
    from losses import LossSpec

    common = module_kwargs(settings)
    chunk = settings.chunk_size
    lora = LoraSettings(r=settings.lora_r)
    lssd = dict(mode="add", alpha=1.0, temperature=1.0, divergence="forward_kl", chunk_size=chunk)
    dpo = dict(beta=settings.beta, loss_type="sigmoid", chunk_size=chunk)
    if variant in ("cpt", "sft"):
        module = CausalLMModule(loss=LossSpec(chunk_size=chunk), **common)
    elif variant == "cpt_lora":
        module = CausalLMModule(loss=LossSpec(chunk_size=chunk), lora=lora, **common)
    elif variant == "lssd":
        module = MixCPTModule(**lssd, **common)
    elif variant == "lssd_lora":
        teacher = TeacherSettings(kind="adapters_disabled")
        module = MixCPTModule(**lssd, lora=lora, teacher=teacher, **common)
    elif variant == "dpo_cached":
        module = DPOModule(reference="precomputed", **dpo, **common)
    elif variant == "dpo_teacher":
        module = DPOModule(reference="teacher", **dpo, **common)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    configure(module)
    if variant == "dpo_cached":
        install_reference(module, batches["pair_items"], settings.max_length)
    perturb(module, settings.noise)
    return train_with_adamw(module)


def install_reference(module, items: list[dict[str, Any]], max_length: int) -> None:
    """The initial policy's reference log-probs of the pairs `items` (global indices 0…P-1),
    computed as `DPOModule.prepare_reference` does (batched, `no_grad`) and set as the table of the
    `train` set, where `compute_losses` looks them up."""
    from datamodules.preference import PairCollator

    collate = PairCollator(int(module.tokenizer.pad_token_id), max_length)
    module._reference["train"] = module._compute_reference(items, collate)


def lssd_cost_steps(module, batch: dict[str, Any], shape: dict[str, int]) -> dict[str, Step]:
    """Where an LSSD step's extra time goes, for information: the teacher's forward on the rows
    (`no_grad`) and the fused LM-head loss alone, forward + backward, CE (``cpt``'s) and CE + LSSD
    (``lssd``'s spec), on as many seeded random targets as the rows hold, at the head's shape."""
    import torch

    from losses import LossSpec, fused_linear_distillation_loss

    n = int(batch["step_weight"])
    g = torch.Generator().manual_seed(0)
    vocab, hidden = shape["vocab"], shape["hidden"]
    x = torch.randn(n, hidden, generator=g).requires_grad_()
    w = (0.02 * torch.randn(vocab, hidden, generator=g)).requires_grad_()
    xt, wt = x.detach() + 0.01 * torch.randn(n, hidden, generator=g), w.detach().clone()
    y = torch.randint(0, vocab, (n,), generator=g)
    lssd, ce = module.loss_spec, LossSpec(chunk_size=module.loss_spec.chunk_size)

    def loss_step(spec: LossSpec, teacher: bool) -> Step:
        def step() -> float:
            loss = fused_linear_distillation_loss(
                x,
                w,
                y,
                spec=spec,
                teacher_hidden=xt if teacher else None,
                teacher_weight=wt if teacher else None,
                reduction="sum",
            )
            loss.backward()
            x.grad = w.grad = None
            return float(loss.detach())

        return step

    def teacher_forward() -> float:
        inputs = (batch["input_ids"], batch.get("position_ids"), batch.get("attention_mask"))
        return float(module.teacher.hidden_states(*inputs)[0, 0, 0])

    return {
        "teacher_forward": teacher_forward,
        "ce_loss": loss_step(ce, False),
        "lssd_loss": loss_step(lssd, True),
    }


# --------------------------------------------------------------------------------- FLOPs


def expected_flops(batches: dict[str, Any], shape: dict[str, int]) -> dict[str, float]:
    """The FLOPs of one step of each variant (module docstring); `shape` of a LoRA student."""
    vh = float(shape["vocab"] * shape["hidden"])
    n = batches["tokens"]["rows"]["targets"]
    m = batches["tokens"]["pairs"]["targets"]
    rows = row_widths(batches["rows"]["input_ids"])
    pairs = row_widths(batches["dpo"]["input_ids"])
    full, pair = forward_flops(rows, shape), forward_flops(pairs, shape)
    lora_student = (
        2 * linear_flops(rows, shape)
        + 3 * attention_flops(rows, shape)
        + 3 * linear_flops(rows, shape, "lora_matmul_params")
    )
    return {
        "cpt": 3 * full + 6 * vh * n,
        "lssd": full + 3 * full + 8 * vh * n,
        "cpt_lora": lora_student + 4 * vh * n,
        "lssd_lora": full + lora_student + 6 * vh * n,
        "sft": 3 * pair + 6 * vh * m,
        "dpo_cached": 3 * pair + 8 * vh * m,
        "dpo_teacher": pair + 3 * pair + 10 * vh * m,
    }


# --------------------------------------------------------------------------------- worker: memory


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS and peak live tensor bytes of `spec["variant"]` in this fresh process."""
    import torch

    batches = torch.load(spec["batches"], weights_only=False)
    variant = spec["variant"]

    def build(settings: Settings):
        module, optimizer = build_variant(variant, settings, batches)
        return module, optimizer, make_step(module, optimizer, batch_of(variant, batches))

    return peak_memory(build, Settings(**spec["settings"]), spec)


# --------------------------------------------------------------------------------- report


def consistency(first: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The first-step checks of the module docstring."""

    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(b), 1e-12)

    out = {
        "lssd_ce_vs_cpt_ce": rel(first["lssd"]["ce"], first["cpt"]["ce"]),
        "lssd_lora_ce_vs_cpt_lora_ce": rel(first["lssd_lora"]["ce"], first["cpt_lora"]["ce"]),
        "dpo_cached_vs_dpo_teacher": rel(first["dpo_cached"]["loss"], first["dpo_teacher"]["loss"]),
        "lssd_kl": first["lssd"]["kl"],
        "lssd_lora_kl": first["lssd_lora"]["kl"],
    }
    out["ok"] = (
        out["lssd_ce_vs_cpt_ce"] <= 1e-5
        and out["lssd_lora_ce_vs_cpt_lora_ce"] <= 1e-5
        and out["dpo_cached_vs_dpo_teacher"] <= 1e-4
        and out["lssd_kl"] > 0
        and out["lssd_lora_kl"] > 0
    )
    return out


def ratio_checks(timing: dict[str, Any], flops: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Every ratio of `RATIOS` from the medians and the bests, with its FLOP expectation."""
    checks = {}
    for name, (num, den, bound) in RATIOS.items():
        c = checks[name] = time_ratio(timing, flops, num, den)
        c["bound"] = bound
        c["ok"] = None if bound is None else (c["median"] <= bound and c["best"] <= bound)
    return checks


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def memory_checks(memory: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`lssd_lora ≤ 1.1 × cpt_lora` on peak RSS and peak live tensors; the other pairs' ratios."""
    out: dict[str, Any] = {}
    for what, key in (("rss", "peak_rss"), ("live", "peak_live")):
        m = {v: memory[v][key] for v in VARIANTS}
        teacher = memory["lssd"]["teacher_bytes"]
        out[what] = {
            "lssd_lora": m["lssd_lora"],
            "cpt_lora": m["cpt_lora"],
            "bound": 1.1 * m["cpt_lora"],
            "ratio": _ratio(m["lssd_lora"], m["cpt_lora"]),
            "ok": m["lssd_lora"] <= 1.1 * m["cpt_lora"],
            "lssd_vs_cpt": _ratio(m["lssd"], m["cpt"]),
            "lssd_vs_cpt_plus_teacher": _ratio(m["lssd"], m["cpt"] + teacher),
            "dpo_cached_vs_sft": _ratio(m["dpo_cached"], m["sft"]),
            "dpo_teacher_vs_sft": _ratio(m["dpo_teacher"], m["sft"]),
        }
    out["ok"] = out["rss"]["ok"] and out["live"]["ok"]
    return out


def summarize(report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The markdown tables and the checks of a finished run."""
    tokens, timing, flops = report["tokens"], report["timing"], report["flops"]
    first = report["first_step"]
    r, p = tokens["rows"], tokens["pairs"]
    lines = [
        f"### Stage 1: {r['tensor'][0]}×{r['tensor'][1]} packed rows ({r['targets']} targets); "
        f"stage 2: {p['pairs']} pairs, {p['tensor'][0]}×{p['tensor'][1]} rows ({p['tokens']} "
        f"tokens, {p['targets']} response targets)",
        "",
        "| variant | step ms median (best) | steps/s | tokens/s | GFLOP/step | first objective | "
        "CE | KL |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        t, f = timing[v], first[v]
        count = r["tokens"] if v in STAGE1 else p["tokens"]
        kl = f"{f['kl']:.5f}" if "kl" in f else "—"
        ce = f"{f['ce']:.5f}" if "ce" in f else "—"
        lines.append(
            f"| {v} | {t['median'] * 1e3:.1f} ({t['best'] * 1e3:.1f}) | {1 / t['median']:.2f} | "
            f"{count / t['median']:,.0f} | {flops[v] / 1e9:.2f} | {f['loss']:.5f} | {ce} | {kl} |"
        )
    checks: dict[str, Any] = ratio_checks(timing, flops)
    lines += [
        "",
        "| ratio | median | best | FLOP expectation | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, (num, den, bound) in RATIOS.items():
        c = checks[name]
        target = "for information" if bound is None else f"≤ {bound}: {verdict(c['ok'])}"
        lines.append(
            f"| {num} ÷ {den} | {c['median']:.2f} | {c['best']:.2f} | "
            f"{c['flop_expectation']:.2f} | {target} |"
        )
    lines.append("")
    memory = report["memory"]
    if memory_ok(memory, VARIANTS):
        lines += memory_table(memory, VARIANTS)
        checks["memory"] = memory_checks(memory)
        lines.append("")
        for what, label in (("rss", "peak RSS"), ("live", "peak live tensors")):
            c = checks["memory"][what]
            lines.append(
                f"- {TARGETS['memory']} ({label}): lssd_lora {_mib(c['lssd_lora'])} ≤ 1.1 × "
                f"cpt_lora {_mib(c['cpt_lora'])} = {_mib(c['bound'])} MiB (ratio {c['ratio']:.2f}) "
                f"→ {verdict(c['ok'])}; for information lssd ÷ cpt {c['lssd_vs_cpt']:.2f}, "
                f"lssd ÷ (cpt + teacher weights) {c['lssd_vs_cpt_plus_teacher']:.2f}, "
                f"dpo_cached ÷ sft {c['dpo_cached_vs_sft']:.2f}, "
                f"dpo_teacher ÷ sft {c['dpo_teacher_vs_sft']:.2f}"
            )
    else:
        checks["memory"] = {"ok": False, "error": {v: memory.get(v) for v in VARIANTS}}
        lines.append(f"- memory: a worker failed: {checks['memory']['error']}")

    watch, n = report["vocab_watch"], r["targets"]
    checks["no_vocab_tensor"], line = vocab_check(
        TARGETS["no_vocab_tensor"], [watch[v] for v in LSSD], n, report["settings"]["chunk_size"]
    )
    lines.append(line)
    lines += vocab_info_lines(watch, [v for v in watch if v not in LSSD])
    lines += [
        ratio_line(TARGETS[name], checks[name]) for name in ("lssd_vs_cpt", "dpo_cached_vs_sft")
    ]
    cost, t = report["lssd_cost"], report["timing"]
    med = {k: v["median"] * 1e3 for k, v in cost["timing"].items()}
    predicted = (
        t["cpt"]["median"] * 1e3 + med["teacher_forward"] + med["lssd_loss"] - med["ce_loss"]
    )
    lines.append(
        f"- for information, where LSSD's extra time goes (medians, timed the same way): the "
        f"teacher's forward {med['teacher_forward']:.1f} ms ({cost['teacher_gflop']:.2f} GFLOP); "
        f"the fused loss alone on {n} targets, CE {med['ce_loss']:.1f} ms → CE + LSSD "
        f"{med['lssd_loss']:.1f} ms (× {med['lssd_loss'] / med['ce_loss']:.2f}; its GEMMs × 4/3, "
        f"the rest is the row step: teacher softmax, swap, KL and its gradient, outside the FLOP "
        f"model); cpt + teacher + the loss's difference = {predicted:.1f} ms, lssd measured "
        f"{t['lssd']['median'] * 1e3:.1f} ms"
    )
    c = report["consistency"]
    checks["first_step"] = c
    lines.append(
        f"- {TARGETS['first_step']}: CE relative differences {c['lssd_ce_vs_cpt_ce']:.1e} (lssd), "
        f"{c['lssd_lora_ce_vs_cpt_lora_ce']:.1e} (lssd_lora); KL {c['lssd_kl']:.2e}, "
        f"{c['lssd_lora_kl']:.2e}; DPO losses {c['dpo_cached_vs_dpo_teacher']:.1e} → "
        f"{verdict(c['ok'])}"
    )
    return "\n".join(lines), checks


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 rows, 8 pairs, fewer steps")
    add_common_arguments(parser)
    parser.add_argument("--rows", type=int, default=None, help="stage-1 rows per step (9; quick 4)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per DPO step (24; quick 8)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the *_lora variants")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's β")
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="torch seed before each first step")
    parser.add_argument("--jobs", type=int, default=2, help="memory workers at a time")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    return quick_defaults(args, (("rows", 9, 4), ("pairs", 24, 8), *RUN_DEFAULTS))


def load_data(args, workdir: Path) -> tuple[list[str], list[dict[str, Any]], str]:
    """(stage-1 texts, preference records, tokenizer) of `--documents`: enough texts for `--rows`
    rows (≈ 2 documents a row; three a row are read), twice `--pairs` records (some may be
    dropped)."""
    n_texts = 3 * args.rows * max(1, args.max_length // 256) + 2
    if args.documents == "world":
        records, tokenizer = world_records("domain_documents", n_texts, args.world_cache_dir)
        pairs, _ = world_records("preference_pairs", 2 * args.pairs, args.world_cache_dir)
        texts = [record["text"] for record in records]
    else:
        texts, pairs = synthetic_texts(n_texts), synthetic_pairs(2 * args.pairs)
        tokenizer = synthetic_tokenizer(workdir)
    return texts, pairs, tokenizer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(run_worker, args.worker)

    threads, env, log, started = start(args)
    with tempfile.TemporaryDirectory(prefix="bench_mix_cpt-") as tmp:
        workdir = Path(tmp)
        texts, pairs, tokenizer = load_data(args, workdir)
        tokenizer, model_config = model_source(args, tokenizer)
        settings = run_settings(
            Settings, args, tokenizer, model_config, threads, lora_r=args.lora_r, beta=args.beta
        )
        batches = build_batches(texts, pairs, tokenizer, args, workdir)
        log(f"documents ({args.documents}) and batches: {json.dumps(batches['tokens'])}")
        built = {v: build_variant(v, settings, batches) for v in VARIANTS}
        parts: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
        steps = {v: make_step(*built[v], batch_of(v, batches), parts[v]) for v in VARIANTS}
        shape = model_shape(built["lssd"][0])
        lora_shape = model_shape(built["lssd_lora"][0])
        flops = expected_flops(batches, lora_shape)
        gflops = {v: round(f / 1e9, 3) for v, f in flops.items()}
        log(f"model: {json.dumps(shape)}; LoRA: {json.dumps(lora_shape)}")
        log(f"GFLOP per step: {json.dumps(gflops)}")

        timing = {v: Timing() for v in VARIANTS}
        first = first_steps(steps, seed=args.seed)  # the same student weights: compare the losses
        first_parts = {v: dict(parts[v]) for v in VARIANTS}
        checked = consistency(first_parts)
        log(f"first step: {json.dumps(first_parts)}; {json.dumps(checked)}")
        warm_up(steps, timing, first, args.warmup)
        round_robin(steps, timing, args.repeats, args.steps, log)

        cost_steps = lssd_cost_steps(built["lssd"][0], batches["rows"], shape)
        cost = {k: Timing() for k in cost_steps}
        warm_up(cost_steps, cost, first_steps(cost_steps), args.warmup)
        round_robin(cost_steps, cost, args.repeats, args.steps, log)
        teacher_gflop = forward_flops(row_widths(batches["rows"]["input_ids"]), shape) / 1e9

        watch = watch_steps(steps, shape)
        watch["lssd_default_chunk"] = watch_default_chunk(built["lssd"][0], steps["lssd"], shape)
        log(f"vocabulary watch: {json.dumps(watch)}")
        ambiguous = [
            k for k in ("rows", "dpo") if batches[k]["input_ids"].numel() == shape["vocab"]
        ]
        if ambiguous:
            log(
                f"note: the {ambiguous} batch holds as many tokens as the vocabulary: the watch "
                "also sees its [tokens, ·] activations (use other --rows / --pairs)"
            )
        del built, steps

        memory = save_and_measure(
            BENCHMARK, VARIANTS, settings, batches, workdir, args, log, args.jobs
        )

    report = {
        **base_report(BENCHMARK, argv, env, settings, args),
        "model": shape,
        "model_lora": lora_shape,
        "tokens": batches["tokens"],
        "flops": flops,
        "timing": timing_report(timing),
        "lssd_cost": {"timing": timing_report(cost), "teacher_gflop": teacher_gflop},
        "first_step": first_parts,
        "consistency": checked,
        "memory": memory,
        "vocab_watch": watch,
    }
    text, checks = summarize(report)
    report["checks"] = checks
    write_results("bench_mix_cpt", args, report, text, started)
    return 0 if checks["no_vocab_tensor"]["ok"] and checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
