"""Self-generated data: prompts, batched seeded generation, the fingerprinted cache, Rephrase data."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from common.errors import ConfigError
from datamodules.self_generated import (
    DEFAULT_PLAIN_TEMPLATE,
    SelfGeneratedDataModule,
    SelfGeneration,
    WorldSelfGeneratedDataModule,
    encode_prompts,
    generate,
    generate_cached,
    generation_fingerprint,
    prompt_text,
)
from datamodules.sources import SourceSpec
from datamodules.world.chat import CHAT_TEMPLATE, format_prompt
from lightning_modules.modeling import ModelSource
from tests.helpers import TINY_LLAMA

DOCUMENTS = [
    "Alice Varen was born in Orlin in 1987.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "The river Tal flows through three cities before it reaches the sea.",
    "She studied physics at Mereth University.",
    "Bram lives in Dunmore.",
]

SAMPLED = SelfGeneration(prompt="continue", max_new_tokens=8, seed=1, batch_size=2)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """The tiny Llama with the tiny tokenizer, saved with `save_pretrained` (a generator on disk)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = AutoConfig.for_model(
        **TINY_LLAMA,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_generator")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every model `generate_cached` loads, in order."""
    import datamodules.self_generated as module

    loads: list[Any] = []
    original = module.load_generator

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "load_generator", counting)
    return loads


def cached(tmp_path: Path, model_dir: Path, tokenizer: Any, settings=SAMPLED, docs=DOCUMENTS):
    return generate_cached(
        docs,
        settings,
        source=ModelSource(str(model_dir)),
        tokenizer=tokenizer,
        cache_dir=tmp_path / "generations",
        name="docs",
    )


# ------------------------------------------------------------------------- prompts


def test_prompts_continue_plain_rephrase_and_the_worlds_chat_format(tiny_tokenizer) -> None:
    document = DOCUMENTS[0]
    assert prompt_text(document, SAMPLED, tiny_tokenizer) == (document, False)
    rephrase = SelfGeneration(prompt="rephrase")
    assert prompt_text(document, rephrase, tiny_tokenizer) == (
        DEFAULT_PLAIN_TEMPLATE.replace("{document}", document),
        False,
    )
    assert encode_prompts([document], SAMPLED, tiny_tokenizer) == [
        tiny_tokenizer(document)["input_ids"]
    ]
    with pytest.raises(ConfigError, match=r"generation\.use_chat_template"):
        prompt_text(document, dataclasses.replace(rephrase, use_chat_template=True), tiny_tokenizer)
    # a tokenizer with the world's chat template (what the world's chat models carry)
    chat = dataclasses.replace(rephrase, instruction="Say it again: {document}")
    tiny_tokenizer.chat_template = CHAT_TEMPLATE
    try:
        text, templated = prompt_text(document, chat, tiny_tokenizer)
        assert templated and text == format_prompt(f"Say it again: {document}")
        plain = dataclasses.replace(chat, use_chat_template=False)
        assert prompt_text(document, plain, tiny_tokenizer)[1] is False
    finally:
        tiny_tokenizer.chat_template = None


def test_settings_errors_name_the_key() -> None:
    bad = [
        ({"prompt": "summarize"}, "prompt"),
        ({"prompt": None}, "prompt"),  # unset: a datamodule fills in its kind
        ({"instruction": "no placeholder"}, "instruction"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens"),
        ({"num_samples": 2, "do_sample": False}, "num_samples"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"gguf_file": "m.gguf"}, "gguf_file"),
    ]
    for kwargs, field in bad:
        with pytest.raises(ConfigError, match=rf"data\.init_args\.generation\.{field}"):
            SelfGeneration(**{"prompt": "continue", **kwargs}).validate()


# ------------------------------------------------------------------------- generation


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(
    tiny_model_dir, tiny_tokenizer
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    greedy = SelfGeneration(prompt="continue", max_new_tokens=6, do_sample=False, batch_size=8)
    prompts = encode_prompts(DOCUMENTS, greedy, tiny_tokenizer)
    assert len({len(p) for p in prompts}) > 1  # the batch is padded
    batched, stats = generate(model, tiny_tokenizer, prompts, greedy)
    alone = [generate(model, tiny_tokenizer, [p], greedy)[0][0] for p in prompts]
    assert batched == alone
    assert stats.documents == len(DOCUMENTS) and stats.overlong_prompts == 0


def test_generation_is_seeded_deterministic_and_cached(
    tiny_model_dir, tiny_tokenizer, tmp_path, count_loads, caplog
) -> None:
    state = torch.random.get_rng_state()
    first = cached(tmp_path, tiny_model_dir, tiny_tokenizer)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert len(count_loads) == 1 and not first.cached
    assert first.records and first.stats.generations == len(first.records)
    lines = [json.loads(line) for line in first.path.read_text().splitlines()]
    assert lines == [r._asdict() for r in first.records]
    assert all(set(line) == {"id", "source_index", "text"} for line in lines)
    with caplog.at_level(logging.INFO, logger="datamodules.self_generated"):
        again = cached(tmp_path, tiny_model_dir, tiny_tokenizer)
    assert len(count_loads) == 1 and again.cached  # the model was not loaded again
    assert again.records == first.records and again.stats == first.stats
    assert "reusing" in caplog.text
    fresh = cached(tmp_path / "elsewhere", tiny_model_dir, tiny_tokenizer)
    assert len(count_loads) == 2 and fresh.records == first.records  # deterministic
    other_seed = cached(
        tmp_path, tiny_model_dir, tiny_tokenizer, dataclasses.replace(SAMPLED, seed=2)
    )
    assert [r.text for r in other_seed.records] != [r.text for r in first.records]
    samples = cached(
        tmp_path, tiny_model_dir, tiny_tokenizer, dataclasses.replace(SAMPLED, num_samples=3)
    )
    by_document = Counter(r.source_index for r in samples.records)
    assert sum(by_document.values()) + samples.stats.empty == 3 * len(DOCUMENTS)
    assert all(r.id // 3 == r.source_index for r in samples.records)


def test_the_cache_follows_model_files_settings_and_documents(
    tiny_model_dir, tiny_tokenizer, tmp_path
) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    source = ModelSource(str(model_dir))

    def key(settings=SAMPLED, docs=DOCUMENTS, src=source) -> str:
        return generation_fingerprint(docs, settings, src, tiny_tokenizer)

    base = key()
    assert key() == base
    # naming the model does not matter, its files do
    assert key(dataclasses.replace(SAMPLED, model_name_or_path=str(model_dir))) == base
    for change in (
        {"seed": 2},
        {"temperature": 0.5},
        {"max_new_tokens": 9},
        {"prompt": "rephrase"},
        {"batch_size": 3},
    ):
        assert key(dataclasses.replace(SAMPLED, **change)) != base, change
    assert key(docs=DOCUMENTS[:-1]) != base
    config = json.loads((model_dir / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (model_dir / "config.json").write_text(json.dumps(config))
    changed_config = key()
    assert changed_config != base
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert key() not in (base, changed_config)
    fresh = ModelSource(config=TINY_LLAMA, init_seed=0)
    assert key(src=fresh) != key(src=dataclasses.replace(fresh, init_seed=1))


class ScriptedModel(torch.nn.Module):
    """A stand-in generator: row `r` of every batch continues with `script[r % len(script)]`."""

    def __init__(self, script: list[list[int]], pad: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.script, self.pad = script, pad

    def generate(self, input_ids, attention_mask, generation_config):
        n = generation_config.num_return_sequences
        rows = input_ids.repeat_interleave(n, dim=0)
        width = generation_config.max_new_tokens
        tails = torch.full((len(rows), width), self.pad, dtype=torch.long)
        for r in range(len(rows)):
            tokens = self.script[r % len(self.script)][:width]
            tails[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return torch.cat([rows, tails], dim=1)


def test_empty_generations_are_skipped_counted_and_logged(
    tiny_tokenizer, tmp_path, monkeypatch, caplog
) -> None:
    import datamodules.self_generated as module

    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    word = tiny_tokenizer(" Orlin", add_special_tokens=False)["input_ids"]
    space = tiny_tokenizer("   ", add_special_tokens=False)["input_ids"]
    script = [[eos], [*word, eos], [*space, eos], word * 8]  # empty, a word, blank, unfinished
    monkeypatch.setattr(module, "load_generator", lambda *a, **k: ScriptedModel(script, pad))
    settings = dataclasses.replace(SAMPLED, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="datamodules.self_generated"):
        result = generate_cached(
            DOCUMENTS[:4],
            settings,
            source=ModelSource(config=TINY_LLAMA),
            tokenizer=tiny_tokenizer,
            cache_dir=tmp_path,
        )
    stats = result.stats
    assert (stats.empty, stats.generations, stats.unfinished) == (2, 2, 1)
    assert all(r.text.strip() == r.text and r.text for r in result.records)
    assert "skipped 2 of 4 generations that are empty" in caplog.text
    # a prompt that fills the model's context is skipped and counted
    scripted = ScriptedModel(script, pad)
    texts, counts = generate(scripted, tiny_tokenizer, [[5] * 64, [5] * 3], settings)
    assert texts[0] == [] and len(texts[1]) == 1 and counts.overlong_prompts == 1
    assert counts.shortened == 0  # 3 + 8 tokens fit the 64 positions


# ------------------------------------------------------------------------- Rephrase data


def rephrase_dm(tokenizer_dir: Path, docs: Path, tmp_path: Path, **kwargs: Any):
    generation = {"prompt": "rephrase", "max_new_tokens": 12, "seed": 4, "batch_size": 3}
    generation.update(kwargs.pop("generation", {}))
    args: dict[str, Any] = {
        "tokenizer": str(tokenizer_dir),
        "train_sources": [SourceSpec(path=str(docs), name="docs")],
        "max_length": 32,
        "micro_batch_size": 1,
        "cache_dir": str(tmp_path / "stores"),
        "generation_cache_dir": str(tmp_path / "generations"),
        "generation": generation,
    }
    args.update(kwargs)
    return SelfGeneratedDataModule(**args)


def test_rephrase_datamodule_trains_on_the_rewrites(
    tiny_model_dir, tiny_tokenizer_dir, tiny_tokenizer, docs_jsonl, tmp_path, count_loads
) -> None:
    dm = rephrase_dm(
        tiny_tokenizer_dir,
        docs_jsonl,
        tmp_path,
        generation={"model_name_or_path": str(tiny_model_dir)},
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(count_loads) == 1  # generated once, in prepare_data
    records = dm.generated["docs"].records
    assert list(dm.stats) == ["docs-rephrase"]
    assert dm.stats["docs-rephrase"]["documents"] == len(records)
    eos = tiny_tokenizer.eos_token_id
    expected = Counter()
    for record in records:
        expected.update([*tiny_tokenizer(record.text, add_special_tokens=False)["input_ids"], eos])
    seen: Counter = Counter()
    batches = list(dm.train_dataloader())
    for batch in batches:
        assert batch["input_ids"].shape[0] == 1
        seen.update(batch["input_ids"][batch["attention_mask"] == 1].tolist())
    assert seen == expected  # one epoch reads exactly the rewrites
    both = rephrase_dm(
        tiny_tokenizer_dir,
        docs_jsonl,
        tmp_path,
        include_originals=True,
        generation={"model_name_or_path": str(tiny_model_dir)},
    )
    both.prepare_data()
    both.setup("fit")
    assert len(count_loads) == 1  # the same generations, from the cache
    assert list(both.stats) == ["docs", "docs-rephrase"]


def test_the_generator_defaults_to_the_runs_own_model(
    tiny_tokenizer_dir, docs_jsonl, tmp_path, count_loads
) -> None:
    from common import load_tokenizer

    dm = rephrase_dm(tiny_tokenizer_dir, docs_jsonl, tmp_path)
    with pytest.raises(ConfigError, match=r"generation\.model_name_or_path"):
        dm.prepare_data()  # outside a Trainer the run's model is unknown
    source = ModelSource(config=TINY_LLAMA, init_seed=3)
    module = SimpleNamespace(
        source=source, load_tokenizer=lambda: load_tokenizer(str(tiny_tokenizer_dir), key="t")
    )
    dm.trainer = SimpleNamespace(lightning_module=module)
    dm.prepare_data()
    assert count_loads == [source] and dm.generated["docs"].records


def test_rephrase_configuration_errors_name_the_key(tiny_tokenizer_dir, docs_jsonl, tmp_path):
    with pytest.raises(ConfigError, match=r"train_sources\[0\]\.ratio"):
        rephrase_dm(
            tiny_tokenizer_dir,
            docs_jsonl,
            tmp_path,
            include_originals=True,
            train_sources=[SourceSpec(path=str(docs_jsonl), ratio=1.0)],
        )
    with pytest.raises(ConfigError, match=r"generation\.max_new_tokens"):
        rephrase_dm(tiny_tokenizer_dir, docs_jsonl, tmp_path, generation={"max_new_tokens": 0})


def test_world_variant_keeps_the_world_defaults(tiny_tokenizer_dir, tmp_path) -> None:
    dm = WorldSelfGeneratedDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        world_cache_dir=str(tmp_path / "worlds"),
        generation={"temperature": 0.7},
    )
    assert [s.path for s in dm.train_sources] == ["world:domain_documents"]
    assert dm.generation.temperature == 0.7 and dm.qa_format == "chat"
    assert dm.generation.prompt == "rephrase"  # an unset prompt is the datamodule's kind
