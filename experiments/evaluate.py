"""`python -m experiments evaluate`: knowledge evaluation of an exported model, outside training.

    python -m experiments evaluate --model runs/x/export --qa domain=qa_eval_domain.jsonl \
        --ppl general=heldout_general_documents.jsonl --output results.json

Loads a `save_pretrained` directory (as `ExportCallback` writes it, the tokenizer beside the
weights) or a GGUF file, runs `evaluation.knowledge` (the same code as `KnowledgeEvalCallback`, so
the numbers agree), logs a table and writes the metrics as JSON atomically. Bad input (a missing
model directory, a malformed JSONL file, a missing set file) is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.atomic import atomic_file
from common.errors import AdaptLMError, ConfigError
from common.paths import resolve_path
from experiments.config_errors import OneLineParser

log = logging.getLogger("experiments.evaluate")

DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments; `--help` documents every option."""
    parser = OneLineParser(
        prog="python -m experiments evaluate",
        description=(
            "Knowledge evaluation of an exported model: greedy exact match on QA sets (overall "
            "and per attribute) and perplexity on text sets, the same computation as "
            "KnowledgeEvalCallback during training."
        ),
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="model directory written by save_pretrained (e.g. by ExportCallback), or the "
        "directory holding --gguf_file",
    )
    parser.add_argument(
        "--gguf_file",
        default=None,
        metavar="F",
        help="GGUF file inside --model to load the weights (and by default the tokenizer) from",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="tokenizer directory; default: the --model directory (the tokenizer saved beside "
        "the weights)",
    )
    parser.add_argument(
        "--qa",
        action="append",
        default=[],
        metavar="NAME=FILE.jsonl",
        help='a QA set of {"prompt", "answer", "entity", "attribute"} JSONL records, scored by '
        "greedy exact match; repeat for several sets",
    )
    parser.add_argument(
        "--ppl",
        action="append",
        default=[],
        metavar="NAME=FILE.jsonl",
        help='a text set of {"text"} JSONL records, scored by perplexity (EOS appended to every '
        "document); repeat for several sets",
    )
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=16,
        metavar="N",
        help="the most tokens generated per answer (default: %(default)s)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=32,
        metavar="N",
        help="prompts (generation) or windows (perplexity) per forward batch (default: %(default)s)",
    )
    parser.add_argument(
        "--max_length",
        type=int,
        default=None,
        metavar="N",
        help="longest perplexity window in tokens (longer documents are scored in windows); "
        "default: the model's max_position_embeddings",
    )
    parser.add_argument(
        "--max_qa_samples",
        type=int,
        default=None,
        metavar="N",
        help="evaluate at most N questions per QA set (a fixed random subset, seed 0, as the "
        "callback's max_qa_samples); default: all",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype to load the weights in (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--output",
        default=None,
        metavar="results.json",
        help="write settings, metrics and counts here as JSON (atomically); default: only log",
    )
    return parser


def parse_sets(values: Sequence[str], option: str) -> dict[str, Path]:
    """`NAME=FILE` arguments as `{name: path}`; malformed or repeated names raise `ConfigError`."""
    sets: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(option, f"expected NAME=FILE.jsonl, got {value!r}")
        if name in sets:
            raise ConfigError(option, f"set name {name!r} is given twice")
        sets[name] = Path(path)
    return sets


def _check_positive(args: argparse.Namespace) -> None:
    for option, minimum in (
        ("max_new_tokens", 1),
        ("batch_size", 1),
        ("max_length", 2),
        ("max_qa_samples", 1),
    ):
        value = getattr(args, option)
        if value is not None and value < minimum:
            raise ConfigError(f"--{option}", f"must be at least {minimum}, got {value}")


def load_model(path: str, *, gguf_file: str | None, dtype: str, device: str) -> Any:
    """An exported causal LM in eval mode on `device`; one `ConfigError` line when it cannot load."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(resolve_path(path, key="--model")).expanduser()
    if not directory.is_dir():
        raise ConfigError("--model", f"no such model directory: {path}")
    if gguf_file is not None and not (directory / gguf_file).is_file():
        raise ConfigError("--gguf_file", f"no file {gguf_file!r} in {path}")
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError("--model", f"cannot load a causal LM from {path}: {first}") from None
    return model.to(device).eval()


def _table(metrics: dict[str, float], counts: dict[str, int]) -> list[str]:
    """Human-readable lines: per QA set its exact match (and per attribute), per text set its
    perplexity."""
    lines = []
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[1] == "qa_em" and len(parts) == 3:
            lines.append(
                f"qa   {parts[2]:<24} exact match {value:.4f}  (n={counts[f'qa/{parts[2]}']})"
            )
        elif parts[1] == "qa_em":
            lines.append(f"       {'/'.join(parts[3:]):<22} exact match {value:.4f}")
        elif parts[1] == "ppl":
            tokens = counts[f"ppl_tokens/{parts[2]}"]
            lines.append(f"ppl  {parts[2]:<24} perplexity  {value:.4f}  (tokens={tokens})")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as `args` say; return the results written to `--output`."""
    import torch

    from common.tokenizer import load_tokenizer
    from evaluation.knowledge import evaluate_knowledge, load_qa_records, load_texts, subsample

    _check_positive(args)
    qa_paths = parse_sets(args.qa, "--qa")
    text_paths = parse_sets(args.ppl, "--ppl")
    if not qa_paths and not text_paths:
        raise ConfigError("--qa", "give at least one --qa or --ppl set: nothing to evaluate")
    # Read every set before loading the model: a bad file fails in a second.
    qa_sets = {
        name: subsample(load_qa_records(path), args.max_qa_samples, seed=0)
        for name, path in qa_paths.items()
    }
    text_sets = {name: load_texts(path) for name, path in text_paths.items()}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=device)
    if args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer, key="--tokenizer")
    else:
        tokenizer = load_tokenizer(args.model, key="--model", gguf_file=args.gguf_file)
    max_length = args.max_length or getattr(model.config, "max_position_embeddings", None)
    if max_length is None:
        raise ConfigError("--max_length", "the model config has no max_position_embeddings; set it")
    metrics, counts = evaluate_knowledge(
        model,
        tokenizer,
        qa_sets,
        text_sets,
        max_length=max_length,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    for line in _table(metrics, counts):
        log.info("%s", line)
    results = {
        "model": str(args.model),
        "gguf_file": args.gguf_file,
        "tokenizer": str(args.tokenizer or args.model),
        "qa_sets": {name: str(path) for name, path in qa_paths.items()},
        "perplexity_sets": {name: str(path) for name, path in text_paths.items()},
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "max_length": max_length,
            "max_qa_samples": args.max_qa_samples,
            "dtype": args.dtype,
            "device": device,
        },
        "metrics": metrics,
        "counts": counts,
    }
    if args.output:
        with atomic_file(args.output) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.output)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point (`python -m experiments evaluate ...`); user errors log one line, exit 2."""
    logging.basicConfig(
        level=os.environ.get("ADAPTLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except AdaptLMError as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
