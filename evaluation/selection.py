"""The DiSC paper's checkpoint rule, over logged runs.

For one method, every evaluated checkpoint of every run (all learning rates, every step that
`callbacks.KnowledgeEvalCallback` evaluated, `every_n_train_steps` included) is a candidate. A
candidate is eligible when, on every retained capability, its score is at most `threshold` below the
initial model's. The selected checkpoint is the eligible one with the best new-knowledge score. The
initial model itself (each run's `fit_start` row, step 0) is always eligible, so the rule always
selects something: a method that cannot learn without breaking a skill selects its starting point
and reports no gain. Ties go to the smaller largest drop, then to the earlier step, then to the
lower learning rate (deterministic).

    python -m evaluation.selection --run disc=runs/disc/lr*/knowledge_eval.jsonl \\
        --run ft=runs/ft/lr*/knowledge_eval.jsonl [--threshold 0.05]

Scores are fractions (exact match in [0, 1]): 5 points is `threshold=0.05`.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

log = logging.getLogger(__name__)

NEW_KNOWLEDGE = "knowledge/qa_em/domain"
RETAINED_PREFIXES = ("knowledge/qa_em/general", "knowledge/qa_em/skill_")


def retained_keys(
    metrics: Mapping[str, float], prefixes: Sequence[str] = RETAINED_PREFIXES
) -> list[str]:
    """The overall score of each retained set (`knowledge/qa_em/<set>`, not its per-attribute
    breakdown) whose name starts with one of `prefixes`, sorted."""
    return sorted(k for k in metrics if k.startswith(tuple(prefixes)) and k.count("/") == 2)


@dataclass(frozen=True)
class Candidate:
    """One evaluated checkpoint: which run, at which step, with which learning rate, its metrics."""

    run: str
    step: int
    metrics: Mapping[str, float]
    lr: float | None = None
    stage: str = ""


@dataclass(frozen=True)
class Selection:
    """The rule's outcome for one method.

    Args:
        chosen: The selected checkpoint.
        base: The initial model's metrics the drops are measured from.
        drops: Per retained key, `base − chosen` (positive = forgotten).
        eligible: How many candidates satisfied the threshold.
        candidates: How many candidates there were.
        is_base: True when the chosen checkpoint is the initial model (step 0).
    """

    chosen: Candidate
    base: Mapping[str, float]
    drops: Mapping[str, float]
    eligible: int
    candidates: int
    is_base: bool = field(default=False)


def select_checkpoint(
    candidates: Sequence[Candidate],
    base: Mapping[str, float],
    *,
    target: str = NEW_KNOWLEDGE,
    retained: Sequence[str] | None = None,
    threshold: float = 0.05,
) -> Selection:
    """The best `target` score among candidates whose drop on each `retained` key is ≤ `threshold`.

    `retained` defaults to `retained_keys(base)`. The initial model (`base`, step 0) is a candidate
    too. A candidate missing a retained or target key is an error (a run evaluated differently).
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    keys = list(retained) if retained is not None else retained_keys(base)
    missing = [k for k in [target, *keys] if k not in base]
    if missing:
        raise ValueError(f"the initial model's metrics lack {missing}")
    pool = [Candidate(run="base", step=0, metrics=dict(base), stage="fit_start"), *candidates]
    scored: list[tuple[tuple[float, float, int, float], Candidate, dict[str, float]]] = []
    for candidate in pool:
        absent = [k for k in [target, *keys] if k not in candidate.metrics]
        if absent:
            raise ValueError(
                f"run {candidate.run!r} step {candidate.step} lacks {absent}: every run must be "
                "evaluated on the same sets"
            )
        drops = {k: base[k] - candidate.metrics[k] for k in keys}
        if any(d > threshold + 1e-12 for d in drops.values()):
            continue
        largest = max(drops.values(), default=0.0)
        lr = candidate.lr if candidate.lr is not None else 0.0
        rank = (-candidate.metrics[target], largest, candidate.step, lr)
        scored.append((rank, candidate, drops))
    scored.sort(key=lambda item: item[0])
    _, chosen, drops = scored[0]
    return Selection(
        chosen=chosen,
        base=dict(base),
        drops=drops,
        eligible=len(scored),
        candidates=len(pool),
        is_base=chosen.step == 0,
    )


def read_evaluations(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a `KnowledgeEvalCallback` results file; a bad line is a `ConfigError`
    naming the file and line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(
                {"stage": row["stage"], "step": int(row["step"]), "metrics": row["metrics"]}
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"{path}:{number}", f"not a knowledge-evaluation record ({error})"
            ) from None
    return rows


def run_learning_rate(results_file: Path) -> float | None:
    """The optimizer's lr in the resolved config (`adaptlm_config.yaml`, written by the CLI) saved
    beside a results file, if any."""
    config = results_file.parent / "adaptlm_config.yaml"
    if not config.exists():
        return None
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    try:
        return float(data["model"]["init_args"]["optimizer"]["init_args"]["lr"])
    except (KeyError, TypeError, ValueError):
        return None


def candidates_of_run(
    results_file: str | Path, run: str | None = None, lr: float | None = None
) -> tuple[list[Candidate], dict[str, float] | None]:
    """A run's evaluated checkpoints after step 0, and its initial-model metrics (`fit_start`)."""
    path = Path(results_file)
    rows = read_evaluations(path)
    name = run or str(path.parent)
    lr = lr if lr is not None else run_learning_rate(path)
    base = next((r["metrics"] for r in rows if r["stage"] == "fit_start"), None)
    seen: set[int] = set()
    found = []
    for row in rows:
        if row["step"] == 0 or row["step"] in seen:
            continue
        seen.add(row["step"])
        found.append(Candidate(name, row["step"], row["metrics"], lr, row["stage"]))
    return found, base


def select_over_runs(
    results_files: Sequence[str | Path],
    *,
    lrs: Sequence[float | None] | None = None,
    threshold: float = 0.05,
    target: str = NEW_KNOWLEDGE,
    retained: Sequence[str] | None = None,
) -> Selection:
    """`select_checkpoint` over several runs of one method (its learning-rate grid). Every run must
    start from the same initial model: their `fit_start` rows must agree. `lrs` gives each run's
    learning rate (default: read from the config saved beside its results); `retained` is
    `select_checkpoint`'s."""
    candidates: list[Candidate] = []
    base: dict[str, float] | None = None
    if lrs is not None and len(lrs) != len(results_files):
        raise ValueError(f"{len(lrs)} learning rates for {len(results_files)} runs")
    for index, path in enumerate(results_files):
        found, start = candidates_of_run(path, lr=None if lrs is None else lrs[index])
        candidates += found
        if start is None:
            continue
        if base is None:
            base = start
        elif any(not math.isclose(base[k], start.get(k, math.nan), abs_tol=1e-9) for k in base):
            raise ValueError(
                f"{path} starts from a different initial model than the other runs "
                "(its fit_start metrics differ); select per base model"
            )
    if base is None:
        raise ValueError(
            "no run has a fit_start evaluation (KnowledgeEvalCallback on_fit_start: true): the "
            "rule needs the initial model's scores"
        )
    return select_checkpoint(
        candidates, base, target=target, retained=retained, threshold=threshold
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Selection]:
    """Print the selected checkpoint of each `--run name=glob` group."""
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.selection", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=GLOB",
        help="a method and the glob of its runs' knowledge_eval.jsonl files (repeatable)",
    )
    parser.add_argument("--threshold", type=float, default=0.05, help="largest allowed drop")
    parser.add_argument("--target", default=NEW_KNOWLEDGE, help="the new-knowledge metric")
    options = parser.parse_args(argv)
    selections = {}
    for spec in options.run:
        name, sep, pattern = spec.partition("=")
        files = sorted(glob.glob(pattern)) if sep else []
        if not files:
            parser.error(f"--run {spec!r}: expected NAME=GLOB matching at least one file")
        chosen = select_over_runs(files, threshold=options.threshold, target=options.target)
        selections[name] = chosen
        where = (
            "initial model" if chosen.is_base else f"{chosen.chosen.run} step {chosen.chosen.step}"
        )
        worst = max(chosen.drops.values(), default=0.0)
        sys.stdout.write(
            f"{name}: {options.target} {chosen.base[options.target]:.3f} -> "
            f"{chosen.chosen.metrics[options.target]:.3f} at {where} (lr {chosen.chosen.lr}), "
            f"largest drop {worst:+.3f}, {chosen.eligible}/{chosen.candidates} eligible\n"
        )
    return selections


if __name__ == "__main__":
    main()
