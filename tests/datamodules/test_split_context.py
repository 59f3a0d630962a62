"""DiSC's split-context data: sentence splitting, the draw rule, skipping, packing, sampler, resume."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from common.errors import ConfigError
from datamodules.sources import SourceSpec
from datamodules.split_context import (
    SplitContextCollator,
    SplitContextDataModule,
    SplitContextDataset,
    SplitContextLoader,
    SplitContextSampler,
    WorldSplitContextDataModule,
    document_splits,
    draw_rng,
    draw_sentence_indices,
    draw_token_cuts,
    make_sentence_splitter,
    middle_sentence_index,
    pack_documents,
    split_document,
    split_sentences,
    target_spans,
    uniform_sentence_indices,
)

# ------------------------------------------------------------------------- sentences


def test_regex_splitter_cuts_at_end_punctuation_and_blank_lines() -> None:
    text = (
        'Alice was born in 1987. She studied physics! Did she? "Yes." (Indeed.)\n\nA title\nwraps.'
    )
    assert split_sentences(text) == [
        "Alice was born in 1987.",
        "She studied physics!",
        "Did she?",
        '"Yes."',
        "(Indeed.)",
        "A title\nwraps.",
    ]
    assert split_sentences("It costs 3.5 units, e.g. a few. Then more.") == [
        "It costs 3.5 units, e.g. a few.",
        "Then more.",
    ]
    assert split_sentences("   ") == []
    assert split_sentences("a b c", r"\s+") == ["a", "b", "c"]
    assert make_sentence_splitter("regex", r";\s*")("one; two;three") == ["one", "two", "three"]


def test_bad_sentence_pattern_and_splitter_name_the_key() -> None:
    with pytest.raises(ConfigError, match="sentence_pattern"):
        make_sentence_splitter("regex", "(")
    with pytest.raises(ConfigError, match="sentence_splitter"):
        make_sentence_splitter("spacy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sentence_pattern"):
        make_sentence_splitter("nltk", r"\.")


@pytest.mark.skipif(importlib.util.find_spec("nltk") is not None, reason="nltk is installed")
def test_nltk_splitter_without_nltk_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"sentence_splitter.*'nltk' needs the nltk package"):
        make_sentence_splitter("nltk")


# ------------------------------------------------------------------------- the draw rule


def test_two_sentences_give_only_the_last() -> None:
    for seed in range(20):
        assert draw_sentence_indices(2, 5, draw_rng(seed, 0, 0)) == [1]


def test_more_draws_than_boundaries_take_all() -> None:
    for n in (2, 3, 5):
        for k in (n, n + 1, 9):
            assert draw_sentence_indices(n, k, draw_rng(1, 2, 3)) == list(range(1, n))


def test_draws_are_sorted_unique_contain_the_last_and_stay_in_range() -> None:
    for n in (3, 6, 20):
        for k in (1, 2, 3, 5):
            for doc in range(30):
                indices = draw_sentence_indices(n, k, draw_rng(0, 1, doc))
                assert indices == sorted(set(indices))
                assert indices[-1] == n - 1
                assert all(1 <= i <= n - 1 for i in indices)
                # k-1 distinct draws, the last may be one of them
                assert len(indices) in {min(k - 1, n - 1), min(k - 1, n - 1) + 1}
    assert draw_sentence_indices(9, 1, draw_rng(0, 0, 0)) == [8]
    assert draw_sentence_indices(1, 5, draw_rng(0, 0, 0)) == []


def test_draws_are_a_pure_function_of_seed_visit_and_document() -> None:
    def draw(seed: int, visit: int, doc: int) -> list[int]:
        return draw_sentence_indices(20, 5, draw_rng(seed, visit, doc))

    assert draw(3, 4, 5) == draw(3, 4, 5)
    assert len({tuple(draw(3, visit, 5)) for visit in range(10)}) > 1  # fresh per visit
    assert len({tuple(draw(3, 0, doc)) for doc in range(10)}) > 1
    assert len({tuple(draw(seed, 0, 5)) for seed in range(10)}) > 1
    first = split_document([[1, 2]] * 8, seed=3, visit=1, document=4)
    again = split_document([[1, 2]] * 8, seed=3, visit=1, document=4)
    assert first.splits == again.splits


def test_ablation_modes() -> None:
    assert middle_sentence_index(2) == [1] and middle_sentence_index(7) == [3]
    assert uniform_sentence_indices(11, 5) == [2, 4, 6, 8, 10]
    assert uniform_sentence_indices(3, 5) == [1, 2]
    assert uniform_sentence_indices(7, 4) == [2, 3, 4, 6]  # Python's round, ends at n-1
    lengths = [3, 4, 2, 5, 3, 4]
    offsets = np.cumsum([0, *lengths])
    uniform = {tuple(target_spans(lengths, mode="uniform", num_splits=3)) for _ in range(3)}
    assert uniform_sentence_indices(6, 3) == [2, 3, 5]
    assert uniform == {tuple((int(offsets[i]), int(offsets[i + 1])) for i in (2, 3, 5))}
    assert target_spans(lengths, mode="middle") == [(offsets[3], offsets[4])]
    for doc in range(20):
        cuts = draw_token_cuts(21, 5, draw_rng(0, 0, doc))
        assert cuts == sorted(set(cuts)) and len(cuts) == 5
        assert all(1 <= c <= 19 for c in cuts)
        spans = target_spans(lengths, mode="random_tokens", num_splits=5, rng=draw_rng(0, 0, doc))
        assert [a for a, _ in spans] == cuts
        assert [b for _, b in spans] == [*cuts[1:], 21]  # each to the next cut, the last to the end
    assert draw_token_cuts(3, 5, draw_rng(0, 0, 0)) == []
    assert draw_token_cuts(4, 5, draw_rng(0, 0, 0)) == [1, 2]
    with pytest.raises(ValueError, match="rng"):
        target_spans(lengths, mode="random")


# ------------------------------------------------------------------------- one document


def test_short_targets_are_skipped_and_counted() -> None:
    sentences = [[5, 6, 7], [8], [9, 10], [11]]
    doc = split_document(sentences, mode="uniform", num_splits=5)  # indices 1, 2, 3
    assert doc.splits == ((4, 2),)  # sentence 2: context 3 + 1 tokens, 2 tokens
    assert doc.skipped_targets == 2
    assert doc.tokens.tolist() == [5, 6, 7, 8, 9, 10]  # cut after the last kept target
    assert doc.weights == [pytest.approx(1.0)]
    none = document_splits(np.arange(5), [(1, 2), (4, 5)])
    assert none.splits == () and none.skipped_targets == 2 and len(none.tokens) == 0


def test_packing_aligns_student_positions_with_the_teacher() -> None:
    rng = np.random.default_rng(0)
    docs = [
        split_document(
            [list(rng.integers(3, 50, size=int(rng.integers(1, 9)))) for _ in range(n)],
            seed=1,
            visit=0,
            document=i,
        )
        for i, n in enumerate([2, 5, 7, 3, 1, 6])
    ]
    batch = pack_documents(docs, max_length=64, pad_token_id=0)
    assert batch["input_ids"].shape[1] <= 64 and batch["teacher_input_ids"].shape[1] <= 64
    assert batch["input_ids"].shape[0] > 1 and batch["teacher_input_ids"].shape[0] > 1
    teacher_flat = batch["teacher_input_ids"].reshape(-1)
    loss = batch["loss_weights"] > 0
    assert torch.equal(loss, batch["labels"] != IGNORE_INDEX)
    # the teacher's token at the aligned position is the student's input, its next the label
    rows = batch["teacher_rows"]
    src = torch.zeros_like(loss)
    src[:, :-1] = loss[:, 1:]  # student positions that predict a label
    assert torch.equal(teacher_flat[rows[src]], batch["input_ids"][src])
    assert torch.equal(teacher_flat[rows[src] + 1], batch["labels"][loss])
    assert torch.equal(rows[~src], torch.zeros_like(rows[~src]))
    # weights: every document with a kept split sums to 1
    kept = [d for d in docs if d.splits]
    assert float(batch["loss_weights"].double().sum()) == pytest.approx(len(kept), rel=1e-6)
    # positions restart at 0 at every target and every teacher document
    starts = int((batch["position_ids"] == 0).sum())
    assert starts >= sum(len(d.splits) for d in docs)
    assert int((batch["teacher_position_ids"] == 0).sum()) >= len(kept)
    assert int(batch["attention_mask"].sum()) == sum(n for d in docs for _, n in d.splits)
    assert int(batch["teacher_attention_mask"].sum()) == sum(len(d.tokens) for d in kept)


def test_a_batch_without_kept_splits_is_one_padding_row() -> None:
    doc = split_document([[4, 5], [6]])
    batch = SplitContextCollator(max_length=16, pad_token_id=1)(
        [{"document": doc, "sample_index": 3}]
    )
    assert batch["input_ids"].shape == (1, 8) and batch["teacher_input_ids"].shape == (1, 8)
    assert bool((batch["labels"] == IGNORE_INDEX).all())
    assert float(batch["step_weight"]) == 0.0 and int(batch["skipped_targets"]) == 1
    assert batch["sample_index"].tolist() == [3]


# ------------------------------------------------------------------------- dataset and sampler


def sentence_docs(count: int, seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        [list(rng.integers(3, 90, size=int(rng.integers(1, 6)))) for _ in range(rng.integers(2, 8))]
        for _ in range(count)
    ]


def test_epoch_weights_count_documents_with_a_kept_split() -> None:
    docs = [[[1, 2], [3]], [[1, 2], [3, 4]], [[5], [6], [7, 8, 9]]]
    dataset = SplitContextDataset(docs, num_splits=5, seed=0)
    assert dataset.document_weights(0).tolist() == [0.0, 1.0, 1.0]
    stats = dataset.epoch_stats(0)
    assert (stats.documents_without_targets, stats.skipped_targets, stats.kept_targets) == (1, 2, 2)
    assert dataset.sentences(2) == [[5], [6], [7, 8, 9]]


def test_sampler_step_weight_is_the_documents_of_the_step_and_keys_carry_the_epoch() -> None:
    dataset = SplitContextDataset(sentence_docs(24), num_splits=3, seed=5)
    sampler = SplitContextSampler(dataset, micro_batch_size=2, accumulate_grad_batches=3, seed=5)
    collate = SplitContextCollator(max_length=64, pad_token_id=0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        weights = dataset.document_weights(epoch)
        batches = list(sampler)
        assert all(key[2] == epoch for keys in batches for key in keys)
        for step in range(len(batches) // 3):
            micro = batches[step * 3 : step * 3 + 3]
            docs = [key[0] for keys in micro for key in keys]
            expected = float(weights[docs].sum())
            assert {key[1] for keys in micro for key in keys} == {expected}
            total = sum(
                float(collate([dataset[k] for k in keys])["loss_weights"].double().sum())
                for keys in micro
            )
            assert total == pytest.approx(expected, rel=1e-6)
    sampler.set_epoch(0)
    first = [dataset[k]["document"].splits for keys in sampler for k in keys]
    sampler.set_epoch(1)
    second = [dataset[k]["document"].splits for keys in sampler for k in keys]
    assert first != second


# ------------------------------------------------------------------------- the data module

TEXTS = [
    "Alice Varen was born in Orlin in 1987. She studied physics at Mereth University. "
    "She works for Kestrel Labs. Her office is in Dunmore.",
    "Bram Oster works for Kestrel Labs. He lives in Dunmore.",
    "One sentence only, so it cannot be split.",
    "The river Tal flows through three cities. It reaches the sea. Boats sail on it. "
    "Fish live in it. People swim in it in summer.",
    "   ",
    "Numbers 0 1 2 3 4 5 6 7 8 9 appear too. A. The end is near now.",
    "Question: Where was Alice Varen born? Answer: Orlin. Question: Where does Bram work? "
    "Answer: Kestrel Labs.",
]


@pytest.fixture
def docs_file(write_jsonl: Callable[..., Path]) -> Path:
    return write_jsonl("disc.jsonl", [{"text": t} for t in TEXTS])


def make_dm(tokenizer_dir: Path, path: Path, tmp_path: Path, **kw: Any) -> SplitContextDataModule:
    args: dict[str, Any] = {
        "tokenizer": str(tokenizer_dir),
        "train_sources": [SourceSpec(path=str(path), name="disc")],
        "max_length": 128,
        "micro_batch_size": 2,
        "seed": 3,
        "cache_dir": str(tmp_path / "stores"),
    }
    args.update(kw)
    return SplitContextDataModule(**args)


def test_datamodule_splits_tokenizes_and_counts(
    tiny_tokenizer_dir, tiny_tokenizer, docs_file, tmp_path
):
    dm = make_dm(tiny_tokenizer_dir, docs_file, tmp_path)
    dm.setup("fit")
    stats = dm.split_stats["disc"]
    assert (stats.documents, stats.skipped_empty, stats.unsplittable) == (6, 1, 1)
    assert stats.kept_documents == len(dm.split_dataset) == 5
    # each sentence tokenized on its own, without special tokens
    first = dm.split_dataset.sentences(0)
    expected = [
        tiny_tokenizer(s, add_special_tokens=False)["input_ids"] for s in split_sentences(TEXTS[0])
    ]
    assert first == expected and len(first) == 4
    batch = next(iter(dm.train_dataloader()))
    for key in (
        "input_ids",
        "labels",
        "position_ids",
        "attention_mask",
        "loss_weights",
        "teacher_input_ids",
        "teacher_position_ids",
        "teacher_rows",
        "sample_index",
        "step_weight",
    ):
        assert key in batch, key
    assert batch["step_weight"].dtype == torch.float64 and len(batch["sample_index"]) == 2


def test_overlong_documents_are_truncated_to_sentences_or_skipped(
    tiny_tokenizer_dir, docs_file, tmp_path
) -> None:
    truncated = make_dm(tiny_tokenizer_dir, docs_file, tmp_path, max_length=40)
    truncated.setup("fit")
    stats = truncated.split_stats["disc"]
    assert stats.overlong > 0 and stats.dropped_sentences > 0
    for d in range(len(truncated.split_dataset)):
        assert sum(truncated.split_dataset.sentence_lengths(d)) <= 40
    skipped = make_dm(
        tiny_tokenizer_dir, docs_file, tmp_path, max_length=40, overlong_policy="skip"
    )
    skipped.setup("fit")
    assert stats.kept_documents + stats.unsplittable == stats.documents
    dropped = skipped.split_stats["disc"]
    assert dropped.overlong == stats.overlong and dropped.dropped_sentences == 0
    assert dropped.kept_documents + dropped.overlong + dropped.unsplittable == dropped.documents
    assert dropped.kept_documents < stats.kept_documents


def test_random_tokens_mode_ignores_sentences(tiny_tokenizer_dir, docs_file, tmp_path) -> None:
    dm = make_dm(tiny_tokenizer_dir, docs_file, tmp_path, split_mode="random_tokens", num_splits=3)
    dm.setup("fit")
    assert dm.split_stats["disc"].unsplittable == 0  # one sentence is enough
    assert len(dm.split_dataset) == 6
    doc = dm.split_dataset.document(2, visit=0)  # the one-sentence document
    assert doc.splits and all(length >= 2 for _, length in doc.splits)


def test_configuration_errors_name_the_key(tiny_tokenizer_dir, docs_file, tmp_path) -> None:
    spec = SourceSpec(path=str(docs_file))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"split_mode": "sentences"}, "split_mode"),
        ({"num_splits": 0}, "num_splits"),
        ({"overlong_policy": "drop"}, "overlong_policy"),
        ({"train_sources": [SourceSpec(path=str(docs_file), ratio=1.0)]}, r"\[0\]\.ratio"),
        (
            {"train_sources": [SourceSpec(path=str(docs_file), loss_weighting="sample")]},
            "loss_weighting",
        ),
        ({"train_sources": [spec], "micro_batch_size": 9}, "micro_batch_size"),
    ]
    for kwargs, key in bad:
        with pytest.raises(ConfigError, match=key):
            dm = make_dm(tiny_tokenizer_dir, docs_file, tmp_path, **kwargs)
            dm.setup("fit")
            dm.train_dataloader()


def test_loader_resumes_mid_epoch_exactly(tiny_tokenizer_dir, docs_file, tmp_path) -> None:
    dm = make_dm(tiny_tokenizer_dir, docs_file, tmp_path, micro_batch_size=1)
    dm.setup("fit")

    def loader() -> SplitContextLoader:
        return SplitContextLoader(
            dm.split_dataset,
            SplitContextSampler(dm.split_dataset, micro_batch_size=1, seed=dm.seed),
            dm.collator(),
        )

    full = loader()
    full.global_sampler.set_epoch(1)
    batches = list(full)
    first = loader()
    first.global_sampler.set_epoch(1)
    it = iter(first)
    for _ in range(2):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["consumed_samples"] == 2
    resumed = loader()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.global_sampler.set_epoch(1)
    rest = list(resumed)
    assert len(rest) == len(batches) - 2
    for a, b in zip(batches[2:], rest):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_world_variant_resolves_world_paths(tiny_tokenizer_dir, docs_file, tmp_path) -> None:
    dm = WorldSplitContextDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        world_cache_dir=str(tmp_path / "worlds"),
        micro_batch_size=1,
        num_splits=3,
    )
    assert [s.path for s in dm.train_sources] == ["world:domain_documents"]
    dm._artifacts = SimpleNamespace(split_path=lambda split: docs_file)  # no world build
    resolved = dm.resolve_source(SourceSpec(path="world:domain_documents"))
    assert resolved.path == str(docs_file) and resolved.name == "domain_documents"
    assert dm.num_splits == 3 and dm.micro_batch_size == 1


# ------------------------------------------------------------------------- CD-base


def test_last_mode_targets_the_last_sentence_at_every_visit() -> None:
    lengths = [3, 4, 2, 5]
    assert target_spans(lengths, mode="last") == [(9, 14)]
    assert target_spans([6], mode="last") == []
    for visit in range(3):
        doc = split_document([[4, 5, 6], [7, 8]], mode="last", seed=visit, visit=visit)
        assert doc.splits == ((3, 2),) and doc.tokens.tolist() == [4, 5, 6, 7, 8]


T_CD = 2.0


def cd_module(tokenizer_dir: Path):
    """A built DiSC module on the tiny Llama whose student differs from its (initial) teacher."""
    from lightning_modules import DiSCModule
    from tests.helpers import TINY_LLAMA

    module = DiSCModule(
        model_config=TINY_LLAMA,
        tokenizer=str(tokenizer_dir),
        attn_implementation="sdpa",
        temperature=T_CD,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return module


def cd_dm(tokenizer_dir: Path, path: Path, tmp_path: Path, module: Any, **kw: Any):
    """CD-base data over `path`, continued by `module`'s initial model (the run's own model)."""
    from datamodules.split_context import SelfGeneratedContextDataModule

    args: dict[str, Any] = {
        "tokenizer": str(tokenizer_dir),
        "train_sources": [SourceSpec(path=str(path), name="disc")],
        "max_length": 128,
        "micro_batch_size": 2,
        "seed": 3,
        "cache_dir": str(tmp_path / "stores"),
        "generation_cache_dir": str(tmp_path / "generations"),
        "generation": {"prompt": "continue", "max_new_tokens": 10, "min_new_tokens": 3},
    }
    args.update(kw)
    dm = SelfGeneratedContextDataModule(**args)
    dm.trainer = SimpleNamespace(lightning_module=module)
    return dm


def test_self_generated_contexts_pair_each_document_with_its_continuation(
    tiny_tokenizer_dir, tiny_tokenizer, docs_file, tmp_path
) -> None:
    module = cd_module(tiny_tokenizer_dir)
    dm = cd_dm(tiny_tokenizer_dir, docs_file, tmp_path, module)
    dm.prepare_data()
    dm.setup("fit")
    records = dm.generated["disc"].records
    texts = [t.strip() for t in TEXTS if t.strip()]
    assert len(records) == len(dm.split_dataset) == dm.split_stats["disc"].kept_documents
    for d, record in enumerate(records):
        document = tiny_tokenizer(texts[record.source_index], add_special_tokens=False)
        continuation = tiny_tokenizer(record.text, add_special_tokens=False)
        pair = [document["input_ids"], continuation["input_ids"]]
        assert dm.split_dataset.sentences(d) == pair
        for visit in (0, 1):  # one fixed target: the continuation, its context the document
            splits = dm.split_dataset.document(d, visit)
            assert splits.splits == ((len(pair[0]), len(pair[1])),)
    dm.trainer = None  # the loader outside a Trainer
    batch = next(iter(dm.train_dataloader()))
    first = dm.split_dataset.document(int(batch["sample_index"][0]), 0)
    length = first.splits[0][1]
    assert batch["position_ids"][0, :length].tolist() == list(range(length))  # from 0
    assert batch["input_ids"][0, :length].tolist() == first.tokens[-length:].tolist()
    assert float(batch["step_weight"]) == 2.0  # documents of the step


def test_overlong_pairs_cut_the_continuation_or_are_skipped(
    tiny_tokenizer_dir, docs_file, tmp_path
) -> None:
    module = cd_module(tiny_tokenizer_dir)
    truncated = cd_dm(tiny_tokenizer_dir, docs_file, tmp_path, module, max_length=64)
    truncated.setup("fit")
    stats = truncated.split_stats["disc"]
    assert stats.overlong > 0 and stats.unsplittable > 0  # long documents leave no room
    for d in range(len(truncated.split_dataset)):
        lengths = truncated.split_dataset.sentence_lengths(d)
        assert sum(lengths) <= 64 and lengths[1] >= 2
    skipped = cd_dm(
        tiny_tokenizer_dir, docs_file, tmp_path, module, max_length=64, overlong_policy="skip"
    )
    skipped.setup("fit")
    dropped = skipped.split_stats["disc"]
    assert dropped.overlong == stats.overlong
    assert dropped.kept_documents + dropped.overlong + dropped.unsplittable == len(
        skipped.generated["disc"].records
    )
    assert dropped.kept_documents < stats.kept_documents


def test_cd_base_loss_equals_the_naive_reference(
    tiny_tokenizer_dir, tiny_tokenizer, docs_file, tmp_path
) -> None:
    """DiSCModule on CD-base batches equals the reference: the teacher's full logits on document +
    continuation, the student's on the continuation alone, forward KL at T times T² on the
    continuation's tokens 2..L (teacher positions c..c+L-2, student 0..L-2), mean over tokens, then
    over (document, continuation) pairs; and so do the gradients."""
    from losses import reference

    module = cd_module(tiny_tokenizer_dir)
    dm = cd_dm(tiny_tokenizer_dir, docs_file, tmp_path, module, micro_batch_size=1)
    dm.prepare_data()
    dm.setup("fit")
    dataset = dm.split_dataset
    batch = dm.collator()([dataset[i] for i in range(len(dataset))])
    assert float(batch["step_weight"]) == len(dataset)
    packed = module.compute_losses(batch)["loss"] / batch["step_weight"].float()

    texts = [t.strip() for t in TEXTS if t.strip()]
    student, teacher = module.model, module.teacher.model
    per_pair = []
    for record in dm.generated["disc"].records:
        document = tiny_tokenizer(texts[record.source_index], add_special_tokens=False)["input_ids"]
        continuation = tiny_tokenizer(record.text, add_special_tokens=False)["input_ids"]
        c, length = len(document), len(continuation)
        with torch.no_grad():
            t_logits = teacher(input_ids=torch.tensor([document + continuation])).logits[0]
        s_logits = student(input_ids=torch.tensor([continuation])).logits[0, : length - 1]
        kl = reference.token_divergence(
            s_logits, t_logits[c : c + length - 1], "forward_kl", temperature=T_CD
        )
        per_pair.append((kl * T_CD**2).mean())
    naive = torch.stack(per_pair).mean()
    assert len(per_pair) == len(dataset) and float(naive.detach()) > 1e-3
    torch.testing.assert_close(packed, naive, rtol=2e-5, atol=1e-6)

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        student.zero_grad(set_to_none=True)
        loss.backward()
        out = {n: p.grad.detach().clone() for n, p in student.named_parameters()}
        student.zero_grad(set_to_none=True)
        return out

    got, expected = grads(packed), grads(naive)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in module.teacher.parameters())


def test_world_cd_variant_fixes_the_split_and_keeps_the_world_defaults(
    tiny_tokenizer_dir, tmp_path
) -> None:
    from datamodules.split_context import WorldSelfGeneratedContextDataModule

    dm = WorldSelfGeneratedContextDataModule(
        tokenizer=str(tiny_tokenizer_dir), world_cache_dir=str(tmp_path / "worlds")
    )
    assert [s.path for s in dm.train_sources] == ["world:domain_documents"]
    assert dm.split_mode == "last" and dm.generation.prompt == "continue"
    unset = WorldSelfGeneratedContextDataModule(
        tokenizer=str(tiny_tokenizer_dir), generation={"max_new_tokens": 7}
    )
    assert unset.generation.prompt == "continue" and unset.generation.max_new_tokens == 7
