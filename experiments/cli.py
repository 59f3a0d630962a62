"""The command line: LightningCLI with subclass mode for model and data.

`python -m experiments {fit,validate,test,predict} --config a.yaml [--config b.yaml] [--key=value ...]`.
Configs compose left to right. The resolved config of every run is saved beside its checkpoints as
`adaptlm_config.yaml` (W&B writes its own `config.yaml`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from common.errors import find_user_error
from lightning_modules.base import CausalLMModule

log = logging.getLogger("experiments")

CONFIG_FILENAME = "adaptlm_config.yaml"


class AdaptLMCLI(LightningCLI):
    """LightningCLI with the links every experiment needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link tokenizer and sequence length from data to model, and max_steps to the scheduler."""
        parser.link_arguments(
            "data.tokenizer_path", "model.init_args.tokenizer", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.max_length", "model.init_args.max_length", apply_on="instantiate"
        )
        parser.link_arguments("trainer.max_steps", "model.init_args.total_steps")


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> AdaptLMCLI:
    """Parse `args` (default: `sys.argv[1:]`), instantiate, and run the subcommand when `run`."""
    return AdaptLMCLI(
        CausalLMModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"config_filename": CONFIG_FILENAME, "overwrite": True},
        parser_kwargs={"default_env": False, "exit_on_error": False},
        args=list(args) if args is not None else None,
        run=run,
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point: user errors (bad data, bad config values) print one line and exit with status 2."""
    logging.basicConfig(
        level=os.environ.get("ADAPTLM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        build_cli(args)
    except ArgumentError as error:
        user_error = find_user_error(error)
        message = str(user_error) if user_error else str(error).strip()
        log.error("%s\n(run with --help for every accepted option)", message)
        sys.exit(2)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(2)
