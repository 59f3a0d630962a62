"""Mix-CPT against the traditional pipeline on the synthetic world: one command, the table of
docs/mix_cpt.md.

    python -m experiments.mix_cpt_table --seeds 0 1 2 --jobs 2          # the table
    python -m experiments.mix_cpt_table --seeds 0 --variants mix_cpt     # one pipeline

For every seed it builds (or reuses) the world's `pretrained` base model (`experiments.world_models`)
and runs, per variant, the chain of stages, each a subprocess of its own and each skipped when its
output is complete (so an interrupted table resumes where it stopped):

1. **stage 1** (`python -m experiments fit`): continual pre-training from `pretrained`, exporting its
   model — Mix-CPT's knowledge mixture with LSSD (`mix_cpt/world.yaml`), the same without LSSD
   (`world_no_lssd.yaml`), or the traditional CPT on the domain articles only
   (`world_traditional_cpt.yaml`). Variants with the same stage-1 config share its run;
2. **selection** (`python -m datamodules.format_alignment`): the stage-1 model scores the world's
   general instruction samples and preference pairs and keeps the few best aligned
   (`format_alignment/world.yaml`; `random` for the ablation) — the traditional pipeline skips it
   and uses the full sets;
3. **SFT** from the stage-1 export on the selected (or all) chat samples, exporting its model;
4. **DPO** from the SFT export on the selected (or all) pairs, the SFT model as the reference.

Every stage evaluates knowledge and skills when it ends (`KnowledgeEvalCallback`; what it starts
from was evaluated by the stage before, or by the world model's build): stage 1 in the plain format
of `pretrained`, SFT and DPO in the chat format. The table shows each
variant's scores after DPO and after SFT (mean over seeds, per-seed values in brackets), the
stage-1 scores, and the world's `chat` model (pretrained + SFT on general QA and the skills, no
domain data) for reference. Rows go to `<output>/results.jsonl`, the markdown to `--markdown`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.launch import (
    Pipeline,
    Stage,
    fit_command,
    last_metrics,
    run_pipelines,
    table_footer,
    table_parser,
    write_table,
)

log = logging.getLogger("experiments.mix_cpt_table")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SELECTION_CONFIG = CONFIG_DIR / "format_alignment" / "world.yaml"


@dataclass(frozen=True)
class Variant:
    """A row of the table: its command-line id, its title and its stages' configs.

    Attributes:
        score: The selection's score (`response_ppl`, `template_ratio`, `random`), or None for
            the full general sets (no selection: the traditional pipeline).
    """

    name: str
    title: str
    stage1: str
    score: str | None
    sft: str
    dpo: str

    @property
    def stage1_id(self) -> str:
        """The stage-1 run's id: variants with the same stage-1 config share the run."""
        return Path(self.stage1).stem


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "traditional",
            "traditional (CPT → SFT → DPO, full sets)",
            "mix_cpt/world_traditional_cpt.yaml",
            None,
            "mix_cpt/world_traditional_sft.yaml",
            "mix_cpt/world_traditional_dpo.yaml",
        ),
        Variant(
            "mix_cpt",
            "Mix-CPT",
            "mix_cpt/world.yaml",
            "response_ppl",
            "mix_cpt/world_sft.yaml",
            "mix_cpt/world_dpo.yaml",
        ),
        Variant(
            "no_lssd",
            "Mix-CPT without LSSD",
            "mix_cpt/world_no_lssd.yaml",
            "response_ppl",
            "mix_cpt/world_sft.yaml",
            "mix_cpt/world_dpo.yaml",
        ),
        Variant(
            "random_selection",
            "Mix-CPT, random selection",
            "mix_cpt/world.yaml",
            "random",
            "mix_cpt/world_sft.yaml",
            "mix_cpt/world_dpo.yaml",
        ),
    )
}

COLUMNS = {
    "knowledge/qa_em/domain": "new-domain QA",
    "knowledge/qa_em/general": "general QA",
    "knowledge/qa_em/general_bio_only": "documents-only half",
    "knowledge/qa_em/skill_addition": "addition",
    "knowledge/qa_em/skill_reverse": "reverse",
    "knowledge/qa_em/skill_brackets": "brackets",
}
"""Metric key → column title (exact match, chat format after SFT and DPO)."""

STAGE1_COLUMNS = {
    "knowledge/qa_em/domain": "new-domain QA (plain)",
    "knowledge/qa_em/general": "general QA (plain)",
    "knowledge/qa_em/general_bio_only": "documents-only half (plain)",
    "knowledge/kl_initial/general": "KL(initial ‖ stage 1)",
}


def _fit(
    config: str,
    name: str,
    seed: int,
    seed_dir: Path,
    model: Path,
    extra: Sequence[str],
    after: Sequence[str] = (),
) -> Stage:
    overrides = [
        f"--seed_everything={seed}",
        f"--data.init_args.world.seed={seed}",
        f"--model.init_args.model_name_or_path={model}",
        *extra,
    ]
    command = fit_command([CONFIG_DIR / config], overrides, seed_dir, name)
    return Stage("fit", name, tuple(command), seed_dir / name / "version_0", tuple(after))


def _select(
    variant: Variant, seed: int, seed_dir: Path, model: Path, counts: Sequence[str]
) -> Stage:
    directory = seed_dir / f"select-{variant.stage1_id}-{variant.score}"
    command = [
        sys.executable,
        "-m",
        "datamodules.format_alignment",
        "--config",
        str(SELECTION_CONFIG),
        f"--model={model}",
        f"--output_dir={directory}",
        f"--world.seed={seed}",
        f"--score={variant.score}",
        f"--seed={seed}",
        *counts,
    ]
    stage1 = f"stage1-{variant.stage1_id}"
    return Stage("select", directory.name, tuple(command), directory, (stage1,))


def plan(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    pretrained: Mapping[int, Path],
    output: Path,
    counts: Sequence[str] = (),
    run_args: Sequence[str] = (),
) -> tuple[list[Pipeline], dict[tuple[int, str], dict[str, Stage]]]:
    """The pipelines to run (one per seed and stage-1 run) and, per (seed, variant), its stages."""
    pipelines: dict[tuple[int, str], Pipeline] = {}
    stages_of: dict[tuple[int, str], dict[str, Stage]] = {}
    for seed in seeds:
        seed_dir = output / f"seed{seed}"
        for variant in variants:
            pipeline = pipelines.setdefault((seed, variant.stage1_id), Pipeline(seed))
            stage1 = _fit(
                variant.stage1,
                f"stage1-{variant.stage1_id}",
                seed,
                seed_dir,
                pretrained[seed],
                run_args,
            )
            if stage1 not in pipeline.stages:
                pipeline.stages.append(stage1)
            mine = {"stage1": stage1}
            sft_data: list[str] = []
            dpo_data: list[str] = []
            if variant.score is not None:
                select = _select(variant, seed, seed_dir, stage1.export, counts)
                if select not in pipeline.stages:
                    pipeline.stages.append(select)
                mine["select"] = select
                sft_data = [
                    "--data.init_args.train_sources="
                    + json.dumps(
                        [
                            {
                                "path": str(select.directory / "selected_sft.jsonl"),
                                "name": "sft",
                                "kind": "sample",
                                "prompt_field": "prompt",
                            }
                        ]
                    )
                ]
                dpo_data = [
                    "--data.init_args.train_sources="
                    + json.dumps([{"path": str(select.directory / "selected_preference.jsonl")}])
                ]
            mine["sft"] = _fit(
                variant.sft,
                f"sft-{variant.name}",
                seed,
                seed_dir,
                stage1.export,
                [*sft_data, *run_args],
                after=[stage1.name, *([mine["select"].name] if "select" in mine else [])],
            )
            mine["dpo"] = _fit(
                variant.dpo,
                f"dpo-{variant.name}",
                seed,
                seed_dir,
                mine["sft"].export,
                [*dpo_data, *run_args],
                after=[mine["sft"].name, *([mine["select"].name] if "select" in mine else [])],
            )
            pipeline.stages += [mine["sft"], mine["dpo"]]
            stages_of[(seed, variant.name)] = mine
    return list(pipelines.values()), stages_of


@dataclass(frozen=True)
class BaseModels:
    """A seed's world base models: `pretrained` (where every stage 1 starts) and the metrics of it
    and of `chat`, from their manifests (the same evaluation as the stages')."""

    pretrained: Path
    pretrained_metrics: Mapping[str, float]
    chat_metrics: Mapping[str, float]


def result_row(
    variant: Variant, seed: int, stages: Mapping[str, Stage], base: BaseModels
) -> dict[str, Any]:
    """A variant's scores on one seed after each stage, and its initial model's."""
    return {
        "variant": variant.name,
        "title": variant.title,
        "seed": seed,
        "pretrained": dict(base.pretrained_metrics),
        "stage1": last_metrics(stages["stage1"]),
        "sft": last_metrics(stages["sft"]),
        "dpo": last_metrics(stages["dpo"]),
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _cell(values: Sequence[float | None], key: str) -> str:
    if not values or any(v is None for v in values):
        return "–"
    if key.startswith("knowledge/kl_"):
        return f"{statistics.fmean(values):.3f}"
    mean = statistics.fmean(values)
    return f"{_pct(mean)} ({' / '.join(_pct(v) for v in values)})"


def _table(
    title: str, rows: Sequence[Mapping[str, Any]], stage: str, columns: Mapping[str, str]
) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["title"], []).append(row)
    header = ["variant", *columns.values()]
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, group in by_variant.items():
        group = sorted(group, key=lambda r: r["seed"])
        if [r["seed"] for r in group] != seeds:
            continue
        cells = [_cell([r[stage].get(key) for r in group], key) for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(
    rows: Sequence[Mapping[str, Any]], chat_base: Mapping[int, Mapping[str, float]]
) -> str:
    """The three tables: after DPO (with the world's `chat` model as reference), after SFT, stage 1."""
    seeds = sorted({r["seed"] for r in rows})
    seed_text = ", ".join(map(str, seeds))
    after_dpo = _table(
        f"After DPO: exact match (%) in the chat format, mean over seeds {seed_text} (per seed in "
        "brackets).",
        rows,
        "dpo",
        COLUMNS,
    )
    reference = [_cell([chat_base.get(s, {}).get(key) for s in seeds], key) for key in COLUMNS]
    after_dpo.append(
        "| reference: the world's `chat` model (no domain data) | " + " | ".join(reference) + " |"
    )
    after_sft = _table("After SFT (before DPO).", rows, "sft", COLUMNS)
    runs: list[Mapping[str, Any]] = []
    initial: dict[int, Mapping[str, Any]] = {}
    seen: set[tuple[str, int]] = set()
    for row in rows:
        stage1_id = VARIANTS[row["variant"]].stage1_id
        if (stage1_id, row["seed"]) not in seen:
            seen.add((stage1_id, row["seed"]))
            runs.append({**row, "title": f"`{stage1_id}`"})
        initial.setdefault(
            row["seed"],
            {**row, "title": "`pretrained` (before stage 1)", "stage1": row["pretrained"]},
        )
    stage1 = _table(
        "Stage 1 (continual pre-training), plain format: the initial `pretrained` model, then each "
        "stage-1 config's run.",
        [*initial.values(), *runs],
        "stage1",
        STAGE1_COLUMNS,
    )
    return "\n".join([*after_dpo, "", *after_sft, "", *stage1]) + "\n"


def world_models(seed: int, cache_dir: Path) -> BaseModels:
    """The world's base models of `seed` (built on first use, `experiments.world_models`)."""
    from experiments.world_models import build_world_models

    built = build_world_models("default", seed, cache_dir, ["pretrained", "chat"])
    return BaseModels(
        built["pretrained"].path, dict(built["pretrained"].metrics), dict(built["chat"].metrics)
    )


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = table_parser(
        "python -m experiments.mix_cpt_table",
        __doc__.split("\n\n")[0],
        list(VARIANTS),
        list(VARIANTS),
        "runs/mix_cpt_table",
        "docs/mix_cpt_table.md",
    )
    parser.add_argument(
        "--select_arg",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="an extra option of every selection, e.g. --select_arg=--count_sft=32 (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the pipelines and write the table."""
    options = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.perf_counter()
    variants = [VARIANTS[name] for name in options.variants]
    models = {seed: world_models(seed, options.cache_dir) for seed in options.seeds}
    pipelines, stages_of = plan(
        variants,
        options.seeds,
        {seed: base.pretrained for seed, base in models.items()},
        options.output,
        options.select_arg,
        options.run_arg,
    )
    wall, threads = run_pipelines(pipelines, options.jobs)
    rows = [
        result_row(VARIANTS[name], seed, stages_of[(seed, name)], models[seed])
        for seed in options.seeds
        for name in options.variants
    ]
    table = markdown(rows, {seed: base.chat_metrics for seed, base in models.items()})
    footer = table_footer(pipelines, wall, options.jobs, threads, started)
    command_line = "python -m experiments.mix_cpt_table " + " ".join(argv or sys.argv[1:])
    write_table(rows, table, options.output, options.markdown, command_line, footer)
    return rows


if __name__ == "__main__":
    main()
