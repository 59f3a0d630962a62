"""DiSC and its six baselines on the synthetic world: one command, the table of docs/disc.md.

    python -m experiments.disc_table --seeds 0 1 2 --jobs 2

For every seed it builds (or reuses) the world's `chat` model (`experiments.world_models`), then
runs every method's experiment config (`experiments/configs/disc/world*.yaml`) from it at each
learning rate of the method's grid, evaluating new-domain QA, general QA and the skills before
training and every `max_steps / --evals` optimizer steps. Each method's reported checkpoint is the
paper's rule over all of them (`evaluation.selection`): the best new-domain score whose drop on
every retained capability is at most `--threshold`. The rows go to `<output>/results.jsonl`, the
markdown table to `--markdown` and stdout.

Runs are subprocesses of `python -m experiments fit`, `--jobs` at a time, each with
`cores / jobs` threads; a run whose results are complete is reused, so an interrupted table resumes
where it stopped. Everything a run does is in its config: the table adds only the seed, the base
model, the learning rate, the evaluation cadence and where the logs go.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.atomic import atomic_file
from evaluation.selection import NEW_KNOWLEDGE, Selection, select_over_runs

log = logging.getLogger("experiments.disc_table")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REPO = CONFIG_DIR.parents[1]


@dataclass(frozen=True)
class Method:
    """A row of the table: its command-line id, the name the table shows, its experiment config, its
    learning-rate grid, extra CLI overrides (`{model}` is replaced by the base model's path)."""

    name: str
    title: str
    config: str
    lrs: tuple[float, ...]
    overrides: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ft", "FT", "disc/world_ft.yaml", (3e-4, 1e-3)),
        Method("ft_kl", "FT+KL", "disc/world_ft_kl.yaml", (3e-4, 1e-3)),
        Method("lora", "LoRA FT", "disc/world_lora.yaml", (1e-3, 3e-3)),
        Method("talr", "TALR", "disc/world_talr.yaml", (3e-4, 1e-3)),
        Method("rephrase", "Rephrase", "disc/world_rephrase.yaml", (3e-4, 1e-3)),
        Method("cd_base", "CD-base", "disc/world_cd_base.yaml", (3e-4, 1e-3)),
        Method("disc", "DiSC", "disc/world.yaml", (3e-4, 1e-3)),
    )
}

COLUMNS = {
    NEW_KNOWLEDGE: "new-domain QA",
    "knowledge/qa_em/general": "general QA",
    "knowledge/qa_em/general_bio_only": "documents-only half",
    "knowledge/qa_em/skill_addition": "addition",
    "knowledge/qa_em/skill_reverse": "reverse",
    "knowledge/qa_em/skill_brackets": "brackets",
}


@dataclass(frozen=True)
class Run:
    """One training run of the table."""

    method: Method
    seed: int
    lr: float
    base_model: Path
    seed_dir: Path

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
    """A `--config` overlay: the config's callbacks with step evaluations `evals` times per run."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    callbacks = data["trainer"]["callbacks"]
    if isinstance(callbacks, str):
        callbacks = yaml.safe_load((config.parent / callbacks).read_text(encoding="utf-8"))
    every = max(1, config_max_steps(config) // evals)
    for callback in callbacks:
        if callback["class_path"].endswith("KnowledgeEvalCallback"):
            callback.setdefault("init_args", {})["every_n_train_steps"] = every
    overlay = out_dir / f"eval-{config.stem}-{evals}.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}), encoding="utf-8")
    return overlay


def is_complete(results: Path) -> bool:
    """True when a results file ends with the run's `fit_end` evaluation."""
    try:
        lines = results.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return bool(lines) and json.loads(lines[-1]).get("stage") == "fit_end"


def command(run: Run, overlay: Path, extra: Sequence[str]) -> list[str]:
    """The `python -m experiments fit` command line of a run."""
    overrides = [o.format(model=run.base_model) for o in run.method.overrides]
    return [
        sys.executable,
        "-m",
        "experiments",
        "fit",
        "--config",
        str(CONFIG_DIR / run.method.config),
        "--config",
        str(overlay),
        f"--seed_everything={run.seed}",
        f"--data.init_args.world.seed={run.seed}",
        f"--model.init_args.model_name_or_path={run.base_model}",
        f"--model.init_args.optimizer.init_args.lr={run.lr}",
        f"--trainer.default_root_dir={run.seed_dir / run.name}",
        f"--trainer.logger.init_args.save_dir={run.seed_dir}",
        f"--trainer.logger.init_args.name={run.name}",
        "--trainer.logger.init_args.version=0",
        *overrides,
        *extra,
    ]


def execute(run: Run, overlay: Path, extra: Sequence[str], threads: int) -> float:
    """Run one training (skipped when complete); returns its wall time. Output goes to `train.log`."""
    if is_complete(run.results):
        log.info("reusing %s seed %d (complete)", run.name, run.seed)
        return 0.0
    if run.directory.exists():
        shutil.rmtree(run.directory)  # an interrupted run: start it again
    run.directory.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    log.info("running %s seed %d", run.name, run.seed)
    with open(run.directory.parent / "train.log", "w", encoding="utf-8") as output:
        code = subprocess.call(
            command(run, overlay, extra), cwd=REPO, env=env, stdout=output, stderr=output
        )
    wall = time.perf_counter() - started
    if code != 0 or not is_complete(run.results):
        raise RuntimeError(
            f"{run.name} (seed {run.seed}) failed with exit code {code}; see "
            f"{run.directory.parent / 'train.log'}"
        )
    log.info("finished %s seed %d in %.0f s", run.name, run.seed, wall)
    return wall


def selection_row(method: str, seed: int, runs: Sequence[Run], threshold: float) -> dict[str, Any]:
    """The selected checkpoint of one method on one seed, as a JSON-able row."""
    chosen: Selection = select_over_runs(
        [r.results for r in runs], lrs=[r.lr for r in runs], threshold=threshold
    )
    return {
        "method": METHODS[method].title,
        "seed": seed,
        "lrs": [r.lr for r in runs],
        "selected_lr": None if chosen.is_base else chosen.chosen.lr,
        "selected_step": chosen.chosen.step,
        "is_base": chosen.is_base,
        "eligible": chosen.eligible,
        "candidates": chosen.candidates,
        "metrics": {k: chosen.chosen.metrics[k] for k in COLUMNS if k in chosen.chosen.metrics},
        "base": {k: chosen.base[k] for k in COLUMNS if k in chosen.base},
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(rows: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """Per method: mean over seeds of each column at the selected checkpoint, the per-seed values,
    and the learning rates tried; the base model first."""
    seeds = sorted({r["seed"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["seed"]): r for r in rows}
    header = ["method", *COLUMNS.values(), "selected (lr @ step, per seed)", "lrs tried"]
    lines = [
        f"Exact match (%), mean over seeds {', '.join(map(str, seeds))}, at each method's checkpoint "
        f"selected by the rule (best new-domain QA with every retained drop ≤ {100 * threshold:g} "
        "points; the initial model when nothing qualifies). Per-seed values in brackets.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]

    def cells(get) -> list[str]:
        out = []
        for key in COLUMNS:
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


def parse_lr_overrides(values: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """`NAME=lr,lr,...` → {NAME: (lr, ...)}."""
    grids = {}
    for value in values:
        name, sep, lrs = value.partition("=")
        if not sep or name not in METHODS:
            raise SystemExit(
                f"--lrs {value!r}: expected METHOD=lr,lr with METHOD in {list(METHODS)}"
            )
        try:
            grids[name] = tuple(float(x) for x in lrs.split(","))
        except ValueError:
            raise SystemExit(f"--lrs {value!r}: learning rates must be numbers") from None
    return grids


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the table and write it."""
    from experiments.world_models import DEFAULT_CACHE_DIR, build_world_models

    parser = argparse.ArgumentParser(
        prog="python -m experiments.disc_table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--lrs", nargs="*", default=[], metavar="METHOD=LR,LR", help="replace a method's lr grid"
    )
    parser.add_argument("--evals", type=int, default=5, help="step evaluations per run")
    parser.add_argument("--threshold", type=float, default=0.05, help="largest allowed drop")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--output", type=Path, default=Path("runs/disc_table"))
    parser.add_argument("--markdown", type=Path, default=Path("docs/disc_table.md"))
    parser.add_argument(
        "--run_arg",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="an extra override of every run, e.g. --run_arg=--trainer.max_steps=4 (repeatable)",
    )
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    grids = {name: METHODS[name].lrs for name in options.methods}
    grids.update(parse_lr_overrides(options.lrs))
    started = time.perf_counter()

    runs: list[Run] = []
    for seed in options.seeds:
        chat = build_world_models("default", seed, options.cache_dir, ["chat"])["chat"].path
        for name in options.methods:
            method = METHODS[name]
            runs += [
                Run(method, seed, lr, chat, options.output / f"seed{seed}") for lr in grids[name]
            ]
    overlays = {
        m: evaluation_overlay(CONFIG_DIR / METHODS[m].config, options.evals, options.output)
        for m in options.methods
    }
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
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
    table = markdown(rows, options.threshold)
    footer = (
        f"\n{len(runs)} runs, {sum(walls):.0f} s of training runs, {elapsed:.0f} s in all "
        f"(`--jobs {options.jobs}`, {threads} thread(s) each).\n"
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
