"""`WorldConfig`: every knob of the synthetic knowledge world, validated with config-key errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from common.errors import ConfigError
from datamodules.world.chat import SPECIAL_TOKENS
from datamodules.world.templates import ATTRIBUTES, NAME_CAPACITY

MAX_ENTITIES = NAME_CAPACITY // 4
"""Most entities a world may have; names are drawn without replacement from the syllable pool."""


@dataclass
class WorldConfig:
    """Size and shape of the synthetic knowledge world (fictional people and their facts).

    The defaults give a world a tiny model learns in minutes on a CPU. General entities are what
    the base model is trained on (biographies and chat QA); new-domain entities appear only in
    documents, and are the knowledge to adapt to.

    Args:
        seed: Seed of the whole world; the same config always gives the same files and tokenizer.
        num_general_entities: Number of general entities (biographies and QA in base training).
        num_domain_entities: Number of new-domain entities (biographies only; QA for evaluation).
        attributes: Attribute names every entity has, in schema order; None means all of them
            (birth_date, birth_city, university, major, employer, work_city).
        train_paraphrases: Training biographies per entity, each with its own template choice and
            sentence order.
        heldout_paraphrases: Held-out biographies per entity (held-out templates only), used for
            perplexity.
        num_heldout_bio_templates: Biography templates per attribute kept out of training (the
            last ones of each attribute); the rest are training templates.
        num_heldout_question_templates: Question templates per attribute kept out of training
            and used for QA evaluation (the last ones); the rest phrase the training QA.
        pronoun_prob: Probability that a sentence after the first refers to the entity by pronoun
            instead of full name.
        vocab_size: Target vocabulary size of the byte-level BPE tokenizer (special tokens
            included); the trained vocabulary may be smaller when the corpus runs out of merges.
    """

    seed: int = 0
    num_general_entities: int = 50
    num_domain_entities: int = 50
    attributes: list[str] | None = None
    train_paraphrases: int = 4
    heldout_paraphrases: int = 1
    num_heldout_bio_templates: int = 2
    num_heldout_question_templates: int = 2
    pronoun_prob: float = 0.5
    vocab_size: int = 2048

    def attribute_names(self) -> tuple[str, ...]:
        """The attributes of this world, in schema order."""
        if self.attributes is None:
            return tuple(ATTRIBUTES)
        return tuple(name for name in ATTRIBUTES if name in self.attributes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (for `world.json` and the fingerprint)."""
        return asdict(self)

    def validate(self, key_prefix: str = "world") -> None:
        """Raise `ConfigError` naming `<key_prefix>.<field>` for the first invalid field."""

        def key(name: str) -> str:
            return f"{key_prefix}.{name}" if key_prefix else name

        def check_int(name: str, minimum: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key(name), f"must be an integer, got {value!r}")
            if value < minimum:
                raise ConfigError(key(name), f"must be >= {minimum}, got {value}")
            return value

        check_int("seed", 0)
        check_int("num_general_entities", 1)
        check_int("num_domain_entities", 1)
        total = self.num_general_entities + self.num_domain_entities
        if total > MAX_ENTITIES:
            raise ConfigError(
                key("num_domain_entities"),
                f"general + domain entities must be <= {MAX_ENTITIES} (the name pool is finite), "
                f"got {self.num_general_entities} + {self.num_domain_entities}",
            )
        check_int("train_paraphrases", 1)
        check_int("heldout_paraphrases", 1)
        check_int("vocab_size", 256 + len(SPECIAL_TOKENS))

        if self.attributes is not None:
            if not isinstance(self.attributes, (list, tuple)) or not all(
                isinstance(a, str) for a in self.attributes
            ):
                raise ConfigError(
                    key("attributes"), f"must be a list of names, got {self.attributes!r}"
                )
            unknown = sorted(set(self.attributes) - set(ATTRIBUTES))
            if unknown:
                raise ConfigError(
                    key("attributes"),
                    f"unknown attribute(s) {unknown}; choose from {list(ATTRIBUTES)}",
                )
            if not self.attributes:
                raise ConfigError(key("attributes"), "must name at least one attribute, or be null")
            if len(set(self.attributes)) != len(self.attributes):
                raise ConfigError(key("attributes"), f"has duplicates: {self.attributes}")

        names = self.attribute_names()
        for field, templates_of in (
            ("num_heldout_bio_templates", lambda a: ATTRIBUTES[a].bio_templates),
            ("num_heldout_question_templates", lambda a: ATTRIBUTES[a].question_templates),
        ):
            fewest = min(len(templates_of(a)) for a in names)
            value = check_int(field, 1)
            if value > fewest - 1:
                raise ConfigError(
                    key(field),
                    f"must leave at least one training template; the attributes have {fewest} "
                    f"templates, so use 1..{fewest - 1}, got {value}",
                )

        prob = self.pronoun_prob
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ConfigError(key("pronoun_prob"), f"must be a number in [0, 1], got {prob!r}")
