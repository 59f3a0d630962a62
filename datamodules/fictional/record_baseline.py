"""Record the retention set: general questions SmolLM2-135M-Instruct answers today, with its answers.

Continual pre-training on the fictional documents must not break what the model already does. The
retention set holds general questions and simple instructions (capitals, arithmetic, short facts,
one-word instructions), each prompt in the model's chat format ending where the answer starts, and
as `answer` the model's **own** greedy output before any training: exact match on it is 100% for the
untouched model by construction, and any drop measures forgetting.

An item is kept only when the model's answer is (1) correct (it contains the expected answer), (2)
short (at most `MAX_WORDS` words, ended by EOS well within the evaluation's 16 new tokens) and (3)
stable (the same alone and batched with padding, as the evaluation batches it). Items are kept in
candidate order up to `LIMIT`. The answers come from `evaluation.knowledge.greedy_generate`, the
function evaluation itself uses, so a recorded answer is exactly what evaluation would produce.

    python -m datamodules.fictional.record_baseline            # rewrites datamodules/fictional/retention.jsonl

This script loads the model (about 30 s on 2 cores); it imports `evaluation` and
`lightning_modules`, which the datamodule package itself never does (it only reads the recorded file).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.text import normalize_answer
from datamodules.fictional.corpus import PACKAGE_DIR, chat_prompt, dumps_jsonl
from datamodules.fictional.datamodule import DEFAULT_GGUF_FILE, DEFAULT_MODEL_DIR

log = logging.getLogger(__name__)

MAX_WORDS = 8
"""Longest kept answer, in words."""

LIMIT = 20
"""Most items kept."""

CHECK_TOKENS = 16
"""Answers must end (EOS) within this many new tokens: the evaluation's default `max_new_tokens`."""


@dataclass(frozen=True)
class Candidate:
    """A general question, the start of the assistant's answer, and what a correct answer contains."""

    question: str
    answer_start: str
    expected: str
    category: str


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("What is the capital of France?", "", "Paris", "capital"),
    Candidate("What is the capital of Japan?", "The capital of Japan is", "Tokyo", "capital"),
    Candidate("What is the capital of Italy?", "The capital of Italy is", "Rome", "capital"),
    Candidate("What is the capital of Germany?", "The capital of Germany is", "Berlin", "capital"),
    Candidate("What is the capital of England?", "The capital of England is", "London", "capital"),
    Candidate("What is the capital of Egypt?", "The capital of Egypt is", "Cairo", "capital"),
    Candidate("What is the capital of Russia?", "The capital of Russia is", "Moscow", "capital"),
    Candidate("What is the capital of Greece?", "The capital of Greece is", "Athens", "capital"),
    Candidate("What is 2 + 3?", "2 + 3 =", "5", "arithmetic"),
    Candidate("What is 10 + 10?", "10 + 10 =", "20", "arithmetic"),
    Candidate("What is 3 times 4?", "3 times 4 is", "12", "arithmetic"),
    Candidate("What is 6 + 2?", "6 + 2 =", "8", "arithmetic"),
    Candidate("What is 5 times 5?", "5 times 5 is", "25", "arithmetic"),
    Candidate("What is half of 10?", "Half of 10 is", "5", "arithmetic"),
    Candidate("How many days are in a week?", "A week has", "7", "fact"),
    Candidate("How many legs does a spider have?", "A spider has", "8", "fact"),
    Candidate("How many hours are in a day?", "A day has", "24", "fact"),
    Candidate("What is the chemical symbol for water?", "", "H2O", "fact"),
    Candidate("Which planet do we live on?", "We live on", "Earth", "fact"),
    Candidate(
        "What is the chemical symbol for gold?", "The chemical symbol for gold is", "Au", "fact"
    ),
    Candidate("Say hello in French.", "Hello in French is", "Bonjour", "instruction"),
    Candidate(
        "Translate 'thank you' into Spanish.", "'Thank you' in Spanish is", "gracias", "instruction"
    ),
    Candidate("Write the number seven as a digit.", "Seven as a digit is", "7", "instruction"),
    Candidate(
        "Complete the sentence: Roses are red, violets are",
        "Roses are red, violets are",
        "blue",
        "instruction",
    ),
    Candidate("Name the colour of a ripe banana.", "A ripe banana is", "yellow", "instruction"),
    Candidate("Give the opposite of 'big'.", "The opposite of 'big' is", "small", "instruction"),
    Candidate("Write the word 'dog' in capital letters.", "", "DOG", "instruction"),
    Candidate("Repeat the word 'apple' once.", "", "apple", "instruction"),
)
"""Candidates in preference order; the kept ones become `retention.jsonl`."""


def _word_count(text: str) -> int:
    return len(text.split())


def select_items(
    candidates: Sequence[Candidate],
    batched: Sequence[str],
    alone: Sequence[str],
    longer: Sequence[str],
    *,
    limit: int = LIMIT,
) -> list[dict[str, Any]]:
    """The retention records of the candidates whose answer is correct, short, ended and stable.

    Args:
        candidates: The candidates, in preference order.
        batched: Each candidate's greedy answer, generated in padded batches.
        alone: The same, one prompt at a time.
        longer: The batched answer with more new tokens allowed: equal to `batched` only when the
            answer ended (EOS) within `CHECK_TOKENS`.
        limit: Most records kept.
    """
    records: list[dict[str, Any]] = []
    for index, (candidate, answer, single, extended) in enumerate(
        zip(candidates, batched, alone, longer, strict=True)
    ):
        reasons = []
        if normalize_answer(candidate.expected) not in normalize_answer(answer):
            reasons.append("wrong")
        if _word_count(answer) > MAX_WORDS or not normalize_answer(answer):
            reasons.append("long or empty")
        if answer != extended:
            reasons.append("not ended within the token budget")
        if answer != single:
            reasons.append("unstable under padding")
        if reasons:
            log.info("dropped %r -> %r (%s)", candidate.question, answer, ", ".join(reasons))
            continue
        if len(records) < limit:
            records.append(
                {
                    "prompt": chat_prompt(candidate.question, candidate.answer_start),
                    "answer": answer.strip(),
                    "entity": "general",
                    "attribute": f"retention_{candidate.category}",
                    "id": f"retention-{index:02d}",
                }
            )
    return records


def record_baseline(
    output: str | Path = PACKAGE_DIR / "retention.jsonl",
    *,
    model_dir: str = DEFAULT_MODEL_DIR,
    gguf_file: str = DEFAULT_GGUF_FILE,
    limit: int = LIMIT,
) -> list[dict[str, Any]]:
    """Load the model, answer every candidate greedily and write the kept items to `output`.

    Raises:
        RuntimeError: when fewer than 5 candidates survive (a different model or a broken load).
    """
    import torch

    from common.atomic import atomic_file
    from common.tokenizer import load_tokenizer
    from datamodules.fictional.gguf_tokenizer import export_gguf_tokenizer
    from evaluation.knowledge import greedy_generate
    from lightning_modules.modeling import ModelSource, build_causal_lm

    tokenizer_dir = export_gguf_tokenizer(model_dir, gguf_file, ".cache/adaptlm/tokenizers")
    tokenizer = load_tokenizer(str(tokenizer_dir), key="tokenizer")
    source = ModelSource(model_dir, gguf_file, None, 0)
    model = build_causal_lm(source, tokenizer, dtype="float32", attn_implementation="sdpa")
    model.eval()
    prompts = [chat_prompt(c.question, c.answer_start) for c in CANDIDATES]
    with torch.no_grad():
        batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=CHECK_TOKENS)
        longer = greedy_generate(model, tokenizer, prompts, max_new_tokens=2 * CHECK_TOKENS)
        alone = [
            greedy_generate(model, tokenizer, [p], max_new_tokens=CHECK_TOKENS, batch_size=1)[0]
            for p in prompts
        ]
    records = select_items(CANDIDATES, batched, alone, longer, limit=limit)
    if len(records) < 5:
        raise RuntimeError(
            f"only {len(records)} retention candidates survived; is {model_dir}/{gguf_file} "
            "SmolLM2-135M-Instruct?"
        )
    with atomic_file(output) as tmp:
        Path(tmp).write_text(dumps_jsonl(records), encoding="utf-8")
    log.info("kept %d of %d candidates in %s", len(records), len(CANDIDATES), output)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m datamodules.fictional.record_baseline [--output FILE]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(PACKAGE_DIR / "retention.jsonl"))
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--gguf_file", default=DEFAULT_GGUF_FILE)
    parser.add_argument("--limit", type=int, default=LIMIT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    record_baseline(
        args.output, model_dir=args.model_dir, gguf_file=args.gguf_file, limit=args.limit
    )


if __name__ == "__main__":
    main()
