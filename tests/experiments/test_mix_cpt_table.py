"""experiments.mix_cpt_table: the stage chains it plans and the tables it writes (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from experiments import launch, mix_cpt_table
from experiments.mix_cpt_table import CONFIG_DIR, VARIANTS, markdown, plan


def option(command: tuple[str, ...], key: str) -> str:
    """The value of `--key=value` in a command line (exactly one)."""
    values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{key}=")]
    assert len(values) == 1, (key, values)
    return values[0]


def test_every_stage_config_exists_and_variants_sharing_a_stage1_config_share_its_run(
    tmp_path,
) -> None:
    for variant in VARIANTS.values():
        for config in (variant.stage1, variant.sft, variant.dpo):
            assert (CONFIG_DIR / config).is_file(), config
    pipelines, stages = plan(
        list(VARIANTS.values()), [0, 1], {0: Path("pre0"), 1: Path("pre1")}, tmp_path
    )
    assert len(pipelines) == 2 * 3  # per seed: traditional, mix (+ random selection), no LSSD
    mix, random = stages[(0, "mix_cpt")], stages[(0, "random_selection")]
    assert mix["stage1"] == random["stage1"] and mix["select"] != random["select"]
    assert "select" not in stages[(0, "traditional")]
    shared = next(p for p in pipelines if p.seed == 0 and mix["stage1"] in p.stages)
    assert [s.name for s in shared.stages] == [
        "stage1-world",
        "select-world-response_ppl",
        "sft-mix_cpt",
        "dpo-mix_cpt",
        "select-world-random",
        "sft-random_selection",
        "dpo-random_selection",
    ]


def test_each_stage_starts_from_the_previous_stages_output(tmp_path) -> None:
    _, stages = plan(
        [VARIANTS["mix_cpt"], VARIANTS["traditional"]], [2], {2: Path("pre")}, tmp_path
    )
    mix = stages[(2, "mix_cpt")]
    assert option(mix["stage1"].command, "model.init_args.model_name_or_path") == "pre"
    assert option(mix["stage1"].command, "data.init_args.world.seed") == "2"
    assert option(mix["select"].command, "model") == str(mix["stage1"].export)
    assert option(mix["select"].command, "score") == "response_ppl"
    assert option(mix["select"].command, "world.seed") == "2"
    assert option(mix["sft"].command, "model.init_args.model_name_or_path") == str(
        mix["stage1"].export
    )
    sources = json.loads(option(mix["sft"].command, "data.init_args.train_sources"))
    assert sources[0]["path"] == str(mix["select"].directory / "selected_sft.jsonl")
    assert sources[0]["prompt_field"] == "prompt"
    assert option(mix["dpo"].command, "model.init_args.model_name_or_path") == str(
        mix["sft"].export
    )
    pairs = json.loads(option(mix["dpo"].command, "data.init_args.train_sources"))
    assert pairs == [{"path": str(mix["select"].directory / "selected_preference.jsonl")}]
    traditional = stages[(2, "traditional")]
    assert not any("train_source" in a for a in traditional["sft"].command)
    assert not any("train_source" in a for a in traditional["dpo"].command)
    expected = tmp_path / "seed2" / "stage1-world_traditional_cpt" / "version_0"
    assert traditional["stage1"].directory == expected


def metrics(domain: float, general: float) -> dict[str, float]:
    return {
        "knowledge/qa_em/domain": domain,
        "knowledge/qa_em/general": general,
        "knowledge/qa_em/general_bio_only": 0.5,
        "knowledge/qa_em/skill_addition": 0.25,
        "knowledge/qa_em/skill_reverse": 1.0,
        "knowledge/qa_em/skill_brackets": 0.75,
        "knowledge/kl_initial/general": 0.125,
    }


def test_the_markdown_has_the_three_tables_with_means_and_per_seed_values() -> None:
    rows = []
    for seed in (0, 1):
        for name in ("traditional", "mix_cpt", "random_selection"):
            rows.append(
                {
                    "variant": name,
                    "title": VARIANTS[name].title,
                    "seed": seed,
                    "pretrained": metrics(0.05, 0.9),
                    "stage1": metrics(0.2 + 0.1 * seed, 0.8),
                    "sft": metrics(0.1, 0.6),
                    "dpo": metrics(0.3 if name == "mix_cpt" else 0.1, 0.7),
                }
            )
    text = markdown(rows, {0: metrics(0.04, 0.81), 1: metrics(0.06, 0.79)})
    assert "| Mix-CPT | 30.0 (30.0 / 30.0) | 70.0 (70.0 / 70.0) |" in text
    assert "| reference: the world's `chat` model (no domain data) | 5.0 (4.0 / 6.0) |" in text
    assert "After SFT (before DPO)." in text
    stage1 = text.split("Stage 1")[1]
    assert "| `pretrained` (before stage 1) | 5.0 (5.0 / 5.0)" in stage1
    assert stage1.count("| `world` |") == 1  # mix_cpt and random_selection share the run
    assert "| `world_traditional_cpt` | 25.0 (20.0 / 30.0)" in stage1
    assert "0.125" in stage1


def test_the_command_line_defaults() -> None:
    options = mix_cpt_table.parse_options([])
    assert options.seeds == [0, 1, 2] and options.jobs == 2
    assert options.variants == list(VARIANTS)
    assert options.markdown == Path("docs/mix_cpt_table.md")
    with pytest.raises(SystemExit):
        mix_cpt_table.parse_options(["--variants", "nope"])


def fake_stage(kind: str, name: str, directory: Path, after: tuple[str, ...], log: Path) -> object:
    """A stage whose command writes what a finished fit (results, export) or selection (manifest
    with the fingerprint held in `<dir>.fingerprint`) leaves, and logs that it ran."""
    if kind == "fit":
        script = (
            "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); "
            "(d / 'export').mkdir(parents=True, exist_ok=True); "
            "(d / 'export' / 'config.json').write_text('{}'); "
            "(d / 'knowledge_eval.jsonl').write_text(json.dumps({'stage': 'fit_end'}) + '\\n')"
        )
    else:
        script = (
            "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(exist_ok=True); "
            "f = pathlib.Path(str(d) + '.fingerprint').read_text(); "
            "(d / 'manifest.json').write_text(json.dumps({'fingerprint': f}))"
        )
    logged = f"; open({str(log)!r}, 'a').write({name!r} + '\\n')"
    command = (sys.executable, "-c", script + logged, str(directory))
    return launch.Stage(kind, name, command, directory, after)


def test_a_new_output_retrains_every_stage_downstream_and_only_those(tmp_path) -> None:
    seed_dir = tmp_path / "seed0"
    ran = tmp_path / "ran.txt"
    stage1 = fake_stage("fit", "stage1-a", seed_dir / "stage1-a" / "version_0", (), ran)
    select = fake_stage("select", "select-a", seed_dir / "select-a", ("stage1-a",), ran)
    sft = fake_stage("fit", "sft-a", seed_dir / "sft-a" / "version_0", ("select-a",), ran)
    other = fake_stage("fit", "sft-b", seed_dir / "sft-b" / "version_0", ("stage1-a",), ran)
    pipeline = launch.Pipeline(0, [stage1, select, sft, other])
    seed_dir.mkdir(parents=True)
    (seed_dir / "select-a.fingerprint").write_text("one")

    def runs() -> list[str]:
        names = ran.read_text().split() if ran.exists() else []
        ran.unlink(missing_ok=True)
        return names

    launch.run_pipeline(pipeline, threads=1)
    assert runs() == ["stage1-a", "select-a", "sft-a", "sft-b"]
    launch.run_pipeline(pipeline, threads=1)  # the selection always runs, unchanged
    assert runs() == ["select-a"]
    (seed_dir / "select-a.fingerprint").write_text("two")  # e.g. another count or score
    launch.run_pipeline(pipeline, threads=1)
    assert runs() == ["select-a", "sft-a"]
