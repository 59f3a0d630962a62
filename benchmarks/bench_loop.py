"""Training-loop overhead: `CausalLMModule` under `Trainer.fit` vs a plain PyTorch loop, side by side.

Both train the same model (same initial weights) on the same batches (the datamodule's packed rows),
with AdamW, for the same number of steps; the first `--warmup` steps of each are not timed. The plain
loop is what a user would write by hand: `model(**batch).loss.backward(); opt.step(); opt.zero_grad()`
(transformers' own loss over the full logits). Repeats alternate the two to share machine noise.

    python -m benchmarks.bench_loop              # ≈ 2–3 min on 2 cores
    python -m benchmarks.bench_loop --quick      # a smaller check

Prints tokens/s of each and the ratio `fit ÷ plain` (the target is ≥ 0.95), from the median and
from the best run of each (the best is the less noisy figure on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

log = logging.getLogger("bench_loop")


def make_corpus(root: Path, n_docs: int) -> Path:
    words = [
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
    lines = []
    for i in range(n_docs):
        n = 40 + (i * 37) % 200
        lines.append(
            json.dumps({"text": " ".join(words[(i + j * 7) % len(words)] for j in range(n))})
        )
    path = root / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_tokenizer(root: Path, corpus: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    tok.train_from_iterator(
        texts,
        trainer=trainers.BpeTrainer(
            vocab_size=2048,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    out = root / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return out


class StepTimer(pl.Callback):
    """Wall time from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def run_fit(model_config: dict, tokenizer: Path, corpus: Path, cache: Path, args) -> float:
    """Seconds of the timed steps under `Trainer.fit`."""
    from datamodules import PretrainingDataModule, SourceSpec
    from lightning_modules import CausalLMModule

    data = PretrainingDataModule(
        tokenizer=str(tokenizer),
        train_sources=[SourceSpec(path=str(corpus))],
        max_length=args.length,
        micro_batch_size=args.batch,
        cache_dir=str(cache),
    )
    module = CausalLMModule(
        model_config=model_config,
        tokenizer=str(tokenizer),
        max_length=args.length,
        attn_implementation="sdpa",
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4),
    )
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, data)
    return timer.end - timer.start


def run_plain(model_config: dict, tokenizer: Path, corpus: Path, cache: Path, args) -> float:
    """Seconds of the timed steps of a hand-written loop on the same batches."""
    from datamodules import PretrainingDataModule, SourceSpec
    from lightning_modules.modeling import ModelSource, build_causal_lm

    data = PretrainingDataModule(
        tokenizer=str(tokenizer),
        train_sources=[SourceSpec(path=str(corpus))],
        max_length=args.length,
        micro_batch_size=args.batch,
        cache_dir=str(cache),
    )
    data.prepare_data()
    data.setup("fit")
    model = build_causal_lm(
        ModelSource(config=model_config), data.tokenizer, attn_implementation="sdpa"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(data.train_dataloader())
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        batch = next(batches)
        loss = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and a smaller model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    hidden = 128 if args.quick else 256
    if args.quick:
        args.steps, args.repeats = 8, 2
    model_config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": args.length,
    }
    tokens = args.steps * args.batch * args.length
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = make_corpus(root, 2000)
        tokenizer = train_tokenizer(root, corpus)
        cache = root / "stores"
        fit_times, plain_times = [], []
        for _ in range(args.repeats):
            plain_times.append(run_plain(model_config, tokenizer, corpus, cache, args))
            fit_times.append(run_fit(model_config, tokenizer, corpus, cache, args))
    print(f"model: llama hidden={hidden} layers=4 vocab=2048; batch {args.batch} x {args.length}")
    print(f"steps timed: {args.steps} (after {args.warmup} warm-up), repeats: {args.repeats}")
    for label, pick in (("median", statistics.median), ("best", min)):
        fit_tps, plain_tps = tokens / pick(fit_times), tokens / pick(plain_times)
        print(
            f"{label:>6}: plain PyTorch loop {plain_tps:8.0f} tokens/s, Trainer.fit "
            f"{fit_tps:8.0f} tokens/s, ratio fit / plain {fit_tps / plain_tps:.3f} (target >= 0.95)"
        )
    print(
        f"runs (s): plain {[round(t, 2) for t in plain_times]}, fit {[round(t, 2) for t in fit_times]}"
    )


if __name__ == "__main__":
    main()
