"""A tiny Llama learns the world's facts in the chat format and answers held-out phrasings."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from datamodules.world import WorldConfig, exact_match, materialize_world, tiny_model_config

from .conftest import SMALL_PARTS


def test_tiny_model_answers_heldout_questions(tmp_path: Path) -> None:
    config = WorldConfig(
        num_general_entities=6,
        num_domain_entities=2,
        attributes=["birth_city", "major", "employer"],
        vocab_size=512,
        general_qa_fraction=1.0,
        document_style="single_mention",
        **SMALL_PARTS,  # type: ignore[arg-type]
    )
    world = materialize_world(config, tmp_path)
    tokenizer = world.load_tokenizer()
    texts = [r["text"] for r in world.read_split("general_documents")]
    texts += [r["text"] for r in world.read_split("general_qa")]
    records = world.read_split("qa_eval_general")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 contended threads for a model this small
    try:
        torch.manual_seed(1)
        model = LlamaForCausalLM(LlamaConfig(**tiny_model_config(len(tokenizer))))
        batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(120):
            rows = torch.randperm(len(texts), generator=order)[:32]
            loss = model(
                input_ids=batch["input_ids"][rows],
                attention_mask=batch["attention_mask"][rows],
                labels=labels[rows],
            ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        model.eval()
        tokenizer.padding_side = "left"
        prompts = tokenizer(
            [r["prompt"] for r in records],
            padding=True,
            return_tensors="pt",
            add_special_tokens=False,
        )
        with torch.no_grad():
            out = model.generate(
                **prompts,
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
    finally:
        torch.set_num_threads(threads)
    answers = tokenizer.batch_decode(
        out[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True
    )
    accuracy = sum(exact_match(a, r["answer"]) for a, r in zip(answers, records)) / len(records)

    # The best answer that ignores who is asked about: the most common value of each attribute.
    by_attribute = Counter(r["attribute"] for r in records)
    majority = sum(
        Counter(r["answer"] for r in records if r["attribute"] == a).most_common(1)[0][1]
        for a in by_attribute
    ) / len(records)
    assert accuracy >= 0.4 and accuracy >= majority + 0.15, (accuracy, majority, answers[:6])
