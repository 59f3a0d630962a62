"""`WorldConfig.validate`: every bad value gives a `ConfigError` naming its key."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from datamodules.world import WorldConfig, build_world, materialize_world
from datamodules.world.config import MAX_ENTITIES


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_domain_entities", 0, "must be >= 1"),
        ("num_general_entities", -3, "must be >= 1"),
        ("num_general_entities", 2.5, "must be an integer"),
        ("train_paraphrases", 0, "must be >= 1"),
        ("heldout_paraphrases", True, "must be an integer"),
        ("seed", -1, "must be >= 0"),
        ("vocab_size", 100, "must be >= 260"),
        ("num_heldout_bio_templates", 0, "must be >= 1"),
        ("num_heldout_bio_templates", 6, "leave at least one training template"),
        ("num_heldout_question_templates", 9, "leave at least one training template"),
        ("pronoun_prob", 1.5, "in [0, 1]"),
        ("pronoun_prob", "often", "in [0, 1]"),
        ("attributes", ["birth_city", "shoe_size"], "unknown attribute(s) ['shoe_size']"),
        ("attributes", [], "at least one attribute"),
        ("attributes", ["major", "major"], "duplicates"),
    ],
)
def test_bad_value_names_the_key(field: str, value: object, fragment: str) -> None:
    config = WorldConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        build_world(config)
    assert info.value.key == f"world.{field}"
    assert f"config key 'world.{field}'" in str(info.value)
    assert fragment in str(info.value)


def test_key_prefix_is_used(tmp_path) -> None:
    config = WorldConfig(num_domain_entities=0)
    with pytest.raises(ConfigError, match=r"'data\.init_args\.world\.num_domain_entities'"):
        materialize_world(config, tmp_path, key_prefix="data.init_args.world")
    assert not any(tmp_path.iterdir()), "nothing is written for an invalid config"


def test_too_many_entities() -> None:
    config = WorldConfig(num_general_entities=MAX_ENTITIES, num_domain_entities=1)
    with pytest.raises(ConfigError, match="name pool is finite"):
        config.validate()


def test_defaults_are_valid_and_documented() -> None:
    config = WorldConfig()
    config.validate()
    doc = WorldConfig.__doc__ or ""
    for field in config.to_dict():
        assert f"{field}:" in doc, f"WorldConfig field {field} is not documented in Args"


def test_attribute_subset_keeps_schema_order() -> None:
    config = WorldConfig(attributes=["employer", "birth_city"])
    assert config.attribute_names() == ("birth_city", "employer")
