"""The method test matrix: every entry of `METHODS` gets every test in `tests/methods/test_matrix.py`.

A new method adds ONE line to `METHODS`: its name and the minimal `model:` YAML of its module (and a
`data:` YAML when the shared small pre-training data does not fit it). Seeds are fixed; nothing here
uses `hash()` of strings, which changes per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from tests.helpers import TINY_LLAMA

REPO = Path(__file__).resolve().parents[2]

_TINY = json.dumps(TINY_LLAMA)


@dataclass(frozen=True)
class MethodCase:
    """One row of the matrix.

    Args:
        name: Test id.
        model_yaml: The `model:` block (class_path and init_args) of a minimal run.
        data_yaml: The `data:` block, or None for the shared small pre-training data
            (`{tokenizer}`, `{train}` and `{cache}` are filled in).
        has_teacher: Whether the module builds a teacher (checked to stay out of checkpoints).
        distributed: Whether the two-process (DDP, FSDP2) equalities run for this case. Off only
            for a case whose module and sampler another case already runs distributed (each
            costs about a minute of CI).
    """

    name: str
    model_yaml: str
    data_yaml: str | None = None
    has_teacher: bool = False
    distributed: bool = True


def causal_lm(init_args: str = "") -> str:
    return (
        "model:\n  class_path: lightning_modules.CausalLMModule\n  init_args:\n"
        f"    model_config: {_TINY}\n    attn_implementation: sdpa\n{init_args}"
    )


# DiSC on the shared corpus, whose documents are one sentence each: every word is a "sentence" here,
# so a document splits into many one-word targets (words of one token are skipped, as DiSC does).
SPLIT_CONTEXT_DATA = """\
data:
  class_path: datamodules.split_context.SplitContextDataModule
  init_args:
    tokenizer: {tokenizer}
    train_sources: [{{path: {train}}}]
    max_length: 64
    micro_batch_size: 4
    num_splits: 5
    sentence_pattern: '\\s+'
    seed: 3
    cache_dir: {cache}
"""


# A ChatML-like template (the tiny tokenizer has none); `{{`/`}}` survive the YAML's `.format`.
CHATML = (
    "{{% for m in messages %}}<|im_start|>{{{{ m['role'] }}}}\n{{{{ m['content'] }}}}<|im_end|>\n"
    "{{% endfor %}}{{% if add_generation_prompt %}}<|im_start|>assistant\n{{% endif %}}"
)

# Two sources over the shared corpus (rows hold one source each): for per-source settings.
TWO_SOURCE_DATA = """\
data:
  class_path: datamodules.PretrainingDataModule
  init_args:
    tokenizer: {tokenizer}
    train_sources:
      - {{path: {train}, name: domain, ratio: 0.5}}
      - {{path: {train}, name: general, ratio: 0.5}}
    max_length: 32
    micro_batch_size: 4
    seed: 3
    cache_dir: {cache}
"""

# TRAIT's staged data over two sources: stage 1 (2 steps) on the first only, stage 2 mixes both.
STAGED_DATA = """\
data:
  class_path: datamodules.PretrainingDataModule
  init_args:
    tokenizer: {tokenizer}
    train_sources:
      - {{path: {train}, name: domain}}
      - {{path: {train}, name: synthetic}}
    rows_per_epoch: 8
    stages:
      - {{name: knowledge, ratios: [1.0, 0.0], steps: 2}}
      - {{name: synthetic, ratios: [0.25, 0.75]}}
    max_length: 32
    micro_batch_size: 4
    seed: 3
    cache_dir: {cache}
"""


METHODS: list[MethodCase] = [
    MethodCase("causal_lm", causal_lm()),
    MethodCase(
        "causal_lm+frozen_teacher",
        causal_lm(
            "    teacher: {kind: frozen}\n"
            "    loss: {ce_weight: 1.0, kl_weight: 0.5, temperature: 2.0, "
            "scale_by_temperature_squared: true}\n"
        ),
        has_teacher=True,
    ),
    MethodCase(
        "causal_lm+lora+adapters_disabled_teacher",
        causal_lm(
            "    lora: {r: 4, alpha: 8, dropout: 0.0}\n"
            "    teacher: {kind: adapters_disabled}\n"
            "    loss: {ce_weight: 1.0, kl_weight: 1.0, divergence: jsd, beta: 0.5}\n"
        ),
        has_teacher=True,
    ),
    MethodCase(
        "disc",
        "model:\n  class_path: lightning_modules.DiSCModule\n  init_args:\n"
        f"    model_config: {_TINY}\n    attn_implementation: sdpa\n    temperature: 2.0\n",
        data_yaml=SPLIT_CONTEXT_DATA,
        has_teacher=True,
    ),
    MethodCase("talr", causal_lm("    min_weight: 0.01\n").replace("CausalLMModule", "TALRModule")),
    MethodCase(  # Rephrase: CE on the run's initial model's own rewrites, generated in prepare_data
        "rephrase",
        causal_lm(),
        data_yaml=(
            "data:\n  class_path: datamodules.self_generated.SelfGeneratedDataModule\n"
            "  init_args:\n    tokenizer: {tokenizer}\n    train_sources: [{{path: {train}}}]\n"
            "    max_length: 32\n    micro_batch_size: 4\n    seed: 3\n    cache_dir: {cache}\n"
            "    generation_cache_dir: {cache}/generations\n"
            "    generation: {{prompt: rephrase, max_new_tokens: 12}}\n"
        ),
        distributed=False,  # CausalLMModule on the shared sampler: the causal_lm case
    ),
    MethodCase(  # CD-base: DiSC's loss, the teacher reading document + the model's continuation
        "cd_base",
        "model:\n  class_path: lightning_modules.DiSCModule\n  init_args:\n"
        f"    model_config: {_TINY}\n    attn_implementation: sdpa\n    temperature: 2.0\n",
        data_yaml=SPLIT_CONTEXT_DATA.replace(
            "SplitContextDataModule", "SelfGeneratedContextDataModule"
        ).replace(
            "    num_splits: 5\n    sentence_pattern: '\\s+'\n",
            "    generation: {{prompt: continue, max_new_tokens: 6, min_new_tokens: 2}}\n"
            "    generation_cache_dir: {cache}/generations\n",
        ),
        has_teacher=True,
        distributed=False,  # DiSCModule on the split-context sampler: the disc case
    ),
    MethodCase(  # Mix-CPT stage 1: CE everywhere, LSSD (logit swap) on source "domain" only
        "mix_cpt",
        "model:\n  class_path: lightning_modules.MixCPTModule\n  init_args:\n"
        f"    model_config: {_TINY}\n    attn_implementation: sdpa\n"
        "    mode: add\n    alpha: 1.0\n    lssd_sources: [domain]\n",
        data_yaml=TWO_SOURCE_DATA,
        has_teacher=True,
    ),
    MethodCase(  # TRAIT: two stages in one run, schedule and optimizer restarted at the switch
        "trait",
        "model:\n  class_path: lightning_modules.TRAITModule\n  init_args:\n"
        f"    model_config: {_TINY}\n    attn_implementation: sdpa\n"
        "    schedule: per_stage\n    reset_optimizer: true\n",
        data_yaml=STAGED_DATA,
    ),
    MethodCase(  # SFT (Mix-CPT stage 2): two-round chats, loss on the assistant turns only
        "sft",
        causal_lm(),
        data_yaml=(
            "data:\n  class_path: datamodules.PretrainingDataModule\n  init_args:\n"
            "    tokenizer: {tokenizer}\n"
            "    train_sources:\n      - path: {chats}\n        kind: sample\n"
            "        messages_field: messages\n"
            '        chat_template: "' + CHATML.replace("\n", "\\n") + '"\n'
            "    max_length: 64\n    micro_batch_size: 4\n    seed: 3\n    cache_dir: {cache}\n"
        ),
    ),
    MethodCase(  # DPO (Mix-CPT stage 2): pairs made from the corpus, reference precomputed & cached
        "dpo",
        "model:\n  class_path: lightning_modules.DPOModule\n  init_args:\n"
        f"    model_config: {_TINY}\n    attn_implementation: sdpa\n",
        data_yaml=(
            "data:\n  class_path: tests.datamodules.test_preference.CorpusPreferenceDataModule\n"
            "  init_args:\n    tokenizer: {tokenizer}\n"
            "    train_sources: [{{path: 'corpus-pairs:{train}'}}]\n"
            "    max_length: 64\n    pad_to_max_length: true\n    micro_batch_size: 4\n"
            "    seed: 3\n    cache_dir: {cache}\n"
        ),
    ),
]

PRETRAINING_DATA = """\
data:
  class_path: datamodules.PretrainingDataModule
  init_args:
    tokenizer: {tokenizer}
    train_sources: [{{path: {train}}}]
    max_length: 32
    micro_batch_size: 4
    seed: 3
    cache_dir: {cache}
"""

WORDS = [
    "alice",
    "bram",
    "river",
    "born",
    "studied",
    "works",
    "flows",
    "city",
    "sea",
    "labs",
    "engineer",
    "physics",
]


def write_run_files(case: MethodCase, root: Path, tokenizer_dir: Path) -> list[str]:
    """Write the case's model and data YAMLs (and the shared corpus) under `root`; the `--config` args."""
    root.mkdir(parents=True, exist_ok=True)
    train = root / "train.jsonl"
    if not train.exists():
        lines = []
        for i in range(96):  # deterministic documents of varied length
            n = 6 + (i * 7) % 23
            words = [WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(n)]
            lines.append(json.dumps({"text": " ".join(words) + f" {i}."}))
        train.write_text("\n".join(lines) + "\n")
    chats = root / "chats.jsonl"
    if not chats.exists():
        records = []
        for i in range(48):  # deterministic two-round chats over the same words
            turns = []
            for r in range(2):
                ask = [WORDS[(i * 3 + r * 5 + j) % len(WORDS)] for j in range(3 + (i + r) % 4)]
                say = [WORDS[(i * 7 + r * 2 + j * 5) % len(WORDS)] for j in range(2 + i % 5)]
                turns += [
                    {"role": "user", "content": " ".join(ask) + "?"},
                    {"role": "assistant", "content": " ".join(say) + f" {i}."},
                ]
            records.append(json.dumps({"messages": turns}))
        chats.write_text("\n".join(records) + "\n")
    model = root / f"{case.name}.model.yaml"
    model.write_text(case.model_yaml)
    data = root / f"{case.name}.data.yaml"
    template = case.data_yaml or PRETRAINING_DATA
    data.write_text(
        template.format(
            tokenizer=tokenizer_dir, train=train, chats=chats, cache=root.parent / "stores"
        )
    )
    return ["--config", str(model), "--config", str(data)]


def trainer_args(out: Path, steps: int, **extra: object) -> list[str]:
    """Quiet CPU trainer arguments for `steps` optimizer steps writing under `out`."""
    args = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "default_root_dir": str(out),
        "log_every_n_steps": 1,
    }
    args.update(extra)
    return [f"--trainer.{k}={v}" for k, v in args.items()]


def recorder_overlay(out: Path, grad_steps: int = 1, checkpoint_every: int | None = None) -> Path:
    """A config overlay installing `RecordRun` (and step checkpoints named `step=N.ckpt`)."""
    callbacks = [
        {
            "class_path": "tests.methods.cases.RecordRun",
            "init_args": {"path": str(out / "record"), "grad_steps": grad_steps},
        }
    ]
    if checkpoint_every:
        callbacks.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(out / "ckpt"),
                    "every_n_train_steps": checkpoint_every,
                    "save_top_k": -1,
                    "filename": "{step}",
                },
            }
        )
    overlay = out / "recorder.yaml"
    out.mkdir(parents=True, exist_ok=True)
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return overlay


class RecordRun(pl.Callback):
    """Per micro-batch: rank, step, samples, step weight; per step (rank 0): the logged losses; for the
    first `grad_steps` steps the full gradient of every trainable parameter (gathered if sharded).

    Files: `<path>.rank<R>.jsonl` and `<path>.grads<step>.pt` (rank 0).
    """

    def __init__(self, path: str, grad_steps: int = 1) -> None:
        super().__init__()
        self.path = path
        self.grad_steps = grad_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        record = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step if last else trainer.global_step + 1,
            "batch_idx": batch_idx,
            "sample_index": batch["sample_index"].tolist(),
            "step_weight": float(batch["step_weight"]),
            "head_type": type(pl_module.model.get_output_embeddings().weight).__name__,
        }
        if last and trainer.global_rank == 0:
            record["losses"] = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")
            }
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1
        if step > self.grad_steps:
            return
        grads = {}
        for name, param in pl_module.model.named_parameters():
            if not param.requires_grad or param.grad is None:
                continue
            grad = param.grad
            if hasattr(grad, "full_tensor"):  # a DTensor shard under FSDP2: a collective
                grad = grad.full_tensor()
            grads[name] = grad.detach().cpu().clone()
        if trainer.global_rank == 0:
            torch.save(grads, f"{self.path}.grads{step}.pt")


def read_run(out: Path) -> dict[int, dict]:
    """Per optimizer step (1-based): sorted samples, step weight, rank 0's logged losses."""
    steps: dict[int, dict] = {}
    for file in sorted(out.glob("record.rank*.jsonl")):
        for line in file.read_text().splitlines():
            r = json.loads(line)
            entry = steps.setdefault(
                r["global_step"], {"samples": [], "weights": set(), "losses": None, "head": set()}
            )
            entry["head"].add(r["head_type"])
            entry["samples"] += r["sample_index"]
            entry["weights"].add(r["step_weight"])
            if "losses" in r:
                entry["losses"] = r["losses"]
    for entry in steps.values():
        entry["samples"] = sorted(entry["samples"])
    return steps


def read_grads(out: Path, step: int = 1) -> dict[str, torch.Tensor]:
    """The gradients `RecordRun` saved for `step`."""
    return torch.load(out / f"record.grads{step}.pt", weights_only=True)
