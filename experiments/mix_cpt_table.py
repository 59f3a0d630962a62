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
import os
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_file
from evaluation.selection import candidates_of_run
from experiments.launch import fit_command, is_complete, run_logged

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


@dataclass(frozen=True)
class Stage:
    """One subprocess of a pipeline: a `fit` run (its results in `knowledge_eval.jsonl`, its model
    in `export/`) or a selection (its `manifest.json`)."""

    kind: str  # "fit" or "select"
    name: str
    command: tuple[str, ...]
    directory: Path  # the run directory (fit) or the selection's output directory
    after: tuple[str, ...] = ()  # the names of the stages whose outputs it reads

    @property
    def results(self) -> Path:
        return self.directory / "knowledge_eval.jsonl"

    @property
    def export(self) -> Path:
        return self.directory / "export"

    @property
    def seed_dir(self) -> Path:
        """The directory of the seed's stages."""
        return self.directory.parents[1] if self.kind == "fit" else self.directory.parent

    @property
    def log_file(self) -> Path:
        """The subprocess's output."""
        return self.seed_dir / f"{self.name}.log"

    @property
    def wall_file(self) -> Path:
        """Where a finished stage's wall time is kept."""
        return self.seed_dir / f"{self.name}.wall_s"

    def is_complete(self) -> bool:
        """A fit stage with its final evaluation and export; a selection whose manifest exists."""
        if self.kind == "select":
            return (self.directory / "manifest.json").is_file()
        return is_complete(self.results) and (self.export / "config.json").is_file()


@dataclass
class Pipeline:
    """The stages of one seed's variants that share a stage-1 run, in the order they run."""

    seed: int
    stages: list[Stage] = field(default_factory=list)


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


def _selection_fingerprint(stage: Stage) -> str | None:
    try:
        manifest = json.loads((stage.directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("fingerprint")


def execute(stage: Stage, threads: int, stale: bool = False) -> tuple[float, bool]:
    """Run one stage; return (its wall time, whether it produced a new output).

    A complete fit stage is reused unless `stale` (a stage it reads from produced a new output).
    A selection always runs: the command itself skips when its output's fingerprint (model,
    candidates, settings) matches, and recomputes when any of them changed."""
    if stage.kind == "fit" and stage.is_complete() and not stale:
        log.info("reusing %s (complete)", stage.directory)
        try:
            return float(stage.wall_file.read_text(encoding="utf-8")), False
        except (OSError, ValueError):
            return 0.0, False
    before = _selection_fingerprint(stage) if stage.kind == "select" else None
    if stage.kind == "fit" and stage.directory.exists():
        shutil.rmtree(stage.directory)  # stale or interrupted: train it again
    log.info("running %s", stage.directory)
    code, wall = run_logged(stage.command, stage.log_file, threads)
    if code != 0 or not stage.is_complete():
        raise RuntimeError(f"{stage.directory} failed with exit code {code}; see {stage.log_file}")
    changed = stage.kind == "fit" or _selection_fingerprint(stage) != before
    if changed:
        stage.wall_file.write_text(f"{wall:.1f}\n", encoding="utf-8")
    log.info("finished %s in %.0f s%s", stage.directory, wall, "" if changed else " (reused)")
    return wall, changed


def run_pipeline(pipeline: Pipeline, threads: int) -> float:
    """Run a pipeline's stages in order, retraining every stage downstream of a new output;
    return their total wall time."""
    renewed: set[str] = set()
    total = 0.0
    for stage in pipeline.stages:
        wall, changed = execute(stage, threads, stale=bool(renewed & set(stage.after)))
        total += wall
        if changed:
            renewed.add(stage.name)
    return total


def last_metrics(stage: Stage) -> dict[str, float]:
    """The metrics of a fit stage's end-of-training evaluation."""
    found, _ = candidates_of_run(stage.results)
    return dict(max(found, key=lambda c: c.step).metrics)


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
    from experiments.world_models import DEFAULT_CACHE_DIR

    parser = argparse.ArgumentParser(
        prog="python -m experiments.mix_cpt_table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="the table's rows, in this order",
    )
    parser.add_argument("--jobs", type=int, default=2, help="pipelines at a time")
    parser.add_argument(
        "--cache_dir", type=Path, default=DEFAULT_CACHE_DIR, help="the world models' cache"
    )
    parser.add_argument("--output", type=Path, default=Path("runs/mix_cpt_table"))
    parser.add_argument("--markdown", type=Path, default=Path("docs/mix_cpt_table.md"))
    parser.add_argument(
        "--select_arg",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="an extra option of every selection, e.g. --select_arg=--count_sft=32 (repeatable)",
    )
    parser.add_argument(
        "--run_arg",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="an extra override of every fit run, e.g. --run_arg=--trainer.max_steps=4",
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
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        walls = list(pool.map(lambda p: run_pipeline(p, threads), pipelines))
    rows = [
        result_row(VARIANTS[name], seed, stages_of[(seed, name)], models[seed])
        for seed in options.seeds
        for name in options.variants
    ]
    with atomic_file(options.output / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    table = markdown(rows, {seed: base.chat_metrics for seed, base in models.items()})
    elapsed = time.perf_counter() - started
    footer = (
        f"\n{sum(len(p.stages) for p in pipelines)} stages, {sum(walls):.0f} s of subprocesses "
        f"(`--jobs {options.jobs}` pipelines at a time, {threads} thread(s) each); this invocation "
        f"took {elapsed:.0f} s.\n"
    )
    options.markdown.parent.mkdir(parents=True, exist_ok=True)
    command_line = "python -m experiments.mix_cpt_table " + " ".join(argv or sys.argv[1:])
    with atomic_file(options.markdown) as tmp:
        tmp.write_text(
            f"<!-- written by `{command_line.strip()}` -->\n\n" + table + footer, encoding="utf-8"
        )
    sys.stdout.write("\n" + table + footer)
    return rows


if __name__ == "__main__":
    main()
