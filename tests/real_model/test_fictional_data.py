"""The fictional corpus files: valid, deterministic, answerable from their documents, no leakage."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.text import normalize_answer
from datamodules.fictional import (
    FICTIONAL_SETS,
    RENDERED_FILES,
    FictionalDataModule,
    build_corpus,
    chat_prompt,
    export_gguf_tokenizer,
    fictional_path,
)
from datamodules.fictional.corpus import (
    CLOSING_SENTENCES,
    ENTITIES,
    PACKAGE_DIR,
    QUESTIONS,
    _facts,
    dumps_jsonl,
)
from datamodules.fictional.record_baseline import MAX_WORDS, Candidate, select_items
from datamodules.sources import SourceSpec
from evaluation.knowledge import load_qa_records, load_texts
from tests.real_model.conftest import requires_smollm2

ASSISTANT_OPEN = "<|im_start|>assistant\n"


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (PACKAGE_DIR / name).read_text().splitlines()]


def sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?=\s|$)", text))


def test_checked_in_files_equal_a_fresh_rendering() -> None:
    first, second = build_corpus(), build_corpus()
    assert first == second
    assert set(first) == set(RENDERED_FILES)
    for name, records in first.items():
        assert (PACKAGE_DIR / name).read_text(encoding="utf-8") == dumps_jsonl(records), (
            f"{name} is stale: run python -m datamodules.fictional"
        )


def test_every_file_loads_with_the_evaluation_readers() -> None:
    assert len(load_texts(PACKAGE_DIR / "documents.jsonl")) == 32
    assert len(load_texts(PACKAGE_DIR / "paraphrases.jsonl")) == 32
    assert len(load_qa_records(PACKAGE_DIR / "qa.jsonl")) == 64
    retention = load_qa_records(PACKAGE_DIR / "retention.jsonl")
    assert 5 <= len(retention) <= 20
    for name in FICTIONAL_SETS:
        assert fictional_path(name).is_file()


def test_documents_are_short_articles_with_unique_ids_and_entities() -> None:
    documents = read("documents.jsonl")
    assert len({d["id"] for d in documents}) == len(documents)
    assert all(4 <= sentences(d["text"]) <= 7 for d in documents)
    names = [entity for kind, rows in ENTITIES.items() for entity in rows]
    assert len(names) == len(documents)
    paraphrases = {p["id"]: p["text"] for p in read("paraphrases.jsonl")}
    assert set(paraphrases) == {d["id"] for d in documents}
    assert all(paraphrases[d["id"]] != d["text"] for d in documents)


def test_qa_answers_appear_in_their_document_and_its_paraphrase() -> None:
    documents = {d["id"]: d["text"] for d in read("documents.jsonl")}
    paraphrases = {p["id"]: p["text"] for p in read("paraphrases.jsonl")}
    qa = read("qa.jsonl")
    assert Counter(q["id"] for q in qa) == dict.fromkeys(documents, 2)
    for q in qa:
        text = documents[q["id"]]
        assert q["entity"] in text and q["answer"] in text, q
        assert q["answer"] in paraphrases[q["id"]], q
        # the answer opening of the prompt is stated in the document, followed by the answer
        opening = q["prompt"].rsplit(ASSISTANT_OPEN, 1)[1]
        assert f"{opening} {q['answer']}".casefold() in text.casefold(), q
        if q["position"] == "closing":
            assert text.endswith(f"{q['answer']}."), q


def test_every_document_states_every_fact_as_its_question_opens() -> None:
    """Whichever attributes are asked, each document holds each question's opening + answer."""
    documents = iter(read("documents.jsonl"))
    for kind, entities in ENTITIES.items():
        for entity in entities:
            text = next(documents)["text"].casefold()
            facts = _facts(kind, entity)
            for field, question in QUESTIONS[kind].values():
                phrase = f"{question.answer_start} {{{field}}}".format(**facts)
                assert phrase.casefold() in text, (kind, phrase)


def test_qa_prompts_end_where_the_answer_starts() -> None:
    for q in read("qa.jsonl") + read("retention.jsonl"):
        head, opening = q["prompt"].rsplit(ASSISTANT_OPEN, 1)
        question = head.split("<|im_start|>user\n", 1)[1].removesuffix("<|im_end|>\n")
        assert q["prompt"] == chat_prompt(question, opening)
        assert not q["prompt"].endswith((" ", "\n")) or opening == ""
        assert normalize_answer(q["answer"]) and len(q["answer"].split()) <= MAX_WORDS


def test_every_attribute_is_asked_and_has_a_closing_sentence() -> None:
    asked = {q["attribute"] for q in read("qa.jsonl")}
    expected = {f"{kind}_{attribute}" for kind, attrs in QUESTIONS.items() for attribute in attrs}
    assert asked == expected
    assert all(set(CLOSING_SENTENCES[kind]) == set(QUESTIONS[kind]) for kind in QUESTIONS)


def test_no_fictional_fact_leaks_into_the_retention_set() -> None:
    retention = read("retention.jsonl")
    text = " ".join(r["prompt"] + " " + r["answer"] for r in retention).casefold()
    for q in read("qa.jsonl"):
        assert q["answer"].casefold() not in text, q["answer"]
        assert q["entity"].casefold() not in text, q["entity"]
    assert len({r["id"] for r in retention}) == len(retention)
    assert all(r["entity"] == "general" for r in retention)


def test_chat_prompt_refuses_a_trailing_space() -> None:
    with pytest.raises(ValueError, match="must not end with a space"):
        chat_prompt("Where?", "It is in ")


def test_baseline_selection_keeps_only_correct_short_ended_stable_answers() -> None:
    candidates = [Candidate(f"Q{i}?", "A is", "Paris", "capital") for i in range(5)]
    batched = [" Paris.", " Rome.", " Paris, " + "very " * 10 + "nice.", " Paris.", " Paris."]
    alone = [" Paris.", " Rome.", batched[2], " Paris.", " Paris!"]
    longer = [" Paris.", " Rome.", batched[2], " Paris. And more", " Paris."]
    kept = select_items(candidates, batched, alone, longer)
    assert [r["id"] for r in kept] == ["retention-00"]
    assert kept[0]["answer"] == "Paris." and kept[0]["prompt"] == chat_prompt("Q0?", "A is")


def test_datamodule_resolves_fictional_paths_and_names_the_evaluation_sets() -> None:
    data = FictionalDataModule()
    resolved = data.resolve_source(SourceSpec(path="fictional:documents"))
    assert Path(resolved.path) == PACKAGE_DIR / "documents.jsonl" and resolved.name == "documents"
    other = SourceSpec(path="some/file.jsonl")
    assert data.resolve_source(other) is other
    with pytest.raises(ConfigError, match="unknown fictional set 'nope'"):
        data.resolve_source(SourceSpec(path="fictional:nope"))
    sets = data.evaluation_sets()
    assert set(sets["qa"]) == {"fictional", "retention"} and set(sets["perplexity"]) == {
        "paraphrases"
    }
    assert all(Path(p).is_file() for kind in sets.values() for p in kind.values())


def test_gguf_export_fails_in_one_line_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.init_args.tokenizer.*no GGUF file 'x.gguf'"):
        export_gguf_tokenizer(str(tmp_path), "x.gguf", tmp_path, key="data.init_args.tokenizer")
    with pytest.raises(ConfigError, match="not installed"):
        export_gguf_tokenizer("pkg:no_such_package_xyz", "x.gguf", tmp_path)


@requires_smollm2
def test_chat_prompt_is_the_models_own_chat_template(tmp_path: Path) -> None:
    """The hard-coded chat format equals SmolLM2's template, read from the GGUF file (~10 s)."""
    data = FictionalDataModule(tokenizer_cache_dir=str(tmp_path))
    tokenizer = data.tokenizer
    for q in read("qa.jsonl")[:3] + read("retention.jsonl")[:3]:
        head, opening = q["prompt"].rsplit(ASSISTANT_OPEN, 1)
        question = head.split("<|im_start|>user\n", 1)[1].removesuffix("<|im_end|>\n")
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        assert rendered + opening == q["prompt"]
    assert tokenizer.eos_token == "<|im_end|>"
    assert Path(data.tokenizer_path).parent == tmp_path


def test_the_corpus_files_are_package_data() -> None:
    """A non-editable install ships the JSONL files (setup.cfg `[options.package_data]`)."""
    import configparser
    import fnmatch

    from setuptools import find_namespace_packages

    repo = PACKAGE_DIR.parents[1]
    setup = configparser.ConfigParser()
    setup.read(repo / "setup.cfg")
    find = setup["options.packages.find"]
    packages = find_namespace_packages(
        str(repo), include=find["include"].split(), exclude=find.get("exclude", "").split()
    )
    assert "datamodules.fictional" in packages
    patterns = setup["options.package_data"]
    globs = [*patterns.get("datamodules.fictional", "").split(), *patterns.get("*", "").split()]
    for name in (*RENDERED_FILES, "retention.jsonl"):
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
