"""`experiments.trait_table`: its plan (commands, paths, knobs), the ratios behind the configs, and
the tables it writes from result rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import trait_table
from experiments.include import load_yaml
from experiments.trait_table import (
    CONFIG_DIR,
    DEFAULT_VARIANTS,
    SOURCE_NAMES,
    VARIANTS,
    Knobs,
    markdown,
    plan,
    stage_ratios,
)


def option(command: tuple[str, ...], key: str) -> str:
    """The value of `--key=value` in `command`."""
    prefix = f"--{key}="
    (value,) = [arg[len(prefix) :] for arg in command if arg.startswith(prefix)]
    return value


def data_fragment(config: str) -> dict:
    experiment = load_yaml((CONFIG_DIR / "trait" / f"{config}.yaml").read_text())
    fragment = (CONFIG_DIR / "trait" / experiment["data"]).resolve()
    return load_yaml(fragment.read_text(), fragment.parent)["init_args"]


@pytest.mark.parametrize(
    "config", ["world_cpt", "world_selected", "world_single_stage", "world_two_stage"]
)
def test_default_knobs_give_the_configs_ratios(config: str) -> None:
    data = data_fragment(config)
    assert [s["name"] for s in data["train_sources"]] == list(SOURCE_NAMES)
    expected = stage_ratios()[config]
    if "stages" in expected:
        assert data["stages"] == expected["stages"]
        assert data["stages"][0]["steps"] == trait_table.STAGE1_STEPS
    else:
        assert data["ratios"] == pytest.approx(expected["ratios"])
    experiment = load_yaml((CONFIG_DIR / "trait" / f"{config}.yaml").read_text())
    assert experiment["trainer"]["max_steps"] == trait_table.TOTAL_STEPS


def test_ratios_sum_to_one_for_any_knobs() -> None:
    for replay in (0.0, 0.1, 0.3):
        for synthetic in (0.0, 0.5, 1.0):
            ratios = stage_ratios(replay, synthetic)
            lists = [v["ratios"] for v in ratios.values() if "ratios" in v]
            lists += [s["ratios"] for s in ratios["world_two_stage"]["stages"]]
            for values in lists:
                assert sum(values) == pytest.approx(1.0, abs=1e-9)
                assert min(values) >= 0
                assert values[-1] == pytest.approx(replay, abs=1e-6)


def test_plan_runs_selections_and_syntheses_before_the_runs_that_read_them(tmp_path: Path) -> None:
    variants = [VARIANTS[name] for name in DEFAULT_VARIANTS]
    pipelines, stages = plan(variants, [0, 2], {0: Path("/m0"), 2: Path("/m2")}, tmp_path)
    assert [p.seed for p in pipelines] == [0, 2]
    names = [s.name for s in pipelines[1].stages]
    assert names[:6] == [
        "selection-fasttext",
        "selection-fasttext_quality",
        "selection-dsir",
        "selection-random",
        "synthesis-world",
        "synthesis-world_no_enlightenment",
    ]
    assert names[6:] == [f"fit-{name}" for name in DEFAULT_VARIANTS]
    select = stages[2]["selection-dsir"].command
    assert select[1:4] == ("-m", "datamodules.selection", "run")
    assert option(select, "world.seed") == "2"
    assert option(select, "output_dir") == str(tmp_path / "seed2" / "selection-dsir")
    fit = stages[2]["fit-two_stage_no_enlightenment"]
    assert fit.after == ("selection-fasttext_quality", "synthesis-world_no_enlightenment")
    assert not fit.needs_export
    assert option(fit.command, "model.init_args.model_name_or_path") == "/m2"
    assert option(fit.command, "seed_everything") == "2"
    sources = json.loads(option(fit.command, "data.init_args.train_sources"))
    assert [s["name"] for s in sources] == list(SOURCE_NAMES)
    assert sources[1]["path"] == str(
        tmp_path / "seed2" / "selection-fasttext_quality" / "selected.jsonl"
    )
    assert sources[2]["path"] == str(
        tmp_path / "seed2" / "synthesis-world_no_enlightenment" / "passages.jsonl"
    )
    assert not any("ratios" in a or "stages" in a for a in fit.command)  # the configs' own


def test_knobs_reach_every_command_and_separate_the_runs(tmp_path: Path) -> None:
    knobs = Knobs(budget_tokens=5000, replay_ratio=0.2, stage2_synthetic=0.5)
    variants = [VARIANTS["two_stage"], VARIANTS["cpt"]]
    _, stages = plan(variants, [1], {1: Path("/m")}, tmp_path, knobs)
    seed = stages[1]
    assert option(seed["selection-random"].command, "budget_tokens") == "5000"
    assert seed["fit-cpt"].directory.parents[1].name == "seed1-b5000-r0.2-s0.5"
    two = json.loads(option(seed["fit-two_stage"].command, "data.init_args.stages"))
    assert two == stage_ratios(0.2, 0.5)["world_two_stage"]["stages"]
    assert json.loads(option(seed["fit-cpt"].command, "data.init_args.ratios")) == [0.8, 0, 0, 0.2]


def test_markdown_tables_from_rows() -> None:
    def downstream(variant: str, seed: int, value: float) -> dict:
        metrics = {
            "knowledge/qa_em/task_attribute_qa": value,
            "knowledge/qa_em/task_comparison": value / 2,
            "knowledge/qa_em/task_same_value": 0.5,
            "knowledge/qa_em/domain": value,
            "knowledge/qa_em/general": 0.9,
            "knowledge/qa_em/general_bio_only": 0.7,
        }
        return {
            "kind": "downstream",
            "seed": seed,
            "variant": variant,
            "title": VARIANTS[variant].title if variant in VARIANTS else "base",
            "metrics": trait_table.with_task_mean(metrics),
        }

    rows = [
        {
            "kind": "selection",
            "seed": s,
            "method": "dsir",
            "metrics": {
                "precision": 0.5,
                "recall": 0.25,
                "low_quality_share": 0.1,
                "in_domain_high_quality_precision": 0.4,
                "tokens_selected": 1000 + s,
                "selected": 20,
            },
        }
        for s in (0, 1)
    ]
    rows += [downstream("two_stage", s, 0.2 * (s + 1)) for s in (0, 1)]
    rows += [downstream("cpt", 0, 0.1)]  # one seed only: left out of a two-seed table
    text = markdown(rows)
    assert (
        "| dsir | 50.0 (50.0 / 50.0) | 25.0 (25.0 / 25.0) | 10.0 (10.0 / 10.0) | 40.0 (40.0 / 40.0) | 1000 | 20 |"
        in text
    )
    line = next(x for x in text.splitlines() if x.startswith(f"| {VARIANTS['two_stage'].title} |"))
    assert "30.0 (20.0 / 40.0)" in line
    task_mean = (0.2 + 0.1 + 0.5) / 3, (0.4 + 0.2 + 0.5) / 3
    assert f"{100 * sum(task_mean) / 2:.1f}" in line
    assert VARIANTS["cpt"].title not in text


def test_options_defaults() -> None:
    options = trait_table.parse_options([])
    assert options.seeds == [0, 1, 2] and options.jobs == 2
    assert options.variants == list(DEFAULT_VARIANTS)
    assert options.markdown == Path("docs/trait_table.md")
    with pytest.raises(SystemExit):
        trait_table.parse_options(["--variants", "nope"])
