"""The embedded default, end to end on a CPU in a few minutes.

1. Build the synthetic knowledge world and the calibrated `pretrained` base model
   (`python -m experiments world-models --stages pretrained`; cached, so a second run reuses it).
2. Continue pre-training it on the *new-domain* articles (plain CPT: `CausalLMModule`,
   `experiments/configs/cpt/world_base.yaml`) for `--cpt-steps` steps: 60 by default, half of the
   calibration run's 120 (`experiments.calibrate_world`, docs/world.md), so that a fresh machine,
   which must first train the base model, finishes within five minutes on two cores.
3. Print a before/after table: new-domain QA exact match (questions worded as never in training),
   general QA exact match (QA-trained entities, and entities known from documents only), and
   held-out perplexity on domain and general text.

The CPT stage runs through the same CLI as `python -m experiments fit --config ...`. Run with
`python -m experiments.demo [--output-dir DIR]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callbacks import KnowledgeEvalCallback
from experiments.cli import build_cli, find_callback
from experiments.world_models import DEFAULT_CACHE_DIR, build_world_models, worlds_dir

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_CPT_STEPS = 60
log = logging.getLogger("experiments.demo")

ROWS = [
    ("new-domain QA exact match", "knowledge/qa_em/domain", "{:.1%}"),
    ("general QA exact match", "knowledge/qa_em/general", "{:.1%}"),
    ("  (entities in documents only)", "knowledge/qa_em/general_bio_only", "{:.1%}"),
    ("held-out domain perplexity", "knowledge/ppl/domain", "{:.2f}"),
    ("held-out general perplexity", "knowledge/ppl/general", "{:.2f}"),
]


def run_cpt(base: Path, output_dir: Path, extra: Sequence[str] = ()) -> Any:
    """Run plain CPT from `base` through the CLI's parser and trainer; returns the trainer.

    Logs go to `<output_dir>/cpt/version_N`.
    """
    args = [
        "--config",
        str(CONFIG_DIR / "cpt" / "world_base.yaml"),
        f"--model.init_args.model_name_or_path={base}",
        f"--trainer.default_root_dir={output_dir / 'cpt'}",
        f"--trainer.logger.init_args.save_dir={output_dir}",
        "--trainer.logger.init_args.name=cpt",
        *extra,
    ]
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer


def before_and_after(trainer: Any) -> tuple[dict[str, float], dict[str, float]]:
    """The knowledge metrics of a finished `fit`: before the first step and at its end."""
    history = find_callback(trainer, KnowledgeEvalCallback).history
    before = next(e["metrics"] for e in history if e["stage"] == "fit_start")
    after = [e["metrics"] for e in history if e["stage"] == "fit_end"][-1]
    return before, after


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    """A plain-text table: one row per metric, columns before and after continual pre-training."""
    lines = [f"{'metric':<30}{'before CPT':>14}{'after CPT':>14}", "-" * 58]
    for label, key, fmt in ROWS:
        lines.append(f"{label:<30}{fmt.format(before[key]):>14}{fmt.format(after[key]):>14}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Build (or reuse) the base model, run CPT and print the before/after table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("runs/demo"), help="where runs are written"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where base models are cached"
    )
    parser.add_argument(
        "--cpt-steps",
        type=int,
        default=DEMO_CPT_STEPS,
        help="steps of continual pre-training (the calibration run of docs/world.md takes 120)",
    )
    options = parser.parse_args(argv)
    if options.cpt_steps < 1:
        parser.error(f"--cpt-steps must be a positive number of steps, got {options.cpt_steps}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    started = time.perf_counter()
    base = build_world_models("default", 0, options.cache_dir, ["pretrained"])["pretrained"]
    log.info("base model: %s", base.path)
    cpt_args = [
        f"--trainer.max_steps={options.cpt_steps}",
        f"--data.init_args.world_cache_dir={worlds_dir(options.cache_dir)}",
    ]
    cpt = run_cpt(base.path, options.output_dir, cpt_args)
    before, after = before_and_after(cpt)
    wall = time.perf_counter() - started

    sys.stdout.write(
        f"\nContinual pre-training on the synthetic world's new-domain documents"
        f" ({options.cpt_steps} steps)\n\n"
    )
    sys.stdout.write(format_table(before, after) + "\n\n")
    sys.stdout.write(f"wall time: {wall:.0f} s (runs under {options.output_dir})\n")
    sys.stdout.flush()
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
