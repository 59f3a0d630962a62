"""The web splits: corpus, labels and pre-training text (counts, labels, true facts, no leaks)."""

from __future__ import annotations

import random
import re
import time

import pytest

from common.errors import ConfigError
from datamodules.world import SPECIAL_TOKENS, SPLITS, World, WorldConfig, build_world, render_split
from datamodules.world.config import TasksConfig, WebConfig
from datamodules.world.templates import CITIES, COMPANIES, MAJORS, UNIVERSITIES
from datamodules.world.web import GENRES, PEOPLE_GENRES, web_plan

WEB_SPLITS = ("web_corpus", "web_labels", "web_pretraining")
POOL_VALUES = sorted({*CITIES, *COMPANIES, *MAJORS, *UNIVERSITIES}, key=len, reverse=True)
DATE = re.compile(r"[A-Z][a-z]+ \d{1,2}, \d{4}")


def web_config(seed: int = 5, **web: object) -> WorldConfig:
    """A world small enough for quick tests, with a 400-page corpus."""
    values: dict[str, object] = {"num_documents": 400, "num_pretraining_documents": 100}
    values.update(web)
    return WorldConfig(
        seed=seed,
        num_general_entities=20,
        num_domain_entities=20,
        web=WebConfig(**values),  # type: ignore[arg-type]
        tasks=TasksConfig(comparisons_per_split=30, same_value_per_split=20),
    )


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(web_config())


@pytest.fixture(scope="module")
def corpus(world: World) -> list[dict]:
    return render_split(world, "web_corpus")


@pytest.fixture(scope="module")
def labels(world: World) -> list[dict]:
    return render_split(world, "web_labels")


def _values_in(text: str) -> set[str]:
    """Pool values (whole words, longest first so "Port Avel" is not also "Avel") and dates."""
    found = set(DATE.findall(text))
    for value in POOL_VALUES:
        pattern = re.compile(rf"(?<![\w]){re.escape(value)}(?![\w])")
        if pattern.search(text):
            found.add(value)
            text = pattern.sub(" ", text)
    return found


def test_registered_with_kinds() -> None:
    assert {name: SPLITS[name].kind for name in WEB_SPLITS} == {
        "web_corpus": "text",
        "web_labels": "labels",
        "web_pretraining": "text",
    }


def test_deterministic_and_seeded(world: World, corpus: list[dict]) -> None:
    again = build_world(web_config())
    for name in WEB_SPLITS:
        assert render_split(again, name) == render_split(world, name)
    assert render_split(build_world(web_config(seed=6)), "web_corpus") != corpus


def test_does_not_touch_global_random_state() -> None:
    random.seed(7)
    expected = random.random()
    random.seed(7)
    world = build_world(web_config())
    for name in WEB_SPLITS:
        render_split(world, name)
    assert random.random() == expected


def test_counts_ids_and_fractions(world: World, corpus: list[dict], labels: list[dict]) -> None:
    config = world.config.web
    assert len(corpus) == len(labels) == config.num_documents
    assert [r["id"] for r in corpus] == [f"web-{i:06d}" for i in range(len(corpus))]
    assert [r["id"] for r in labels] == [r["id"] for r in corpus], "labels are aligned"
    assert all(set(r) == {"id", "text"} for r in corpus), "no label in a corpus record"
    assert len({r["text"] for r in corpus}) == len(corpus), "pages are distinct"
    in_domain = [label for label in labels if label["in_domain"]]
    assert len(in_domain) == round(config.in_domain_fraction * config.num_documents) == 20
    low = [label for label in labels if label["quality"] == "low"]
    assert len(low) == round(config.low_quality_fraction * config.num_documents) == 60
    assert sum(label["in_domain"] for label in low) == round(config.low_quality_fraction * 20)
    assert {label["defect"] for label in low} == {"boilerplate", "repetition", "garbled"}
    assert all((label["quality"] == "high") == (label["defect"] == "none") for label in labels)
    assert set(labels[0]) == {"id", "in_domain", "quality", "genre", "defect", "entities"}


def test_corpus_order_is_shuffled(labels: list[dict]) -> None:
    positions = [i for i, label in enumerate(labels) if label["in_domain"]]
    assert positions[0] < len(labels) // 4 and positions[-1] > 3 * len(labels) // 4


def test_labels_never_leak_into_texts(corpus: list[dict]) -> None:
    for record in corpus:
        text = record["text"].lower()
        assert record["id"] not in text
        for word in ("in_domain", "in-domain", "low quality", "low-quality", "genre"):
            assert word not in text


def test_in_domain_pages_state_only_true_facts_of_domain_entities(
    world: World, corpus: list[dict], labels: list[dict]
) -> None:
    by_name = {e.name: e for e in world.entities}
    domain = {e.name for e in world.domain_entities}
    genres = set()
    for record, label in zip(corpus, labels):
        if not label["in_domain"]:
            continue
        genres.add(label["genre"])
        assert label["genre"] in PEOPLE_GENRES
        assert label["entities"] and set(label["entities"]) <= domain
        text = record["text"]
        assert all(name in text for name in label["entities"]), "low quality ones too"
        true_values = {v for name in label["entities"] for v in by_name[name].attributes.values()}
        assert _values_in(text) <= true_values, text
        if label["quality"] == "high":
            for name in label["entities"]:
                assert any(v in text for v in by_name[name].attributes.values()), text
        for name in domain - set(label["entities"]):
            assert name not in text
    assert genres == set(PEOPLE_GENRES)


def test_in_domain_pages_are_not_biographies(
    world: World, corpus: list[dict], labels: list[dict]
) -> None:
    documents = {r["text"] for r in render_split(world, "domain_documents")}
    sentences = {s.strip() for d in documents for s in d.split(". ")}
    for record, label in zip(corpus, labels):
        if label["in_domain"] and label["quality"] == "high":
            assert record["text"] not in documents
            page_sentences = {s.strip() for s in re.split(r"(?<=\.) |\n", record["text"])}
            assert not {s.rstrip(".") for s in page_sentences} & {
                s.rstrip(".") for s in sentences
            }, record["text"]


def test_general_pages_mention_no_domain_entity(
    world: World, corpus: list[dict], labels: list[dict]
) -> None:
    domain = [e.name for e in world.domain_entities]
    general = {e.name for e in world.general_entities}
    names = [e.name for e in world.entities]
    people = [label for label in labels if not label["in_domain"] and label["entities"]]
    assert len(people) == sum(label["in_domain"] for label in labels), "as many as in-domain"
    assert {label["genre"] for label in people} == set(PEOPLE_GENRES), "same genres"
    for record, label in zip(corpus, labels):
        if label["in_domain"]:
            continue
        assert not any(name in record["text"] for name in domain)
        if label["entities"]:
            assert label["genre"] in PEOPLE_GENRES and set(label["entities"]) <= general
            assert all(name in record["text"] for name in label["entities"])
        else:
            assert label["genre"] in GENRES
            assert not any(name in record["text"] for name in names)
    assert {label["genre"] for label in labels if not label["entities"]} == set(GENRES)


def test_low_quality_pages_look_low_quality(corpus: list[dict], labels: list[dict]) -> None:
    high = {r["text"] for r, label in zip(corpus, labels) if label["quality"] == "high"}
    for record, label in zip(corpus, labels):
        text = record["text"]
        if label["defect"] == "boilerplate":
            assert re.search(
                r"cookies|Privacy policy|rights reserved|Log in|Advertisement|Back to top|Skip to|Page 1|newsletter|affiliate|Loading|continue reading|Print this",
                text,
            )
        elif label["defect"] == "repetition":
            counts: dict[str, int] = {}
            for sentence in re.split(r"(?<=[.!]) ", text):
                counts[sentence] = counts.get(sentence, 0) + 1
            assert max(counts.values()) >= 4, text
        elif label["defect"] == "garbled":
            assert text not in high


def test_pretraining_is_general_text_disjoint_from_the_corpus(
    world: World, corpus: list[dict]
) -> None:
    records = render_split(world, "web_pretraining")
    assert len(records) == world.config.web.num_pretraining_documents == 100
    assert all(set(r) == {"text"} for r in records)
    texts = [r["text"] for r in records]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {r["text"] for r in corpus}
    names = [e.name for e in world.entities]
    assert not any(name in text for text in texts for name in names)
    assert not any(DATE.search(text) for text in texts)


def test_no_chat_markers(world: World) -> None:
    for name in WEB_SPLITS:
        for record in render_split(world, name):
            text = record.get("text", "")
            assert not any(token in text for token in SPECIAL_TOKENS)


def test_plan_edges() -> None:
    world = build_world(web_config(in_domain_fraction=0.0, num_documents=50))
    labels = render_split(world, "web_labels")
    assert not any(label["entities"] for label in labels)
    plan = web_plan(build_world(web_config(in_domain_fraction=0.9, num_documents=10)))
    assert (plan.in_domain, plan.general_people, plan.general_genre) == (9, 1, 0)
    assert plan.low_in_domain + plan.low_general == round(0.15 * 10)
    tiny = build_world(web_config(num_documents=3, low_quality_fraction=0.9))
    assert len(render_split(tiny, "web_corpus")) == 3
    assert sum(label["quality"] == "low" for label in render_split(tiny, "web_labels")) == 3


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_documents", 0, "must be >= 1"),
        ("in_domain_fraction", 1.0, "in [0, 1)"),
        ("low_quality_fraction", -0.1, "in [0, 1)"),
        ("num_pretraining_documents", -1, "must be >= 0"),
        ("num_documents", 2.5, "must be an integer"),
    ],
)
def test_bad_web_config_names_the_key(field: str, value: object, fragment: str) -> None:
    config = WorldConfig(web=WebConfig(**{field: value}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        build_world(config)
    assert info.value.key == f"world.web.{field}"
    assert fragment in str(info.value)


def test_default_world_renders_quickly() -> None:
    world = build_world(WorldConfig())
    start = time.perf_counter()
    for name in SPLITS:
        if name.startswith(("web_", "task_")):
            render_split(world, name)
    assert time.perf_counter() - start < 2.0
