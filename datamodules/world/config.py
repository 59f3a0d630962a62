"""`WorldConfig`: every knob of the synthetic knowledge world, validated with config-key errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from common.errors import ConfigError
from datamodules.world.chat import SPECIAL_TOKENS
from datamodules.world.templates import ATTRIBUTES, NAME_CAPACITY

MAX_ENTITIES = NAME_CAPACITY // 4
"""Most entities a world may have; names are drawn without replacement from the syllable pool."""


def check_int(key: str, value: Any, minimum: int) -> int:
    """`value` if it is an integer >= `minimum`, else `ConfigError` naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return value


def check_fraction(key: str, value: Any, *, below_one: bool = False) -> float:
    """`value` if it is a number in [0, 1] (or [0, 1) with `below_one`), else `ConfigError`."""
    interval = "[0, 1)" if below_one else "[0, 1]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number in {interval}, got {value!r}")
    if not (0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0):
        raise ConfigError(key, f"must be a number in {interval}, got {value!r}")
    return float(value)


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class SkillsConfig:
    """Chat skills unrelated to the entities (what adaptation can make a chat model forget).

    Args:
        train_per_skill: Training chats per skill (in the `chat` model's SFT data).
        test_per_skill: Test problems per skill (exact match), disjoint from the training ones.
    """

    train_per_skill: int = 400
    test_per_skill: int = 100

    def validate(self, key_prefix: str = "world.skills") -> None:
        """Raise `ConfigError` naming `<key_prefix>.<field>` for the first invalid field."""
        check_int(_prefixed(key_prefix, "train_per_skill"), self.train_per_skill, 1)
        check_int(_prefixed(key_prefix, "test_per_skill"), self.test_per_skill, 1)


@dataclass
class InstructionConfig:
    """General instruction data and preference pairs (Mix-CPT's mixture and format alignment).

    Args:
        num_instructions: Instruction samples (general QA and skills, chat format).
        num_preference_pairs: Preference pairs; chosen = the correct answer, rejected = a
            plausible wrong value from the same pool or the right value in the wrong format.
        wrong_format_fraction: Share of pairs whose rejected answer is the right value in the
            wrong format (the rest reject a wrong value).
        format_alignment_pool: Size of the small pool for few-sample format alignment (SFT and
            preference samples each), disjoint from the large sets.
        skill_fraction: Share of each of these sets drawn from skill training problems (split
            evenly across the skills); the rest is general QA with training question templates.
    """

    num_instructions: int = 2000
    num_preference_pairs: int = 1000
    wrong_format_fraction: float = 0.3
    format_alignment_pool: int = 64
    skill_fraction: float = 0.5

    def validate(self, key_prefix: str = "world.instructions") -> None:
        """Raise `ConfigError` naming `<key_prefix>.<field>` for the first invalid field."""
        check_int(_prefixed(key_prefix, "num_instructions"), self.num_instructions, 1)
        check_int(_prefixed(key_prefix, "num_preference_pairs"), self.num_preference_pairs, 1)
        check_fraction(_prefixed(key_prefix, "wrong_format_fraction"), self.wrong_format_fraction)
        check_int(_prefixed(key_prefix, "format_alignment_pool"), self.format_alignment_pool, 1)
        check_fraction(_prefixed(key_prefix, "skill_fraction"), self.skill_fraction)


@dataclass
class WebConfig:
    """The web corpus TRAIT selects from, and the general web text the base model pre-trains on.

    Args:
        num_documents: Documents in the corpus to select from (`web_corpus`).
        in_domain_fraction: Share of them that are hidden in-domain documents (other wordings of
            new-domain entities' facts: news items, directory entries, alumni notes).
        low_quality_fraction: Share of low-quality documents (boilerplate, repetition, garbled
            text), drawn among in-domain and general documents alike.
        num_pretraining_documents: General web documents (never in-domain) in the base models'
            pre-training data (`web_pretraining`), disjoint from the corpus.
    """

    num_documents: int = 4000
    in_domain_fraction: float = 0.05
    low_quality_fraction: float = 0.15
    num_pretraining_documents: int = 200

    def validate(self, key_prefix: str = "world.web") -> None:
        """Raise `ConfigError` naming `<key_prefix>.<field>` for the first invalid field."""
        check_int(_prefixed(key_prefix, "num_documents"), self.num_documents, 1)
        check_fraction(
            _prefixed(key_prefix, "in_domain_fraction"), self.in_domain_fraction, below_one=True
        )
        check_fraction(
            _prefixed(key_prefix, "low_quality_fraction"), self.low_quality_fraction, below_one=True
        )
        check_int(
            _prefixed(key_prefix, "num_pretraining_documents"), self.num_pretraining_documents, 0
        )


@dataclass
class TasksConfig:
    """Downstream tasks on the new-domain entities (TRAIT): attribute QA, comparisons, same-value.

    Args:
        test_entity_fraction: Share of new-domain entities whose problems form the test splits;
            training problems use only the other entities, so no test problem (nor a test
            entity) appears in a training split.
        comparisons_per_split: Comparison problems ("Who was born earlier, A or B?") per split.
        same_value_per_split: Same-value problems ("Did A and B study at the same university?")
            per split.
    """

    test_entity_fraction: float = 0.5
    comparisons_per_split: int = 200
    same_value_per_split: int = 200

    def validate(self, key_prefix: str = "world.tasks") -> None:
        """Raise `ConfigError` naming `<key_prefix>.<field>` for the first invalid field."""
        fraction = check_fraction(
            _prefixed(key_prefix, "test_entity_fraction"), self.test_entity_fraction
        )
        if not 0.0 < fraction < 1.0:
            raise ConfigError(
                _prefixed(key_prefix, "test_entity_fraction"),
                f"must be strictly between 0 and 1 (both splits need entities), got {fraction}",
            )
        check_int(_prefixed(key_prefix, "comparisons_per_split"), self.comparisons_per_split, 1)
        check_int(_prefixed(key_prefix, "same_value_per_split"), self.same_value_per_split, 1)


DocumentStyle = Literal["article", "single_mention"]


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
        general_qa_fraction: Share of general entities whose QA is in the base models' training
            data; the others appear in biographies only, so that QA on them measures whether
            extraction generalizes to people seen only in documents (the new-domain situation).
        document_style: `article`: a lead sentence summarizing some facts, one sentence per fact,
            later sentences that refer back to earlier facts, and a closing restatement, so every
            fact is stated at least twice; `single_mention`: one sentence per fact, each stated
            once (the old style, kept to show what redundancy does for context distillation).
        skills: Chat skills (addition, list reversal, a required answer format).
        instructions: Instruction data and preference pairs.
        web: The web corpus with hidden in-domain and low-quality documents.
        tasks: Downstream tasks on new-domain entities.
    """

    seed: int = 0
    num_general_entities: int = 100
    num_domain_entities: int = 50
    attributes: list[str] | None = None
    train_paraphrases: int = 5
    heldout_paraphrases: int = 1
    num_heldout_bio_templates: int = 2
    num_heldout_question_templates: int = 2
    pronoun_prob: float = 0.0
    vocab_size: int = 2048
    general_qa_fraction: float = 0.5
    document_style: DocumentStyle = "article"
    skills: SkillsConfig = field(default_factory=SkillsConfig)
    instructions: InstructionConfig = field(default_factory=InstructionConfig)
    web: WebConfig = field(default_factory=WebConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)

    def __post_init__(self) -> None:
        # A mapping (from JSON, `world.json` or `WorldConfig(**to_dict())`) becomes its dataclass.
        for name, cls in _SUBCONFIGS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                try:
                    setattr(self, name, cls(**value))
                except TypeError as error:
                    raise ConfigError(f"world.{name}", f"{error}") from None

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

        def field_int(name: str, minimum: int) -> int:
            return check_int(key(name), getattr(self, name), minimum)

        field_int("seed", 0)
        field_int("num_general_entities", 1)
        field_int("num_domain_entities", 1)
        total = self.num_general_entities + self.num_domain_entities
        if total > MAX_ENTITIES:
            raise ConfigError(
                key("num_domain_entities"),
                f"general + domain entities must be <= {MAX_ENTITIES} (the name pool is finite), "
                f"got {self.num_general_entities} + {self.num_domain_entities}",
            )
        field_int("train_paraphrases", 1)
        field_int("heldout_paraphrases", 1)
        field_int("vocab_size", 256 + len(SPECIAL_TOKENS))

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
        for name, templates_of in (
            ("num_heldout_bio_templates", lambda a: ATTRIBUTES[a].bio_templates),
            ("num_heldout_question_templates", lambda a: ATTRIBUTES[a].question_templates),
        ):
            fewest = min(len(templates_of(a)) for a in names)
            value = field_int(name, 1)
            if value > fewest - 1:
                raise ConfigError(
                    key(name),
                    f"must leave at least one training template; the attributes have {fewest} "
                    f"templates, so use 1..{fewest - 1}, got {value}",
                )

        check_fraction(key("pronoun_prob"), self.pronoun_prob)
        check_fraction(key("general_qa_fraction"), self.general_qa_fraction)
        if self.document_style not in ("article", "single_mention"):
            raise ConfigError(
                key("document_style"),
                f"must be 'article' or 'single_mention', got {self.document_style!r}",
            )
        for name, sub in (
            ("skills", self.skills),
            ("instructions", self.instructions),
            ("web", self.web),
            ("tasks", self.tasks),
        ):
            sub.validate(key(name))


_SUBCONFIGS: dict[str, type] = {
    "skills": SkillsConfig,
    "instructions": InstructionConfig,
    "web": WebConfig,
    "tasks": TasksConfig,
}
