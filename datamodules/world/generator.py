"""The world itself: entities with attributes, and how to state and ask their facts.

`build_world(config)` is pure: all randomness comes from `random.Random` instances seeded with
strings derived from `config.seed` (never the global RNG), and every entity, split and record has
its own seed, so adding an entity, an attribute or a split does not change the text of the others.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from datamodules.world.chat import format_chat, format_prompt
from datamodules.world.config import WorldConfig
from datamodules.world.templates import (
    ATTRIBUTES,
    LEAD_TEMPLATES,
    PRONOUNS,
    VALUE_WORDS,
    AttributeSpec,
    sample_name,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "3"
"""Bump whenever generated text or tokenizer change for the same config (invalidates caches). The
cache fingerprints also hash the world package's source (`generator_source_hash`), so a template
edit without a bump cannot reuse a stale world either."""


def generator_source_hash() -> str:
    """16 hex digits of the source of every module of `datamodules.world` (templates included)."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


Group = Literal["general", "domain"]
TemplateSet = Literal["train", "heldout"]
GROUPS: tuple[Group, ...] = ("general", "domain")


@dataclass(frozen=True)
class Entity:
    """A fictional person.

    Args:
        id: Stable identifier, `<group>-<index>` (e.g. `domain-007`).
        name: Unique full name across the whole world.
        group: `general` (known to the base model) or `domain` (the new knowledge).
        pronoun: Key of `templates.PRONOUNS` (`she` or `he`).
        attributes: Attribute name -> value; every value is a short answer span.
    """

    id: str
    name: str
    group: Group
    pronoun: str
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy."""
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "pronoun": self.pronoun,
            "attributes": dict(self.attributes),
        }


_SLOT = re.compile(r"\{(subj|obj|poss|value)\}")


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


class World:
    """Entities of a generated world plus the primitives every split renders from.

    Args:
        config: The config the world was built from.
        entities: All entities, general first, then domain.
    """

    def __init__(self, config: WorldConfig, entities: list[Entity]) -> None:
        self.config = config
        self.entities = list(entities)
        self.attribute_names: tuple[str, ...] = config.attribute_names()

    def __repr__(self) -> str:
        return (
            f"World(seed={self.config.seed}, general={len(self.general_entities)}, "
            f"domain={len(self.domain_entities)}, attributes={list(self.attribute_names)})"
        )

    @property
    def general_entities(self) -> list[Entity]:
        """Entities the base model is trained on (documents and QA)."""
        return [e for e in self.entities if e.group == "general"]

    @property
    def domain_entities(self) -> list[Entity]:
        """New-domain entities (documents for adaptation; QA for evaluation only)."""
        return [e for e in self.entities if e.group == "domain"]

    @property
    def general_qa_entities(self) -> list[Entity]:
        """General entities whose QA is in the base models' training data (the first
        `round(general_qa_fraction * num_general_entities)` of them)."""
        general = self.general_entities
        return general[: round(self.config.general_qa_fraction * len(general))]

    @property
    def general_bio_only_entities(self) -> list[Entity]:
        """General entities seen in biographies only: QA on them measures whether extraction
        generalizes to people known from documents alone."""
        general = self.general_entities
        return general[round(self.config.general_qa_fraction * len(general)) :]

    def entities_of(self, group: Group) -> list[Entity]:
        """Entities of one group."""
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        return [e for e in self.entities if e.group == group]

    def spec(self, attribute: str) -> AttributeSpec:
        """The schema entry of an attribute."""
        return ATTRIBUTES[attribute]

    def rng(self, *parts: object) -> random.Random:
        """An RNG private to `parts` (e.g. split name and entity id), derived from the seed."""
        return random.Random("/".join([str(self.config.seed), *map(str, parts)]))

    # --- templates ---------------------------------------------------------------------------

    def bio_templates(self, attribute: str, which: TemplateSet) -> tuple[str, ...]:
        """Biography templates of an attribute: training ones, or the held-out last ones."""
        templates = self.spec(attribute).bio_templates
        k = self.config.num_heldout_bio_templates
        return templates[:-k] if which == "train" else templates[-k:]

    def callback_templates(self, attribute: str, which: TemplateSet) -> tuple[str, ...]:
        """Article sentences referring back to a fact: all but the last, or the held-out last."""
        templates = self.spec(attribute).callback_templates
        return templates[:-1] if which == "train" else templates[-1:]

    def lead_templates(self) -> tuple[tuple[tuple[str, ...], str], ...]:
        """The lead sentences whose attributes this world has."""
        names = set(self.attribute_names)
        return tuple(lead for lead in LEAD_TEMPLATES if names.issuperset(lead[0]))

    def question_templates(self, attribute: str, which: TemplateSet) -> tuple[str, ...]:
        """Question templates of an attribute: training ones, or the held-out last ones."""
        templates = self.spec(attribute).question_templates
        k = self.config.num_heldout_question_templates
        return templates[:-k] if which == "train" else templates[-k:]

    # --- rendering primitives ----------------------------------------------------------------

    def sentence(self, entity: Entity, attribute: str, template: str, by_name: bool) -> str:
        """One biography sentence stating `attribute`, naming the entity (at its first mention in
        the sentence only) or using pronouns throughout."""
        pronouns = PRONOUNS[entity.pronoun]
        named = {"subj": entity.name, "obj": entity.name, "poss": f"{entity.name}'s"}
        mentions = 0

        def fill(match: re.Match[str]) -> str:
            nonlocal mentions
            slot = match.group(1)
            if slot == "value":
                return entity.attributes[attribute]
            mentions += 1
            if by_name and mentions == 1:
                return named[slot]
            return getattr(pronouns, slot)

        return _capitalize(_SLOT.sub(fill, template))

    def biography(self, entity: Entity, which: TemplateSet, rng: random.Random) -> str:
        """A biography: one sentence per attribute in a random order, a random template from
        `which` for each, the full name first and then a pronoun with `pronoun_prob`."""
        order = list(self.attribute_names)
        rng.shuffle(order)
        sentences = []
        for position, attribute in enumerate(order):
            template = rng.choice(self.bio_templates(attribute, which))
            by_name = position == 0 or rng.random() >= self.config.pronoun_prob
            sentences.append(self.sentence(entity, attribute, template, by_name))
        return " ".join(sentences)

    def article(self, entity: Entity, which: TemplateSet, rng: random.Random) -> str:
        """A profile article: a lead naming the entity with two facts, one sentence per fact in a
        random order, and for every fact not in the lead a later sentence referring back to it
        (placed anywhere after the fact's own sentence), so each fact is stated at least twice
        and every restatement follows a first mention."""
        leads = self.lead_templates()
        if not leads:  # too few attributes for a two-fact lead: a biography is the best we can do
            return self.biography(entity, which, rng)
        lead_attributes, lead = rng.choice(leads)
        sentences = [lead.format(name=entity.name, **entity.attributes)]
        order = list(self.attribute_names)
        rng.shuffle(order)
        later: list[tuple[int, int, str]] = []  # (after body sentence k, draw order, sentence)
        for position, attribute in enumerate(order):
            if attribute in lead_attributes:
                continue
            slot = rng.randint(position, len(order) - 1)
            template = rng.choice(self.callback_templates(attribute, which))
            by_name = rng.random() >= self.config.pronoun_prob
            later.append((slot, len(later), self.sentence(entity, attribute, template, by_name)))
        later.sort()
        queue = iter(later)
        pending = next(queue, None)
        for position, attribute in enumerate(order):
            template = rng.choice(self.bio_templates(attribute, which))
            by_name = rng.random() >= self.config.pronoun_prob
            sentences.append(self.sentence(entity, attribute, template, by_name))
            while pending is not None and pending[0] == position:
                sentences.append(pending[2])
                pending = next(queue, None)
        return " ".join(sentences)

    def document(self, entity: Entity, which: TemplateSet, rng: random.Random) -> str:
        """A document about `entity` in the configured style (`article` or `single_mention`)."""
        if self.config.document_style == "article":
            return self.article(entity, which, rng)
        return self.biography(entity, which, rng)

    def question(self, entity: Entity, attribute: str, template: str) -> str:
        """A question about one fact of an entity."""
        return template.format(name=entity.name)

    def qa_pairs(self, entity: Entity, which: TemplateSet) -> Iterable[tuple[str, str, str]]:
        """`(attribute, question, answer)` for every attribute and every template in `which`."""
        for attribute in self.attribute_names:
            for template in self.question_templates(attribute, which):
                yield (
                    attribute,
                    self.question(entity, attribute, template),
                    entity.attributes[attribute],
                )

    def chat_text(self, question: str, answer: str) -> str:
        """A QA pair in the chat format (see `chat.py`)."""
        return format_chat(question, answer)

    def qa_record(self, entity: Entity, attribute: str, question: str) -> dict[str, str]:
        """An evaluation record: `prompt` ends exactly where the answer starts."""
        return {
            "prompt": format_prompt(question),
            "answer": entity.attributes[attribute],
            "entity": entity.name,
            "attribute": attribute,
            "question": question,
        }

    def to_dict(self) -> dict[str, Any]:
        """Entities, attribute schema and config as JSON-serializable data (for `world.json`)."""
        return {
            "generator_version": GENERATOR_VERSION,
            "config": self.config.to_dict(),
            "attributes": {
                name: {
                    "description": self.spec(name).description,
                    "train_bio_templates": list(self.bio_templates(name, "train")),
                    "heldout_bio_templates": list(self.bio_templates(name, "heldout")),
                    "train_question_templates": list(self.question_templates(name, "train")),
                    "heldout_question_templates": list(self.question_templates(name, "heldout")),
                }
                for name in self.attribute_names
            },
            "entities": [e.to_dict() for e in self.entities],
        }


def build_world(config: WorldConfig, key_prefix: str = "world") -> World:
    """Generate the world described by `config` (validated first; errors name `key_prefix.<field>`).

    Deterministic: the same config gives the same entities, whatever the process or platform.
    """
    config.validate(key_prefix)
    name_rng = random.Random(f"{config.seed}/names")
    used: set[str] = set()
    entities: list[Entity] = []
    counts = {"general": config.num_general_entities, "domain": config.num_domain_entities}
    for group in GROUPS:
        for index in range(counts[group]):
            while True:
                name = sample_name(name_rng)
                if name not in used and VALUE_WORDS.isdisjoint(name.split()):
                    break
            used.add(name)
            entity_id = f"{group}-{index:03d}"
            # One RNG per fact: adding or dropping an attribute leaves the other values unchanged.
            seed = f"{config.seed}/entity/{entity_id}"
            pronoun = random.Random(f"{seed}/pronoun").choice(sorted(PRONOUNS))
            attributes = {
                a: ATTRIBUTES[a].sample(random.Random(f"{seed}/{a}"))
                for a in config.attribute_names()
            }
            entities.append(Entity(entity_id, name, group, pronoun, attributes))
    world = World(config, entities)
    logger.debug("built %r", world)
    return world
