"""`python -m datamodules.selection <command>`: TRAIT's in-domain data selection.

    python -m datamodules.selection run --config experiments/configs/selection/world_dsir.yaml
    python -m datamodules.selection train --kind domain \\
        --config experiments/configs/selection/world_fasttext.yaml
    python -m datamodules.selection score \\
        --config experiments/configs/selection/world_fasttext.yaml \\
        --scorer.kind fasttext --scorer.path runs/selection/world_fasttext/domain_classifier.bin
    python -m datamodules.selection select \\
        --config experiments/configs/selection/world_fasttext.yaml \\
        --scores runs/selection/world_fasttext/scores.jsonl
    python -m datamodules.selection evaluate \\
        --config experiments/configs/selection/world_fasttext.yaml \\
        --selected runs/selection/world_fasttext/selected.jsonl

Every command reads the same settings (`pipeline.SelectionConfig`: YAML files with `--config`,
repeatable, `!include` as in the experiments CLI; every field as an option, e.g.
`--budget_tokens 20000 --world.seed 1`) plus its own options:

- `run`: the whole pipeline of `method` (train, score, select, evaluate) under `output_dir`.
- `train --kind domain|quality [--force]`: train the fastText domain or quality classifier,
  report its held-out precision / recall / AUC (model at `domain.model_path` /
  `quality.classifier.model_path`, default in `output_dir`).
- `score --scorer.kind K --scorer.path P [--shard_index I]`: score `corpus` into
  `output_dir/scores.jsonl` (`sharded.score_corpus`: `num_shards`, `processes`, `batch_size`).
- `select --scores F [--quality_scores F]`: select by `method`'s rule from existing scores.
- `evaluate --selected F [--output F]`: precision / recall / low-quality share against
  `labels_path`.

The final summary is printed to stdout as JSON. A user error (bad config value, unknown option,
missing file or model, bad data, budget above the corpus) logs one line and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from common.errors import ConfigError
from datamodules.selection.pipeline import (
    SelectionConfig,
    evaluate_selected,
    run_selection,
    select_from_scores,
    train_classifier,
)
from datamodules.selection.scorers import ScorerSpec

log = logging.getLogger("datamodules.selection")

PROG = "python -m datamodules.selection"
COMMANDS: dict[str, str] = {
    "run": "the whole pipeline of one method: train, score, select, evaluate",
    "train": "train the fastText domain or quality classifier",
    "score": "score the corpus with a scorer (sharded, resumable)",
    "select": "select documents from existing scores at the token budget",
    "evaluate": "precision / recall / low-quality share of a selection against labels",
}


def build_parser(command: str) -> Any:
    """The jsonargparse parser of `command`: `--config` files (with `!include`), every field of
    `SelectionConfig`, `--force`, and the command's own options."""
    from experiments.config_errors import config_parser

    if command not in COMMANDS:
        raise ConfigError("command", f"must be one of {list(COMMANDS)}, got {command!r}")
    parser = config_parser(
        f"{PROG} {command}",
        f"TRAIT's in-domain data selection: {COMMANDS[command]} (see "
        "datamodules/selection/pipeline.py).",
        SelectionConfig,
        "recompute even when outputs are up to date",
    )
    if command == "train":
        parser.add_argument("--kind", type=str, default="domain", help="domain or quality")
    elif command == "score":
        parser.add_argument(
            "--scorer", type=ScorerSpec | None, default=None, help="the scorer (kind, path, ...)"
        )
        parser.add_argument(
            "--shard_index", type=int | None, default=None, help="score this shard only"
        )
    elif command == "select":
        parser.add_argument(
            "--scores", type=str | None, default=None, help="the method's scores.jsonl"
        )
        parser.add_argument(
            "--quality_scores", type=str | None, default=None, help="the quality scores.jsonl"
        )
    elif command == "evaluate":
        parser.add_argument("--selected", type=str | None, default=None, help="a selected.jsonl")
        parser.add_argument(
            "--output", type=str | None, default=None, help="metrics file (default beside it)"
        )
    return parser


def parse_config(argv: Sequence[str]) -> tuple[str, SelectionConfig, dict[str, Any]]:
    """`(command, config, options)` from the command line; an unknown command or option, or an
    ill-typed value, is a `ConfigError`."""
    from experiments.config_errors import parse_arguments

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        usage = "\n".join(f"  {name:9s} {text}" for name, text in COMMANDS.items())
        print(f"usage: {PROG} <command> [--config FILE] [options]\n\ncommands:\n{usage}")
        raise SystemExit(0)
    command = argv[0]
    init = parse_arguments(build_parser(command), argv[1:])
    names = SelectionConfig.__dataclass_fields__
    config = SelectionConfig(**{k: init[k] for k in names if k in init})
    extra = (
        "force",
        "kind",
        "scorer",
        "shard_index",
        "scores",
        "quality_scores",
        "selected",
        "output",
    )
    options = {k: init.get(k) for k in extra if k in init}
    return command, config, options


def run_command(command: str, config: SelectionConfig, options: dict[str, Any]) -> dict[str, Any]:
    """Run one command; its JSON summary."""
    force = bool(options.get("force"))
    if command == "run":
        return run_selection(config, force=force).summary()
    if command == "train":
        trained = train_classifier(config, str(options.get("kind")), force=force)
        return {
            "model_path": str(trained.model_path),
            "reused": trained.reused,
            "heldout": trained.heldout,
            "counts": trained.info.get("counts"),
        }
    if command == "score":
        from pathlib import Path

        from datamodules.selection.pipeline import Context, score_documents

        scorer = options.get("scorer")
        if scorer is None:
            raise ConfigError("scorer", "is required: --scorer.kind K --scorer.path MODEL")
        ctx = Context(config)
        corpus = ctx.resolve(config.corpus, "corpus")
        if options.get("shard_index") is not None:
            from datamodules.selection.sharded import score_corpus

            path = score_corpus(
                corpus,
                scorer,
                Path(config.output_dir),
                num_shards=config.num_shards,
                shard_index=options["shard_index"],
                processes=config.processes,
                batch_size=config.batch_size,
            )
        else:
            path = score_documents(ctx, corpus, scorer, Path(config.output_dir), force=force)
        return {"scores": str(path)}
    if command == "select":
        return select_from_scores(
            config,
            scores_path=options.get("scores"),
            quality_scores_path=options.get("quality_scores"),
            force=force,
        ).summary()
    selected = options.get("selected")
    if not selected:
        raise ConfigError("selected", "is required: the selected.jsonl to evaluate")
    return evaluate_selected(config, selected, options.get("output"))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: a user error logs one line and exits with status 2."""
    from experiments.config_errors import run_main

    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> dict[str, Any]:
        command, config, options = parse_config(argv)
        return run_command(command, config, options)

    prog = f"{PROG.removeprefix('python -m ')} {argv[0] if argv else '<command>'}"
    summary = run_main(prog, run, log)
    print(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
