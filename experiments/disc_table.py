"""DiSC and its six baselines on one target: one command, the table of docs/disc.md.

    python -m experiments.disc_table --seeds 0 1 2 --jobs 2                 # the synthetic world
    python -m experiments.disc_table --target smollm2 --jobs 1              # SmolLM2-135M-Instruct

A target (`TARGETS`) names the methods' experiment configs, the model they start from, the table's
columns and its defaults. `world`: for every seed it builds (or reuses) the world's `chat` model
(`experiments.world_models`) and runs every method's config (`experiments/configs/disc/world*.yaml`)
from it, the world's seed set to the run's; the columns are new-domain QA, general QA and the
skills. `smollm2`: SmolLM2-135M-Instruct as its configs name it (`disc/smollm2_*.yaml`, the GGUF file
of `make real`) on the fictional corpus (`datamodules.fictional`), one seed; the columns are the QA
on the new facts and the retention set. Every method runs at each learning rate of its grid,
evaluating the new knowledge and the retained capabilities before training and every
`ceil(max_steps / --evals)` optimizer steps (the "before" evaluation once per starting model,
`initial_cache_dir`). Each method's reported checkpoint is the paper's rule over
all of them (`evaluation.selection`): the best new-knowledge score whose drop on every retained
capability is at most `--threshold`. The rows go to `<output>/results.jsonl`, the markdown table to
`--markdown` and stdout.

Runs are subprocesses of `python -m experiments fit`, `--jobs` at a time, each with
`cores / jobs` threads; a run whose results are complete is reused, so an interrupted table resumes
where it stopped. Everything a run does is in its config: the table adds only the seed, the base
model (world), the learning rate, the evaluation cadence and where the logs go.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.atomic import atomic_file
from evaluation.selection import NEW_KNOWLEDGE, Selection, candidates_of_run, select_over_runs
from experiments.launch import fit_command, is_complete, run_logged

log = logging.getLogger("experiments.disc_table")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Method:
    """A row of the table: its command-line id, the name the table shows, its experiment config, its
    learning-rate grid, extra CLI overrides (`{model}` is replaced by the base model's path)."""

    name: str
    title: str
    config: str
    lrs: tuple[float, ...]
    overrides: tuple[str, ...] = ()


def _methods(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


METHODS: dict[str, Method] = _methods(
    Method("ft", "FT", "disc/world_ft.yaml", (3e-4, 1e-3)),
    Method("ft_kl", "FT+KL", "disc/world_ft_kl.yaml", (3e-4, 1e-3)),
    Method("lora", "LoRA FT", "disc/world_lora.yaml", (1e-3, 3e-3)),
    Method("talr", "TALR", "disc/world_talr.yaml", (3e-4, 1e-3)),
    Method("rephrase", "Rephrase", "disc/world_rephrase.yaml", (3e-4, 1e-3)),
    Method("cd_base", "CD-base", "disc/world_cd_base.yaml", (3e-4, 1e-3)),
    Method("disc", "DiSC", "disc/world.yaml", (3e-4, 1e-3)),
)
"""The world's methods (`--target world`)."""

COLUMNS = {
    NEW_KNOWLEDGE: "new-domain QA",
    "knowledge/qa_em/general": "general QA",
    "knowledge/qa_em/general_bio_only": "documents-only half",
    "knowledge/qa_em/skill_addition": "addition",
    "knowledge/qa_em/skill_reverse": "reverse",
    "knowledge/qa_em/skill_brackets": "brackets",
}
"""The world's columns, metric key → title; the first is the new-knowledge score."""

SMOLLM2_METHODS: dict[str, Method] = _methods(
    Method("ft", "FT", "disc/smollm2_ft.yaml", (1e-5, 3e-5)),
    Method("ft_kl", "FT+KL", "disc/smollm2_ft_kl.yaml", (1e-5, 3e-5)),
    Method("lora", "LoRA FT", "disc/smollm2_lora.yaml", (1e-4, 3e-4)),
    Method("talr", "TALR", "disc/smollm2_talr.yaml", (1e-5, 3e-5)),
    Method("rephrase", "Rephrase", "disc/smollm2_rephrase.yaml", (1e-5, 3e-5)),
    Method("cd_base", "CD-base", "disc/smollm2_cd_base.yaml", (1e-5, 3e-5)),
    Method("disc", "DiSC", "disc/smollm2_disc.yaml", (1e-5, 3e-5)),
)
"""SmolLM2-135M-Instruct's methods (`--target smollm2`). The grids are an assumption, not the result
of a sweep: with the table's recipe (AdamW from step 0, no warm-up, a constant lr) two steps at
1e-4 (LoRA: 1e-3) already cost FT, FT+KL, TALR, Rephrase and LoRA 10 points of retention, twice
the rule's 5 (DiSC and CD-base 5), so full-weight methods try 1e-5 and 3e-5 and LoRA, whose
adapters start at zero, ten times more."""

SMOLLM2_COLUMNS = {
    "knowledge/qa_em/fictional": "new-facts QA",
    "knowledge/qa_em/retention": "retention",
}
"""SmolLM2's columns (`FictionalDataModule.evaluation_sets()`): the 64 questions on the new facts,
the 20 general questions whose answers the model gave before training."""


def world_chat_model(seed: int, cache_dir: Path) -> Path:
    """The world's `chat` base model of `seed`, built on first use (`experiments.world_models`)."""
    from experiments.world_models import build_world_models

    return build_world_models("default", seed, cache_dir, ["chat"])["chat"].path


@dataclass(frozen=True, eq=False)
class Target:
    """What one table is about: its methods, its columns, how its runs start, its defaults.

    Attributes:
        name: The `--target` id.
        methods: The table's rows by command-line id, in order.
        columns: Metric key → column title; the first key is the new-knowledge score.
        retained: The retained capabilities the rule bounds; None: the rule's default
            (`evaluation.selection.retained_keys` of the initial model: general QA and skills).
        seeds: The default `--seeds`.
        evals: The default `--evals`.
        jobs: The default `--jobs`.
        output: The default `--output`.
        markdown: The default `--markdown`.
        base_model: `(seed, cache_dir) -> path` of the model the runs of a seed start from (their
            `model_name_or_path`); None: the configs' own model.
        seed_overrides: CLI overrides of every run, `{seed}` replaced by the run's seed.
        kl_column: The metric of KL(initial ‖ adapted) on held-out text shown in the runs' table,
            or None.
    """

    name: str
    methods: Mapping[str, Method]
    columns: Mapping[str, str]
    retained: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    evals: int = 5
    jobs: int = 1
    output: Path = Path("runs/disc_table")
    markdown: Path = Path("docs/disc_table.md")
    base_model: Callable[[int, Path], Path] | None = None
    seed_overrides: tuple[str, ...] = ()
    kl_column: str | None = None

    @property
    def new_knowledge(self) -> str:
        """The metric the rule maximizes: the first column's."""
        return next(iter(self.columns))


WORLD = Target(
    name="world",
    methods=METHODS,
    columns=COLUMNS,
    seeds=(0, 1, 2),
    evals=4,  # every 2 of the 8 passes
    jobs=2,
    output=Path("runs/disc_table"),
    markdown=Path("docs/disc_table.md"),
    base_model=world_chat_model,
    seed_overrides=("--data.init_args.world.seed={seed}",),
    kl_column="knowledge/kl_initial/general",
)
SMOLLM2 = Target(
    name="smollm2",
    methods=SMOLLM2_METHODS,
    columns=SMOLLM2_COLUMNS,
    retained=("knowledge/qa_em/retention",),
    seeds=(0,),
    evals=2,  # once per pass over the corpus
    jobs=1,
    output=Path("runs/disc_table_smollm2"),
    markdown=Path("docs/disc_table_smollm2.md"),
)
TARGETS: dict[str, Target] = {t.name: t for t in (WORLD, SMOLLM2)}


@dataclass(frozen=True)
class Run:
    """One training run of the table (`base_model` None: the config's own model)."""

    method: Method
    seed: int
    lr: float
    base_model: Path | None
    seed_dir: Path
    target: Target = WORLD

    @property
    def name(self) -> str:
        return f"{self.method.name}-lr{self.lr:g}"

    @property
    def directory(self) -> Path:
        return self.seed_dir / self.name / "version_0"

    @property
    def results(self) -> Path:
        return self.directory / "knowledge_eval.jsonl"


def config_max_steps(config: Path) -> int:
    """`trainer.max_steps` of an experiment config."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    try:
        return int(data["trainer"]["max_steps"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{config}: trainer.max_steps must be set for the table") from None


def evaluation_overlay(config: Path, evals: int, out_dir: Path) -> Path:
    """A `--config` overlay: the config's callbacks with step evaluations `evals` times per run
    (every `ceil(max_steps / evals)` steps, the last at the end) and the "before" evaluation shared
    by the runs that start from the same weights (`initial_cache_dir`: `<out_dir>/initial_evals`)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    callbacks = data["trainer"]["callbacks"]
    if isinstance(callbacks, str):
        callbacks = yaml.safe_load((config.parent / callbacks).read_text(encoding="utf-8"))
    every = max(1, math.ceil(config_max_steps(config) / evals))
    for callback in callbacks:
        if callback["class_path"].endswith("KnowledgeEvalCallback"):
            init_args = callback.setdefault("init_args", {})
            init_args["every_n_train_steps"] = every
            init_args["initial_cache_dir"] = str(out_dir / "initial_evals")
    overlay = out_dir / f"eval-{config.stem}-{evals}.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}), encoding="utf-8")
    return overlay


def command(run: Run, overlay: Path, extra: Sequence[str]) -> list[str]:
    """The `python -m experiments fit` command line of a run."""
    if run.base_model is None:
        if any("{model}" in o for o in run.method.overrides):
            raise ValueError(f"{run.method.name}: an override names {{model}}; the run has none")
        model = []
    else:
        model = [f"--model.init_args.model_name_or_path={run.base_model}"]
    overrides = [o.format(model=run.base_model) for o in run.method.overrides]
    return fit_command(
        [CONFIG_DIR / run.method.config, overlay],
        [
            f"--seed_everything={run.seed}",
            *(o.format(seed=run.seed) for o in run.target.seed_overrides),
            *model,
            f"--model.init_args.optimizer.init_args.lr={run.lr}",
            *overrides,
            *extra,
        ],
        run.seed_dir,
        run.name,
    )


def execute(run: Run, overlay: Path, extra: Sequence[str], threads: int) -> float:
    """Run one training (skipped when complete); returns its wall time. Output goes to `train.log`."""
    wall_file = run.directory.parent / "wall_s"
    if is_complete(run.results):
        log.info("reusing %s seed %d (complete)", run.name, run.seed)
        try:
            return float(wall_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0.0
    if run.directory.exists():
        shutil.rmtree(run.directory)  # an interrupted run: start it again
    run.directory.mkdir(parents=True)
    log.info("running %s seed %d", run.name, run.seed)
    log_file = run.directory.parent / "train.log"
    code, wall = run_logged(command(run, overlay, extra), log_file, threads)
    if code != 0 or not is_complete(run.results):
        raise RuntimeError(
            f"{run.name} (seed {run.seed}) failed with exit code {code}; see {log_file}"
        )
    wall_file.write_text(f"{wall:.1f}\n", encoding="utf-8")
    log.info("finished %s seed %d in %.0f s", run.name, run.seed, wall)
    return wall


def select_method(runs: Sequence[Run], threshold: float) -> Selection:
    """The rule over one method's runs of one seed (its learning-rate grid) with the target's
    new-knowledge score and retained capabilities (`evaluation.selection.select_over_runs`)."""
    target = runs[0].target
    return select_over_runs(
        [r.results for r in runs],
        lrs=[r.lr for r in runs],
        threshold=threshold,
        target=target.new_knowledge,
        retained=target.retained,
    )


def selection_row(method: str, seed: int, runs: Sequence[Run], threshold: float) -> dict[str, Any]:
    """The selected checkpoint of one method on one seed, as a JSON-able row."""
    target = runs[0].target
    chosen = select_method(runs, threshold)
    columns = target.columns
    return {
        "target": target.name,
        "method": target.methods[method].title,
        "seed": seed,
        "lrs": [r.lr for r in runs],
        "selected_lr": None if chosen.is_base else chosen.chosen.lr,
        "selected_step": chosen.chosen.step,
        "is_base": chosen.is_base,
        "eligible": chosen.eligible,
        "candidates": chosen.candidates,
        "metrics": {k: chosen.chosen.metrics[k] for k in columns if k in chosen.chosen.metrics},
        "base": {k: chosen.base[k] for k in columns if k in chosen.base},
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(
    rows: Sequence[Mapping[str, Any]], threshold: float, target: Target | None = None
) -> str:
    """Per method: mean over seeds of each of the target's columns at the selected checkpoint, the
    per-seed values, and the learning rates tried; the base model first. `target` defaults to the
    rows' own (`selection_row`'s `target`; the world for rows without one)."""
    if target is None:
        target = TARGETS[rows[0].get("target", WORLD.name)]
    columns = target.columns
    seeds = sorted({r["seed"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["seed"]): r for r in rows}
    header = ["method", *columns.values(), "selected (lr @ step, per seed)", "lrs tried"]
    lines = [
        f"Exact match (%), mean over seeds {', '.join(map(str, seeds))}, at each method's checkpoint "
        f"selected by the rule (best {columns[target.new_knowledge]} with every retained drop ≤ "
        f"{100 * threshold:g} points; the initial model when nothing qualifies). Per-seed values "
        "in brackets.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]

    def cells(get) -> list[str]:
        out = []
        for key in columns:
            values = [get(seed).get(key) for seed in seeds]
            if any(v is None for v in values):
                out.append("–")
                continue
            mean = statistics.fmean(values)
            out.append(f"{_pct(mean)} ({' / '.join(_pct(v) for v in values)})")
        return out

    first = methods[0]
    lines.append("| base | " + " | ".join(cells(lambda s: by[(first, s)]["base"])) + " | – | – |")
    for method in methods:
        picks = []
        for seed in seeds:
            row = by[(method, seed)]
            picks.append(
                "base" if row["is_base"] else f"{row['selected_lr']:g} @ {row['selected_step']}"
            )
        lrs = ", ".join(f"{lr:g}" for lr in by[(method, seeds[0])]["lrs"])
        lines.append(
            f"| {method} | "
            + " | ".join(cells(lambda s, m=method: by[(m, s)]["metrics"]))
            + f" | {'; '.join(picks)} | {lrs} |"
        )
    return "\n".join(lines) + "\n"


def final_row(run: Run) -> dict[str, Any]:
    """A run's last evaluation (the end of training), as a JSON-able row."""
    found, _ = candidates_of_run(run.results, lr=run.lr)
    last = max(found, key=lambda c: c.step)
    keys = [*run.target.columns, *([run.target.kl_column] if run.target.kl_column else [])]
    return {
        "target": run.target.name,
        "method": run.method.title,
        "seed": run.seed,
        "lr": run.lr,
        "step": last.step,
        "metrics": {k: last.metrics[k] for k in keys if k in last.metrics},
    }


def runs_markdown(rows: Sequence[Mapping[str, Any]], target: Target) -> str:
    """Every (method, lr) at the end of training, mean over seeds: the trade-off the rule sees."""
    columns = dict(target.columns)
    if target.kl_column:
        columns[target.kl_column] = "KL(initial ‖ adapted)"
    seeds = sorted({r["seed"] for r in rows})
    header = ["method", "lr", "steps", *columns.values()]
    lines = [
        f"Every run at the end of training, mean over seeds {', '.join(map(str, seeds))} "
        "(exact match in %"
        + ("; the KL in nats per token on held-out general text)." if target.kl_column else ")."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["lr"]), []).append(row)
    for (method, lr), group in groups.items():
        cells = []
        for key in columns:
            values = [r["metrics"].get(key) for r in group]
            if any(v is None for v in values):
                cells.append("–")
            elif key == target.kl_column:
                cells.append(f"{statistics.fmean(values):.3f}")
            else:
                cells.append(_pct(statistics.fmean(values)))
        lines.append(f"| {method} | {lr:g} | {group[0]['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_lr_overrides(
    values: Sequence[str], methods: Mapping[str, Method] = METHODS
) -> dict[str, tuple[float, ...]]:
    """`NAME=lr,lr,...` → {NAME: (lr, ...)}, NAME one of `methods`."""
    grids = {}
    for value in values:
        name, sep, lrs = value.partition("=")
        if not sep or name not in methods:
            raise SystemExit(
                f"--lrs {value!r}: expected METHOD=lr,lr with METHOD in {list(methods)}"
            )
        try:
            grids[name] = tuple(float(x) for x in lrs.split(","))
        except ValueError:
            raise SystemExit(f"--lrs {value!r}: learning rates must be numbers") from None
    return grids


def plan(
    target: Target,
    seeds: Sequence[int],
    grids: Mapping[str, Sequence[float]],
    output: Path,
    base_models: Mapping[int, Path | None] | None = None,
) -> list[Run]:
    """Every run of a table: per seed, per method of `grids` (in its order), per learning rate;
    `base_models[seed]` is the model of a seed's runs (default: the configs' own)."""
    models = base_models or {}
    return [
        Run(target.methods[name], seed, lr, models.get(seed), output / f"seed{seed}", target)
        for seed in seeds
        for name, lrs in grids.items()
        for lr in lrs
    ]


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with the target's defaults for what it leaves out."""
    from experiments.world_models import DEFAULT_CACHE_DIR

    parser = argparse.ArgumentParser(
        prog="python -m experiments.disc_table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--target", choices=list(TARGETS), default=WORLD.name)
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="default: the target's (world 0 1 2, smollm2 0)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(dict.fromkeys(m for t in TARGETS.values() for m in t.methods)),
        help="the table's rows, in this order (default: all the target's methods)",
    )
    parser.add_argument(
        "--lrs", nargs="*", default=[], metavar="METHOD=LR,LR", help="replace a method's lr grid"
    )
    parser.add_argument(
        "--evals", type=int, help="step evaluations per run (default: world 4, smollm2 2)"
    )
    parser.add_argument("--threshold", type=float, default=0.05, help="largest allowed drop")
    parser.add_argument("--jobs", type=int, help="runs at a time (default: world 2, smollm2 1)")
    parser.add_argument(
        "--cache_dir", type=Path, default=DEFAULT_CACHE_DIR, help="the world models' cache"
    )
    parser.add_argument(
        "--output", type=Path, help="default: runs/disc_table (world), runs/disc_table_smollm2"
    )
    parser.add_argument(
        "--markdown", type=Path, help="default: docs/disc_table.md, docs/disc_table_smollm2.md"
    )
    parser.add_argument(
        "--run_arg",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="an extra override of every run, e.g. --run_arg=--trainer.max_steps=4 (repeatable)",
    )
    options = parser.parse_args(argv)
    target = TARGETS[options.target]
    options.target = target
    options.seeds = options.seeds or list(target.seeds)
    unknown = [m for m in options.methods or () if m not in target.methods]
    if unknown:
        parser.error(f"--methods {unknown}: target {target.name} has {list(target.methods)}")
    options.methods = options.methods or list(target.methods)
    options.evals = options.evals or target.evals
    options.jobs = options.jobs or target.jobs
    options.output = options.output or target.output
    options.markdown = options.markdown or target.markdown
    return options


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the table and write it."""
    options = parse_options(argv)
    target: Target = options.target
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    grids = {name: target.methods[name].lrs for name in options.methods}
    grids.update(parse_lr_overrides(options.lrs, target.methods))
    started = time.perf_counter()

    base_models = {
        seed: None if target.base_model is None else target.base_model(seed, options.cache_dir)
        for seed in options.seeds
    }
    runs = plan(target, options.seeds, grids, options.output, base_models)
    overlays = {
        m: evaluation_overlay(CONFIG_DIR / target.methods[m].config, options.evals, options.output)
        for m in options.methods
    }
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    reused = sum(is_complete(r.results) for r in runs)
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        walls = list(
            pool.map(lambda r: execute(r, overlays[r.method.name], options.run_arg, threads), runs)
        )
    rows = []
    for seed in options.seeds:
        for name in options.methods:
            mine = [r for r in runs if r.seed == seed and r.method.name == name]
            rows.append(selection_row(name, seed, mine, options.threshold))
    bases = {json.dumps(r["base"], sort_keys=True) for r in rows if r["seed"] == options.seeds[0]}
    if len(bases) != 1:
        raise RuntimeError("the methods' runs of one seed started from different models")
    elapsed = time.perf_counter() - started
    with atomic_file(options.output / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    finals = [final_row(r) for r in runs]
    with atomic_file(options.output / "runs.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in finals))
    table = markdown(rows, options.threshold, target) + "\n" + runs_markdown(finals, target)
    footer = (
        f"\n{len(runs)} runs, {sum(walls):.0f} s of training runs (each in its own process, "
        f"`--jobs {options.jobs}` at a time, {threads} thread(s) each); this invocation took "
        f"{elapsed:.0f} s and reused {reused} finished runs.\n"
    )
    options.markdown.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(options.markdown) as tmp:
        command_line = "python -m experiments.disc_table " + " ".join(argv or sys.argv[1:])
        tmp.write_text(
            f"<!-- written by `{command_line.strip()}` -->\n\n" + table + footer, encoding="utf-8"
        )
    sys.stdout.write("\n" + table + footer)
    return rows


if __name__ == "__main__":
    main()
