"""The command line: LightningCLI with subclass mode for model and data.

`python -m experiments {fit,validate,test,predict} --config a.yaml [--config b.yaml] [--key=value ...]`.
Configs compose left to right; YAML values may be paths to fragment files, and `!include` takes a
plain mapping from another file (`experiments.include`). The resolved config of every run is saved
in the run's directory, beside its checkpoints, as `adaptlm_config.yaml` (W&B writes its own
`config.yaml`). Every trainer gets a step-counting progress bar and crash-safe checkpoint writes
unless its config sets its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from callbacks.checkpoint import AtomicCheckpointIO
from callbacks.progress import StepProgressBar
from common.errors import ConfigError, find_user_error
from experiments import include
from experiments.config_errors import unknown_key_error
from experiments.noise import silence_known_noise
from experiments.run_dir import SaveRunConfig, check_ckpt_path, continue_in_checkpoint_run
from lightning_modules.base import CausalLMModule

log = logging.getLogger("experiments")

CONFIG_FILENAME = "adaptlm_config.yaml"
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.CSVLogger",
    "init_args": {"save_dir": "runs", "name": "adaptlm"},
}


class AdaptLMCLI(LightningCLI):
    """LightningCLI with the links every experiment needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link tokenizer and sequence length from data to model, and max_steps to the scheduler.

        The default logger is CSV under `runs/adaptlm/version_N` (`trainer/wandb.yaml` for W&B).
        """
        parser.link_arguments(
            "data.tokenizer_path", "model.init_args.tokenizer", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.max_length", "model.init_args.max_length", apply_on="instantiate"
        )
        parser.link_arguments("trainer.max_steps", "model.init_args.total_steps")
        parser.set_defaults({"trainer.logger": DEFAULT_LOGGER})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; an unknown key becomes one `ConfigError` line naming it and the accepted options."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            subparsers = getattr(self, "_subcommand_parsers", {})
            subcommand = next((a for a in (args or sys.argv[1:]) if a in subparsers), None)
            scope = subparsers.get(subcommand, parser)
            user_error = find_user_error(error) or unknown_key_error(str(error), scope)
            if user_error is None:
                raise
            raise user_error from error

    def before_instantiate_classes(self) -> None:
        """Fail early on a missing checkpoint; a resumed fit logs into the checkpoint's run."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        check_ckpt_path(ckpt_path)
        if self.subcommand == "fit":
            continue_in_checkpoint_run(config.trainer, ckpt_path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add the step progress bar and atomic checkpoint writes unless the config has its own."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        plugins = trainer_config.get("plugins")
        plugin_list = plugins if isinstance(plugins, list) else [plugins] if plugins else []
        if not any(isinstance(p, CheckpointIO) for p in plugin_list):
            kwargs["plugins"] = [*plugin_list, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def find_callback(trainer: Any, kind: type) -> Any:
    """The trainer's callback of type `kind`; a config without one is a `RuntimeError`."""
    for callback in trainer.callbacks:
        if isinstance(callback, kind):
            return callback
    raise RuntimeError(f"the run's config has no {kind.__name__} callback")


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> AdaptLMCLI:
    """Parse `args` (default: `sys.argv[1:]`), instantiate, and run the subcommand when `run`."""
    silence_known_noise()
    return AdaptLMCLI(
        CausalLMModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"config_filename": CONFIG_FILENAME},
        parser_kwargs={
            "default_env": False,
            "exit_on_error": False,
            "parser_mode": include.register(),
        },
        args=list(args) if args is not None else None,
        run=run,
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point: user errors (bad data, bad config values) print one line and exit with status 2."""
    logging.basicConfig(
        level=os.environ.get("ADAPTLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["evaluate"]:  # not a Trainer subcommand: see experiments/evaluate.py
        from experiments.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv[:1] == ["world-models"]:  # builds the world's base models: experiments/world_models.py
        from experiments.world_models import main as world_models_main

        world_models_main(argv[1:])
        return None
    try:
        build_cli(args)
    except ArgumentError as error:
        user_error = find_user_error(error)
        message = str(user_error) if user_error else " ".join(str(error).split())
        log.error("%s (run with --help for every accepted option)", message)
        sys.exit(2)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(2)


__all__ = ["CONFIG_FILENAME", "AdaptLMCLI", "ConfigError", "build_cli", "main"]
