"""`build_world` and the split renderers: determinism, uniqueness, consistency, held-out splits."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from common.errors import DataError
from datamodules.world import (
    ATTRIBUTES,
    END,
    SPLITS,
    USER,
    World,
    WorldConfig,
    build_world,
    format_chat,
    format_prompt,
    render_split,
)
from datamodules.world.chat import format_plain_prompt, format_plain_qa
from datamodules.world.templates import (
    CITIES,
    COMPANIES,
    MAJORS,
    MONTHS,
    PRONOUNS,
    UNIVERSITIES,
    VALUE_WORDS,
)

from .conftest import small_config

TEXT_SPLITS = [name for name, spec in SPLITS.items() if spec.kind == "text"]
TRAIN_TEXT_SPLITS = ["general_documents", "general_qa", "domain_documents"]
DATE = re.compile(r"(?P<month>[A-Z][a-z]+) (?P<day>\d{1,2}), (?P<year>\d{4})")


def _all_records(world: World) -> dict[str, list[dict]]:
    return {name: render_split(world, name) for name in SPLITS}


def _template_regex(template: str) -> re.Pattern[str]:
    """A template as a regex matching any sentence rendered from it."""
    pattern = re.sub(r"\\\{\w+\\\}", "(.+?)", re.escape(template))
    return re.compile(pattern, re.IGNORECASE)


def _sentences(document: str) -> list[str]:
    # Values never contain a period, so every sentence ends with ". " or at the end.
    return [s if s.endswith(".") else s + "." for s in document.split(". ")]


def test_same_seed_same_world_different_seed_different() -> None:
    a, b = build_world(small_config()), build_world(small_config())
    assert [e.to_dict() for e in a.entities] == [e.to_dict() for e in b.entities]
    assert _all_records(a) == _all_records(b)
    c = build_world(small_config(seed=4))
    assert [e.name for e in c.entities] != [e.name for e in a.entities]
    assert render_split(c, "general_documents") != render_split(a, "general_documents")


def test_does_not_touch_global_random_state() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    render_split(build_world(small_config()), "general_documents")
    assert random.random() == expected


def test_names_unique_groups_disjoint_and_not_value_words(small_world: World) -> None:
    names = [e.name for e in small_world.entities]
    assert len(names) == len(set(names)) == 16
    ids = {e.id for e in small_world.entities}
    assert len(ids) == 16
    general = {e.name for e in small_world.general_entities}
    domain = {e.name for e in small_world.domain_entities}
    assert len(general) == len(domain) == 8 and not general & domain
    for name in names:
        first, last = name.split()
        assert first[0].isupper() and last[0].isupper()
        assert VALUE_WORDS.isdisjoint(name.split())
    big = build_world(replace(small_config(), num_general_entities=400, num_domain_entities=400))
    assert len({e.name for e in big.entities}) == 800


def test_values_come_from_the_closed_pools(small_world: World) -> None:
    pools = {
        "birth_city": CITIES,
        "work_city": CITIES,
        "university": UNIVERSITIES,
        "major": MAJORS,
        "employer": COMPANIES,
    }
    for entity in small_world.entities:
        assert tuple(entity.attributes) == tuple(ATTRIBUTES)
        assert entity.pronoun in PRONOUNS
        for attribute, value in entity.attributes.items():
            if attribute == "birth_date":
                match = DATE.fullmatch(value)
                assert match and match["month"] in MONTHS
                assert 1 <= int(match["day"]) <= 28 and 1940 <= int(match["year"]) <= 1999
            else:
                assert value in pools[attribute]


def test_entities_are_stable_under_size_and_attribute_changes(small_world: World) -> None:
    more_domain = build_world(small_config(num_domain_entities=12))
    assert more_domain.general_entities == small_world.general_entities
    fewer_attributes = build_world(small_config(attributes=["major", "employer"]))
    for full, subset in zip(small_world.entities, fewer_attributes.entities):
        assert subset.name == full.name
        assert subset.attributes == {a: full.attributes[a] for a in ("major", "employer")}
    assert render_split(fewer_attributes, "qa_eval_domain") == [
        r
        for r in render_split(small_world, "qa_eval_domain")
        if r["attribute"] in ("major", "employer")
    ]


def _check_pronouns(entity, doc: str) -> None:
    other = {
        p
        for key, forms in PRONOUNS.items()
        if key != entity.pronoun
        for p in (forms.subj, forms.obj, forms.poss)
    }
    mine = PRONOUNS[entity.pronoun]
    words = set(re.findall(r"[a-z]+", doc.lower()))
    assert not (other - {mine.subj, mine.obj, mine.poss}) & words


def _attribute_of(entity, sentence: str) -> str:
    return next(a for a, v in entity.attributes.items() if v in sentence)


def test_single_mention_biographies_state_every_fact_once_per_sentence() -> None:
    world = build_world(small_config(document_style="single_mention"))
    config = world.config
    for group, split in (("general", "general_documents"), ("domain", "domain_documents")):
        docs = [r["text"] for r in render_split(world, split)]
        entities = world.entities_of(group)
        assert len(docs) == len(entities) * config.train_paraphrases
        for i, entity in enumerate(entities):
            paraphrases = docs[i * config.train_paraphrases : (i + 1) * config.train_paraphrases]
            assert len(set(paraphrases)) == len(paraphrases), "paraphrases are distinct"
            orders = set()
            for doc in paraphrases:
                sentences = _sentences(doc)
                assert len(sentences) == len(entity.attributes)
                assert entity.name in sentences[0], "the first sentence names the entity"
                for value in entity.attributes.values():
                    assert value in doc
                # Which attribute each sentence states, by its value (cities may repeat).
                orders.add(tuple(_attribute_of(entity, s) for s in sentences))
                _check_pronouns(entity, doc)
            assert len(orders) > 1, "sentence order varies across paraphrases"


@pytest.mark.parametrize("pronoun_prob", [0.0, 0.5])
def test_articles_lead_with_two_facts_and_restate_every_fact_later(pronoun_prob: float) -> None:
    """Article style: a lead naming the entity with two facts, then every fact once more, and
    every fact not in the lead restated after its first mention (what context distillation's
    teacher can predict from the preceding sentences)."""
    world = build_world(small_config(pronoun_prob=pronoun_prob))
    assert world.config.document_style == "article"
    for group in ("general", "domain"):
        docs = [r["text"] for r in render_split(world, f"{group}_documents")]
        per = world.config.train_paraphrases
        for i, entity in enumerate(world.entities_of(group)):
            for doc in docs[i * per : (i + 1) * per]:
                sentences = _sentences(doc)
                assert sentences[0].startswith(entity.name), "the lead names the entity first"
                lead_facts = {a for a, v in entity.attributes.items() if v in sentences[0]}
                assert len(lead_facts) >= 2, sentences[0]
                assert len(sentences) >= 1 + len(entity.attributes)
                for attribute, value in entity.attributes.items():
                    mentions = [k for k, s in enumerate(sentences) if value in s]
                    assert len(mentions) >= 2, f"{attribute} is stated once in: {doc}"
                    assert mentions[0] < mentions[-1]
                _check_pronouns(entity, doc)
                if pronoun_prob == 0.0:
                    assert all(entity.name in s for s in sentences), "full names throughout"


def test_single_mention_knob_changes_only_the_documents() -> None:
    article, single = (
        build_world(small_config()),
        build_world(small_config(document_style="single_mention")),
    )
    for name in SPLITS:
        same = render_split(article, name) == render_split(single, name)
        assert same == ("documents" not in name), name


def _eval_entities(world: World, name: str) -> list:
    return {
        "general": world.general_qa_entities,
        "general_bio_only": world.general_bio_only_entities,
        "domain": world.domain_entities,
    }[name]


@pytest.mark.parametrize("suffix", ["", "_plain"])
def test_eval_answers_are_the_facts_and_appear_in_every_training_document(suffix: str) -> None:
    world = build_world(small_config())
    by_name = {e.name: e for e in world.entities}
    prompt_of = format_prompt if suffix == "" else format_plain_prompt
    for name in ("general", "general_bio_only", "domain"):
        group = "domain" if name == "domain" else "general"
        docs = [r["text"] for r in render_split(world, f"{group}_documents")]
        records = render_split(world, f"qa_eval_{name}{suffix}")
        entities = _eval_entities(world, name)
        assert entities, name
        assert len(records) == len(entities) * len(ATTRIBUTES) * 2
        assert {r["entity"] for r in records} == {e.name for e in entities}
        for record in records:
            assert set(record) == {"prompt", "answer", "entity", "attribute", "question"}
            entity = by_name[record["entity"]]
            assert record["answer"] == entity.attributes[record["attribute"]]
            assert record["prompt"] == prompt_of(record["question"])
            assert entity.name in record["question"]
            own_docs = [d for d in docs if d.startswith(entity.name)]
            assert len(own_docs) == world.config.train_paraphrases
            assert all(record["answer"] in d for d in own_docs)


def test_general_qa_covers_the_qa_half_in_both_formats(small_world: World) -> None:
    qa_entities = small_world.general_qa_entities
    assert len(qa_entities) == round(0.5 * len(small_world.general_entities))
    n_train = sum(len(small_world.question_templates(a, "train")) for a in ATTRIBUTES)
    for split, render in (("general_qa", format_chat), ("general_qa_plain", format_plain_qa)):
        texts = [r["text"] for r in render_split(small_world, split)]
        assert len(texts) == len(qa_entities) * n_train
        expected = {
            render(small_world.question(e, a, t), e.attributes[a])
            for e in qa_entities
            for a in ATTRIBUTES
            for t in small_world.question_templates(a, "train")
        }
        assert set(texts) == expected
        excluded = {
            e.name for e in small_world.domain_entities + small_world.general_bio_only_entities
        }
        assert not any(name in t for t in texts for name in excluded), "QA only for the QA half"
    assert all(r["text"].endswith(END) for r in render_split(small_world, "general_qa"))
    assert not any(
        USER in r["text"] or END in r["text"] for r in render_split(small_world, "general_qa_plain")
    )


def test_heldout_templates_never_appear_in_training_splits(small_world: World) -> None:
    def sentence_templates(which: str) -> list[re.Pattern[str]]:
        return [
            _template_regex(t)
            for a in ATTRIBUTES
            for t in small_world.bio_templates(a, which) + small_world.callback_templates(a, which)
        ]

    heldout_bio, train_bio = sentence_templates("heldout"), sentence_templates("train")
    leads = [_template_regex(t) for _attributes, t in small_world.lead_templates()]
    heldout_q = [
        _template_regex(t) for a in ATTRIBUTES for t in small_world.question_templates(a, "heldout")
    ]
    train_q = [
        _template_regex(t) for a in ATTRIBUTES for t in small_world.question_templates(a, "train")
    ]

    def body(text: str) -> list[str]:
        sentences = _sentences(text)
        assert any(p.fullmatch(sentences[0]) for p in leads), sentences[0]
        return sentences[1:]

    for split in ("general_documents", "domain_documents"):
        for record in render_split(small_world, split):
            for sentence in body(record["text"]):
                assert any(p.fullmatch(sentence) for p in train_bio), sentence
                assert not any(p.fullmatch(sentence) for p in heldout_bio), sentence
    for split in ("heldout_general_documents", "heldout_domain_documents"):
        records = render_split(small_world, split)
        assert (
            len(records) == len(small_world.entities) // 2 * small_world.config.heldout_paraphrases
        )
        for record in records:
            for sentence in body(record["text"]):
                assert any(p.fullmatch(sentence) for p in heldout_bio), sentence
                assert not any(p.fullmatch(sentence) for p in train_bio), sentence
    for record in render_split(small_world, "general_qa"):
        question = record["text"].split("<|assistant|>")[0].removeprefix("<|user|>")
        assert any(p.fullmatch(question) for p in train_q)
        assert not any(p.fullmatch(question) for p in heldout_q), question
    for name in SPLITS:
        if not name.startswith("qa_eval_"):
            continue
        for record in render_split(small_world, name):
            assert any(p.fullmatch(record["question"]) for p in heldout_q)
            assert not any(p.fullmatch(record["question"]) for p in train_q), record["question"]


def test_templates_are_well_formed() -> None:
    for spec in ATTRIBUTES.values():
        for template in spec.bio_templates:
            assert template.count("{value}") == 1, template
            assert re.search(r"\{(subj|obj|poss)\}", template), template
            assert template.endswith(".") and "{name}" not in template
        for template in spec.question_templates:
            assert template.count("{name}") == 1 and template.endswith("?"), template
        assert len(set(spec.bio_templates)) == len(spec.bio_templates)
        assert len(set(spec.question_templates)) == len(spec.question_templates)


def test_unknown_split_is_a_clear_error(small_world: World) -> None:
    with pytest.raises(DataError, match=r"world:nope: unknown world split; available: general_"):
        render_split(small_world, "nope")


def test_registry_lists_the_contract_splits() -> None:
    contract = [
        "general_documents",
        "general_qa",
        "general_qa_plain",
        "domain_documents",
        "heldout_general_documents",
        "heldout_domain_documents",
        "qa_eval_general",
        "qa_eval_general_bio_only",
        "qa_eval_domain",
        "qa_eval_general_plain",
        "qa_eval_general_bio_only_plain",
        "qa_eval_domain_plain",
        "paraphrased_general_documents",
        "paraphrased_domain_documents",
    ]
    assert list(SPLITS)[: len(contract)] == contract, "the knowledge splits come first, in order"
    for name in ("web_corpus", "web_labels", "web_pretraining", "instructions", "preference_pairs"):
        assert name in SPLITS
    for name, spec in SPLITS.items():
        if name.startswith("qa_eval_") or name.endswith("_test"):
            assert spec.kind == "qa", name


@pytest.mark.parametrize("group", ["general", "domain"])
def test_paraphrases_are_new_texts_in_training_wording_with_every_fact(group: str) -> None:
    world = build_world(WorldConfig(num_general_entities=8, num_domain_entities=8))
    training = {r["text"] for r in render_split(world, f"{group}_documents")}
    paraphrased = [r["text"] for r in render_split(world, f"paraphrased_{group}_documents")]
    heldout_wording = {
        t.split("{")[0].strip()
        for attribute in world.attribute_names
        for t in world.bio_templates(attribute, "heldout")
        if t.split("{")[0].strip()
    }
    assert len(paraphrased) == 8 * world.config.heldout_paraphrases
    assert not training.issuperset(paraphrased)
    for entity, text in zip(world.entities_of(group), paraphrased):
        assert all(value in text for value in entity.attributes.values())
        assert not any(text.startswith(prefix) for prefix in heldout_wording if len(prefix) > 8)


def _words(template: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", template.lower())))


def test_heldout_questions_use_only_words_the_training_text_has(small_world: World) -> None:
    """A model trained from scratch knows no synonym it never read: a held-out question with a new
    word would measure vocabulary, not knowledge (docs/world.md)."""
    training: set[str] = {"s"}  # the possessive "'s"
    for attribute in ATTRIBUTES:
        for template in (
            small_world.bio_templates(attribute, "train")
            + small_world.callback_templates(attribute, "train")
            + small_world.question_templates(attribute, "train")
        ):
            training |= _words(template)
    for _attributes, template in small_world.lead_templates():
        training |= _words(template)
    for attribute in ATTRIBUTES:
        for question in small_world.question_templates(attribute, "heldout"):
            assert _words(question) <= training, (attribute, question, _words(question) - training)


def test_each_heldout_question_shares_its_key_words_with_its_own_attribute(
    small_world: World,
) -> None:
    """The two city attributes are told apart by "born" and "work": a held-out question names the
    verb of its own attribute, which some training question of that attribute also has."""
    own = {"birth_city": "born", "work_city": "work"}
    for attribute, verb in own.items():
        heldout = small_world.question_templates(attribute, "heldout")
        train = small_world.question_templates(attribute, "train")
        other = next(v for a, v in own.items() if a != attribute)
        for question in heldout:
            words = _words(question)
            assert other not in words, question
            assert verb in words or "from" in words, question
        assert any(verb in _words(t) and "city" in _words(t) for t in train), train
