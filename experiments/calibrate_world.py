"""Calibrate the synthetic world: can plain CPT on the new-domain documents make them answerable,
and what does it cost? The table of docs/world.md comes from this command.

    python -m experiments.calibrate_world --seeds 0 1 2 --lrs 3e-4 1e-3 3e-3 [--bases pretrained chat]

For every seed it builds (or reuses) the world base models (`experiments.world_models`), then runs
plain CPT (`experiments/configs/cpt/world_base.yaml`) from each base at each learning rate, and
reports, before and after: new-domain QA exact match (held-out question wording), QA on the
QA-trained general entities and on those known from documents only, and (chat) the skills.
Forgetting is the largest drop of a retained capability. The rows go to `--output` (JSON lines)
and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.atomic import atomic_file
from evaluation.selection import NEW_KNOWLEDGE as NEW
from evaluation.selection import retained_keys

log = logging.getLogger("experiments.calibrate_world")


def retained(metrics: dict[str, float]) -> dict[str, float]:
    """The retained capabilities: general QA (both halves) and skills, overall per set."""
    return {k: metrics[k] for k in retained_keys(metrics)}


def run_cpt(
    base: Path, qa_format: str, lr: float, seed: int, run_args: Sequence[str], out: Path
) -> tuple[dict, dict]:
    """One CPT run (the demo's, at `lr`, `seed` and `qa_format`); returns the metrics before and
    after."""
    from experiments.demo import before_and_after
    from experiments.demo import run_cpt as demo_cpt

    extra = [
        f"--model.init_args.optimizer.init_args.lr={lr}",
        f"--data.init_args.qa_format={qa_format}",
        f"--seed_everything={seed}",
        f"--data.init_args.world.seed={seed}",
        f"--trainer.logger.init_args.name=cpt-{qa_format}-lr{lr:g}",
        *run_args,
    ]
    return before_and_after(demo_cpt(base, out, extra))


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """Add new-domain gain and the largest retained drop to a row."""
    before, after = row["before"], row["after"]
    drops = {k: before[k] - after[k] for k in retained(before) if k in after}
    worst = max(drops, key=drops.get) if drops else None
    row["new_domain_before"] = before.get(NEW)
    row["new_domain_after"] = after.get(NEW)
    row["largest_drop"] = drops.get(worst) if worst else None
    row["largest_drop_on"] = worst
    return row


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (base, seed, lr): new-domain EM before/after, every retained set after."""
    sets = sorted({k for r in rows for k in retained(r["after"])})
    short = [k.removeprefix("knowledge/qa_em/") for k in sets]
    head = [
        "base",
        "seed",
        "lr",
        "new-domain EM before → after",
        *[f"{s} after (before)" for s in short],
        "largest drop",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["base"],
            str(r["seed"]),
            f"{r['lr']:g}",
            f"{r['new_domain_before']:.1%} → {r['new_domain_after']:.1%}",
        ]
        for k in sets:
            a, b = r["after"].get(k), r["before"].get(k)
            cells.append("—" if a is None else f"{a:.1%} ({b:.1%})")
        cells.append(
            f"{r['largest_drop']:.1%} ({r['largest_drop_on'].removeprefix('knowledge/qa_em/')})"
            if r["largest_drop_on"]
            else "—"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the grid and print the table."""
    from experiments.world_models import (
        DEFAULT_CACHE_DIR,
        SIZES,
        build_world_models,
        world_config,
        worlds_dir,
    )

    parser = argparse.ArgumentParser(
        prog="python -m experiments.calibrate_world", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="world and run seeds")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3], help="CPT learning rates"
    )
    parser.add_argument(
        "--bases",
        nargs="+",
        choices=("pretrained", "chat"),
        default=["pretrained", "chat"],
        help="base models to adapt",
    )
    parser.add_argument("--size", choices=SIZES, default="default", help="world/model size")
    parser.add_argument(
        "--cache_dir", type=Path, default=DEFAULT_CACHE_DIR, help="base-model cache"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs/calibrate_world/results.jsonl"),
        help="JSON lines, one per run, rewritten atomically after every run",
    )
    parser.add_argument(
        "--cpt_args", nargs="*", default=[], help="extra CLI overrides of the CPT runs"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    rows: list[dict[str, Any]] = []
    run_args = [f"--data.init_args.world_cache_dir={worlds_dir(options.cache_dir)}"]
    run_args += options.cpt_args
    if options.size != "default":
        run_args.append(f"--data.init_args.world={world_config(options.size)}")
    for seed in options.seeds:
        models = build_world_models(options.size, seed, options.cache_dir, options.bases)
        for base in options.bases:
            qa_format = "plain" if base == "pretrained" else "chat"
            for lr in options.lrs:
                before, after = run_cpt(
                    models[base].path,
                    qa_format,
                    lr,
                    seed,
                    run_args,
                    options.output.parent / f"seed{seed}",
                )
                row = summarize(
                    {
                        "base": base,
                        "seed": seed,
                        "lr": lr,
                        "base_metrics": models[base].metrics,
                        "before": before,
                        "after": after,
                    }
                )
                rows.append(row)
                log.info(
                    "%s seed %d lr %g: new-domain %.3f -> %.3f, largest drop %s",
                    base,
                    seed,
                    lr,
                    row["new_domain_before"],
                    row["new_domain_after"],
                    row["largest_drop"],
                )
                with atomic_file(options.output) as tmp:  # a crash keeps every finished run
                    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
                    tmp.write_text(text, encoding="utf-8")
    sys.stdout.write("\n" + markdown(rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
