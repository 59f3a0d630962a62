"""The embedded default, end to end on a CPU in a few minutes.

1. Build the synthetic knowledge world and train its tokenizer.
2. Pre-train a tiny base model on the world's *general* part (biographies and chat QA).
3. Continue pre-training it on the *new-domain* biographies (plain CPT: `CausalLMModule`).
4. Print a before/after table: new-domain QA exact match, general QA exact match, held-out
   perplexity on domain and general text.

Both stages run through the same CLI as `python -m experiments fit --config ...`, with the configs in
`experiments/configs/demo/`. Run with `python -m experiments.demo [--output-dir DIR]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callbacks import ExportCallback, KnowledgeEvalCallback
from experiments.cli import build_cli

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger("experiments.demo")

ROWS = [
    ("new-domain QA exact match", "knowledge/qa_em/domain", "{:.1%}"),
    ("general QA exact match", "knowledge/qa_em/general", "{:.1%}"),
    ("held-out domain perplexity", "knowledge/ppl/domain", "{:.2f}"),
    ("held-out general perplexity", "knowledge/ppl/general", "{:.2f}"),
]


def find_callback(trainer: Any, kind: type) -> Any:
    """The trainer's callback of type `kind` (the demo configs always add one)."""
    for callback in trainer.callbacks:
        if isinstance(callback, kind):
            return callback
    raise RuntimeError(f"the demo config has no {kind.__name__}")


def run_stage(
    config: str,
    output_dir: Path,
    name: str,
    extra: Sequence[str] = (),
    export_dir: Path | None = None,
) -> Any:
    """Run `fit` for one stage through the CLI's parser and trainer; returns the trainer.

    Logs go to `<output_dir>/<name>/version_N`; `export_dir` replaces the stage's export path.
    """
    args = [
        "--config",
        str(CONFIG_DIR / "demo" / config),
        f"--trainer.default_root_dir={output_dir / name}",
        f"--trainer.logger.init_args.save_dir={output_dir}",
        f"--trainer.logger.init_args.name={name}",
        *extra,
    ]
    cli = build_cli(args, run=False)
    if export_dir is not None:
        find_callback(cli.trainer, ExportCallback).dirpath = str(export_dir)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    """A plain-text table: one row per metric, columns before and after continual pre-training."""
    lines = [f"{'metric':<30}{'before CPT':>14}{'after CPT':>14}", "-" * 58]
    for label, key, fmt in ROWS:
        lines.append(f"{label:<30}{fmt.format(before[key]):>14}{fmt.format(after[key]):>14}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run both stages and print the before/after table; returns the two metric dicts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("runs/demo"), help="where runs are written"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    started = time.perf_counter()
    base = run_stage(
        "base.yaml", options.output_dir, "base", export_dir=options.output_dir / "base" / "export"
    )
    base_export = find_callback(base, ExportCallback).export_dir
    log.info("base model exported to %s", base_export)
    cpt = run_stage(
        "cpt.yaml",
        options.output_dir,
        "cpt",
        [f"--model.init_args.model_name_or_path={base_export}"],
    )
    history = find_callback(cpt, KnowledgeEvalCallback).history
    before = next(e["metrics"] for e in history if e["stage"] == "fit_start")
    after = [e["metrics"] for e in history if e["stage"] == "fit_end"][-1]
    wall = time.perf_counter() - started

    sys.stdout.write("\nContinual pre-training on the synthetic world's new-domain documents\n\n")
    sys.stdout.write(format_table(before, after) + "\n\n")
    sys.stdout.write(f"wall time: {wall:.0f} s (runs under {options.output_dir})\n")
    sys.stdout.flush()
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
