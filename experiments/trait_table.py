"""TRAIT on the synthetic world: one command, the tables of docs/trait.md.

    python -m experiments.trait_table --seeds 0 1 2 --jobs 2          # the tables
    python -m experiments.trait_table --seeds 0 --variants two_stage   # one variant

For every seed it builds (or reuses) the world's `pretrained` base model (`experiments.world_models`)
and runs, each a subprocess of its own and each reused when complete (an interrupted table resumes
where it stopped; a data command that produces a new output retrains the runs that read it):

1. **selection** (`python -m datamodules.selection run`), once per method, at the same token budget:
   the fastText domain classifier alone, with the quality filter, DSIR and random sampling
   (`experiments/configs/selection/world_<method>.yaml`), each scored against the world's
   ground-truth labels (precision and recall of the hidden in-domain pages, share of low quality);
2. **synthesis** (`python -m datamodules.synthesis`): task-oriented passages from the downstream
   tasks' training problems, with and without the enlightenment paragraph
   (`experiments/configs/synthesis/world.yaml`, `world_no_enlightenment.yaml`);
3. **training** (`python -m experiments fit`), every variant from `pretrained` with the same model,
   optimizer and steps (`experiments/configs/trait/`): CPT on the original in-domain data, + the
   selected data (stage 1 alone), two-stage (+ the synthetic passages), two-stage with passages
   without the enlightenment paragraph, and single-stage; each evaluated before (the base row) and
   after on the downstream tasks and on new-domain and general QA.

`--budget_tokens`, `--replay_ratio` and `--stage2_synthetic` override the selection budget and the
stage ratios (the W&B sweep `experiments/sweeps/trait_world.yaml` runs this command); their
defaults are the configs'. Rows go to `<output>/results.jsonl`, the markdown to `--markdown`.
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

log = logging.getLogger("experiments.trait_table")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SELECTION_METHODS = ("fasttext", "fasttext_quality", "dsir", "random")
"""Selection methods, `experiments/configs/selection/world_<method>.yaml`."""
PASSAGES = ("world", "world_no_enlightenment")
"""Synthetic passage sets, `experiments/configs/synthesis/<name>.yaml`."""
SOURCE_NAMES = ("domain", "selected", "synthetic", "general")
"""The train sources of every TRAIT data fragment, in order (the ratios index them)."""
STAGE1_STEPS = 90
TOTAL_STEPS = 150
TASKS = ("task_attribute_qa", "task_comparison", "task_same_value")


@dataclass(frozen=True)
class Variant:
    """A row of the downstream table: its config (`experiments/configs/trait/<config>.yaml`), the
    selection its `selected` source reads and the passages its `synthetic` source reads."""

    name: str
    title: str
    config: str
    selection: str = "fasttext_quality"
    passages: str = "world"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("cpt", "CPT on the original in-domain data", "world_cpt"),
        Variant("selected", "+ selected data (stage 1 alone)", "world_selected"),
        Variant("two_stage", "+ synthetic passages (two-stage TRAIT)", "world_two_stage"),
        Variant(
            "two_stage_no_enlightenment",
            "two-stage, passages without the enlightenment paragraph",
            "world_two_stage",
            passages="world_no_enlightenment",
        ),
        Variant("single_stage", "single-stage (all data in one stage)", "world_single_stage"),
        Variant("selected_dsir", "+ DSIR-selected data (stage 1 alone)", "world_selected", "dsir"),
        Variant(
            "selected_random", "+ randomly sampled data (stage 1 alone)", "world_selected", "random"
        ),
    )
}
DEFAULT_VARIANTS = ("cpt", "selected", "two_stage", "two_stage_no_enlightenment", "single_stage")

DOWNSTREAM_COLUMNS = {
    "knowledge/qa_em/task_attribute_qa": "attribute QA",
    "knowledge/qa_em/task_comparison": "comparison",
    "knowledge/qa_em/task_same_value": "same value",
    "task_mean": "task mean",
    "knowledge/qa_em/domain": "new-domain QA",
    "knowledge/qa_em/general": "general QA",
    "knowledge/qa_em/general_bio_only": "general QA (documents only)",
}
SELECTION_COLUMNS = {
    "precision": "in-domain precision",
    "recall": "in-domain recall",
    "low_quality_share": "low-quality share",
    "in_domain_high_quality_precision": "precision (in-domain and high quality)",
    "tokens_selected": "tokens",
    "selected": "documents",
}


@dataclass(frozen=True)
class Knobs:
    """The sweep's knobs; None keeps the configs' values (`stage_ratios` documents them)."""

    budget_tokens: int | None = None
    replay_ratio: float | None = None
    stage2_synthetic: float | None = None

    @property
    def given(self) -> bool:
        return any(
            v is not None for v in (self.budget_tokens, self.replay_ratio, self.stage2_synthetic)
        )

    @property
    def tag(self) -> str:
        """A directory name part for non-default knobs (distinct settings never share runs)."""
        parts = []
        if self.budget_tokens is not None:
            parts.append(f"b{self.budget_tokens}")
        if self.replay_ratio is not None:
            parts.append(f"r{self.replay_ratio:g}")
        if self.stage2_synthetic is not None:
            parts.append(f"s{self.stage2_synthetic:g}")
        return "-".join(parts)


def stage_ratios(replay: float = 0.1, synthetic: float = 2 / 3) -> dict[str, Any]:
    """Every variant's token ratios over `SOURCE_NAMES` from two knobs: the general replay share
    `replay` of every stage, and the passages' share `synthetic` of stage 2's other tokens (the
    rest split evenly between the domain articles and the selected documents). Stage 1 takes
    domain : selected = 2 : 1; the single stage has the tokens per source of the two stages
    (90 + 60 steps). The defaults give the configs' ratios (tested)."""
    keep = 1.0 - replay
    stage1 = [keep * 2 / 3, keep / 3, 0.0, replay]
    stage2 = [keep * (1 - synthetic) / 2, keep * (1 - synthetic) / 2, keep * synthetic, replay]
    w1, w2 = STAGE1_STEPS / TOTAL_STEPS, 1 - STAGE1_STEPS / TOTAL_STEPS
    return {
        "world_cpt": {"ratios": _rounded([keep, 0.0, 0.0, replay])},
        "world_selected": {"ratios": _rounded(stage1)},
        "world_single_stage": {
            "ratios": _rounded([w1 * a + w2 * b for a, b in zip(stage1, stage2)])
        },
        "world_two_stage": {
            "stages": [
                {"name": "knowledge", "ratios": _rounded(stage1), "steps": STAGE1_STEPS},
                {"name": "synthetic", "ratios": _rounded(stage2)},
            ]
        },
    }


def _rounded(values: Sequence[float]) -> list[float]:
    """Ratios rounded to 6 digits, the last one absorbing the rounding so they sum to 1."""
    out = [round(v, 6) for v in values]
    out[-1] = round(1.0 - sum(out[:-1]), 6)
    return out


def _command(
    module: str, config: Path, output: Path, seed: int, extra: Sequence[str]
) -> tuple[str, ...]:
    return (
        sys.executable,
        "-m",
        module,
        *(("run",) if module == "datamodules.selection" else ()),
        "--config",
        str(config),
        f"--output_dir={output}",
        f"--world.seed={seed}",
        *extra,
    )


def plan(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    pretrained: Mapping[int, Path],
    output: Path,
    knobs: Knobs = Knobs(),
    run_args: Sequence[str] = (),
) -> tuple[list[Pipeline], dict[int, dict[str, Stage]]]:
    """One pipeline per seed: the selections, the syntheses, then the variants' runs."""
    pipelines, stages_of = [], {}
    ratios = stage_ratios(
        0.1 if knobs.replay_ratio is None else knobs.replay_ratio,
        2 / 3 if knobs.stage2_synthetic is None else knobs.stage2_synthetic,
    )
    budget = [] if knobs.budget_tokens is None else [f"--budget_tokens={knobs.budget_tokens}"]
    for seed in seeds:
        seed_dir = output / (f"seed{seed}" + (f"-{knobs.tag}" if knobs.given else ""))
        stages: dict[str, Stage] = {}
        for method in SELECTION_METHODS:
            directory = seed_dir / f"selection-{method}"
            config = CONFIG_DIR / "selection" / f"world_{method}.yaml"
            command = _command(
                "datamodules.selection", config, directory, seed, [f"--seed={seed}", *budget]
            )
            stages[directory.name] = Stage("select", directory.name, command, directory)
        for passages in PASSAGES:
            directory = seed_dir / f"synthesis-{passages}"
            config = CONFIG_DIR / "synthesis" / f"{passages}.yaml"
            command = _command("datamodules.synthesis", config, directory, seed, ())
            stages[directory.name] = Stage("select", directory.name, command, directory)
        for variant in variants:
            selection = stages[f"selection-{variant.selection}"]
            synthesis = stages[f"synthesis-{variant.passages}"]
            sources = [
                {"path": "world:domain_documents", "name": "domain", "kind": "document"},
                {"path": str(selection.directory / "selected.jsonl"), "name": "selected"},
                {"path": str(synthesis.directory / "passages.jsonl"), "name": "synthetic"},
                {"path": "world:general_documents", "name": "general", "kind": "document"},
            ]
            overrides = [
                f"--seed_everything={seed}",
                f"--data.init_args.world.seed={seed}",
                f"--model.init_args.model_name_or_path={pretrained[seed]}",
                "--data.init_args.train_sources=" + json.dumps(sources),
            ]
            if knobs.replay_ratio is not None or knobs.stage2_synthetic is not None:
                for key, value in ratios[variant.config].items():
                    overrides.append(f"--data.init_args.{key}=" + json.dumps(value))
            name = f"fit-{variant.name}"
            stages[name] = Stage(
                "fit",
                name,
                tuple(
                    fit_command(
                        [CONFIG_DIR / "trait" / f"{variant.config}.yaml"],
                        [*overrides, *run_args],
                        seed_dir,
                        name,
                    )
                ),
                seed_dir / name / "version_0",
                after=(selection.name, synthesis.name),
                needs_export=False,
            )
        pipelines.append(Pipeline(seed, list(stages.values())))
        stages_of[seed] = stages
    return pipelines, stages_of


def with_task_mean(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics plus `task_mean`, the mean exact match over the three downstream tasks."""
    values = [metrics.get(f"knowledge/qa_em/{task}") for task in TASKS]
    out = dict(metrics)
    if all(v is not None for v in values):
        out["task_mean"] = statistics.fmean(values)  # type: ignore[arg-type]
    return out


def first_metrics(stage: Stage) -> dict[str, float]:
    """The metrics of a fit stage's evaluation before training (the base model's)."""
    from evaluation.selection import read_evaluations

    evaluations = read_evaluations(stage.results)
    return dict(evaluations[0]["metrics"])


def result_rows(
    variants: Sequence[Variant], seed: int, stages: Mapping[str, Stage]
) -> list[dict[str, Any]]:
    """The seed's rows: `kind: selection` per method, `kind: downstream` per variant and base."""
    rows: list[dict[str, Any]] = []
    for method in SELECTION_METHODS:
        directory = stages[f"selection-{method}"].directory
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
        rows.append({"kind": "selection", "seed": seed, "method": method, "metrics": metrics})
    for variant in variants:
        stage = stages[f"fit-{variant.name}"]
        if not rows or all(r.get("variant") != "base" for r in rows):
            rows.append(
                {
                    "kind": "downstream",
                    "seed": seed,
                    "variant": "base",
                    "title": "base (`pretrained`, before training)",
                    "metrics": with_task_mean(first_metrics(stage)),
                }
            )
        rows.append(
            {
                "kind": "downstream",
                "seed": seed,
                "variant": variant.name,
                "title": variant.title,
                "metrics": with_task_mean(last_metrics(stage)),
            }
        )
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _cell(values: Sequence[Any], key: str) -> str:
    if not values or any(v is None for v in values):
        return "–"
    mean = statistics.fmean(values)
    if key in ("tokens_selected", "selected"):
        return f"{mean:.0f}"
    return f"{_pct(mean)} ({' / '.join(_pct(v) for v in values)})"


def _table(rows: Sequence[Mapping[str, Any]], group: str, columns: Mapping[str, str]) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_row.setdefault(row[group], []).append(row)
    header = [group, *columns.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, members in by_row.items():
        members = sorted(members, key=lambda r: r["seed"])
        if [r["seed"] for r in members] != seeds:
            continue
        cells = [_cell([r["metrics"].get(key) for r in members], key) for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The selection table and the downstream table."""
    seeds = ", ".join(map(str, sorted({r["seed"] for r in rows})))
    selection = [r for r in rows if r["kind"] == "selection"]
    downstream = [{**r, "variant": r["title"]} for r in rows if r["kind"] == "downstream"]
    lines = [
        f"Selection against the world's ground-truth labels, at the same token budget (%, mean "
        f"over seeds {seeds}, per seed in brackets; tokens and documents: means).",
        "",
        *_table(selection, "method", SELECTION_COLUMNS),
        "",
        f"Exact match (%) after training, plain format, answers cut at the first newline; mean "
        f"over seeds {seeds} (per seed in brackets). Tasks: test splits on new-domain entities "
        "never in any training split.",
        "",
        *_table(downstream, "variant", DOWNSTREAM_COLUMNS),
    ]
    return "\n".join(lines) + "\n"


def world_models(seed: int, cache_dir: Path) -> Path:
    """The world's `pretrained` model of `seed` (built on first use, `experiments.world_models`)."""
    from experiments.world_models import build_world_models

    return build_world_models("default", seed, cache_dir, ["pretrained"])["pretrained"].path


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = table_parser(
        "python -m experiments.trait_table",
        __doc__.split("\n\n")[0],
        list(VARIANTS),
        DEFAULT_VARIANTS,
        "runs/trait_table",
        "docs/trait_table.md",
    )
    parser.add_argument("--budget_tokens", type=int, help="selection budget (default: config)")
    parser.add_argument("--replay_ratio", type=float, help="general replay share of every stage")
    parser.add_argument(
        "--stage2_synthetic", type=float, help="the passages' share of stage 2's non-replay tokens"
    )
    parser.add_argument(
        "--wandb", action="store_true", help="log the table's means to W&B (a sweep's run)"
    )
    return parser.parse_args(argv)


def log_to_wandb(rows: Sequence[Mapping[str, Any]], knobs: Knobs) -> None:
    """Means over seeds as `<variant>/<metric>` and `selection/<method>/<metric>` (W&B sweeps)."""
    import wandb

    run = wandb.init(config={k: v for k, v in vars(knobs).items() if v is not None})
    summary: dict[str, float] = {}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = row["variant"] if row["kind"] == "downstream" else f"selection/{row['method']}"
        groups.setdefault(key, []).append(row)
    for key, members in groups.items():
        for metric in members[0]["metrics"]:
            values = [m["metrics"].get(metric) for m in members]
            if all(isinstance(v, (int, float)) for v in values):
                summary[f"{key}/{metric.removeprefix('knowledge/')}"] = statistics.fmean(values)
    run.log(summary)
    run.finish()


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the pipelines and write the tables."""
    options = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.perf_counter()
    knobs = Knobs(options.budget_tokens, options.replay_ratio, options.stage2_synthetic)
    variants = [VARIANTS[name] for name in options.variants]
    pretrained = {seed: world_models(seed, options.cache_dir) for seed in options.seeds}
    pipelines, stages_of = plan(
        variants, options.seeds, pretrained, options.output, knobs, options.run_arg
    )
    wall, threads = run_pipelines(pipelines, options.jobs)
    rows = [row for seed in options.seeds for row in result_rows(variants, seed, stages_of[seed])]
    table = markdown(rows)
    footer = table_footer(pipelines, wall, options.jobs, threads, started)
    command_line = "python -m experiments.trait_table " + " ".join(argv or sys.argv[1:])
    write_table(rows, table, options.output, options.markdown, command_line, footer)
    if options.wandb:
        log_to_wandb(rows, knobs)
    return rows


if __name__ == "__main__":
    main()
