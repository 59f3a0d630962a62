"""Where a run's files go: the resolved config beside its checkpoints, a resume in its own run.

- `SaveRunConfig` writes `adaptlm_config.yaml` into the run's directory (the one holding
  `checkpoints/`: `<save_dir>/<name>/version_N` for CSV, `<save_dir>/<project>/<run id>` for W&B),
  atomically, once the run has started: a run that fails while building its model or data leaves
  no config behind, and a run never overwrites another run's config.
- `check_ckpt_path` and `continue_in_checkpoint_run` make `fit --ckpt_path …/version_3/checkpoints/x.ckpt`
  fail early on a missing file and otherwise log into `version_3` again (one history, one `last.ckpt`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback

from callbacks._common import run_dir
from common.atomic import atomic_file
from common.errors import ConfigError

log = logging.getLogger(__name__)

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def check_ckpt_path(ckpt_path: str | None) -> None:
    """Raise a one-line `ConfigError` naming `ckpt_path` when it names no local file."""
    if not ckpt_path or "://" in ckpt_path or ckpt_path.split(":")[0] in SPECIAL_CKPT_PATHS:
        return
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError("ckpt_path", f"no such checkpoint: {ckpt_path}")
    if path.is_dir() and not (path / "meta.pt").exists() and not any(path.glob("*.distcp")):
        raise ConfigError("ckpt_path", f"{ckpt_path} is a directory, not a checkpoint")


def continue_in_checkpoint_run(trainer_config: Any, ckpt_path: str | None) -> None:
    """Point the logger of a resumed fit at the checkpoint's own run directory.

    A checkpoint at `<save_dir>/<name>/<version>/checkpoints/<file>` resumes with the logger's
    `save_dir`, `name` and `version` (W&B: `project` and `id`) set to that run, unless the config
    already fixes a version. Other layouts (a `ModelCheckpoint.dirpath` of its own) are left alone.
    """
    if not ckpt_path or "://" in ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS:
        return
    path = Path(ckpt_path).absolute()
    if path.parent.name != "checkpoints":
        return
    run = path.parent.parent
    logger = trainer_config.get("logger")
    if not hasattr(logger, "get") or not logger.get("class_path"):
        return
    kind = str(logger.class_path).rsplit(".", 1)[-1]
    init = logger.get("init_args")
    if init is None:
        return
    if kind in VERSIONED_LOGGERS and init.get("version") is None:
        init.save_dir, init.name, init.version = str(run.parent.parent), run.parent.name, run.name
    elif kind == "WandbLogger" and init.get("id") is None and init.get("version") is None:
        init.save_dir, init.project, init.id = str(run.parent.parent), run.parent.name, run.name
    else:
        return
    log.info("resuming in the checkpoint's run directory %s", run)


class SaveRunConfig(SaveConfigCallback):
    """Save the resolved config as `<run dir>/<config_filename>`, atomically, when the run starts.

    "Starts" is `on_train_start` for fit (model, data and optimizer built) and the start of the
    loop for validate, test and predict. The file of an earlier run in the same directory is kept
    and an error raised at setup, unless this run resumes from a checkpoint (the same run).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the run directory (a collective) and refuse to clobber another run's config."""
        if self.already_saved:
            return
        self._path = run_dir(trainer) / self.config_filename
        exists = trainer.strategy.broadcast(trainer.is_global_zero and self._path.exists())
        resuming = bool(trainer.ckpt_path or self.config.get("ckpt_path"))
        if exists and not resuming and not self.overwrite:
            raise ConfigError(
                "trainer.logger",
                f"{self._path} belongs to another run; pick a new logger version or directory",
            )

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved or trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False, skip_link_targets=False)
            with atomic_file(self._path) as tmp:
                tmp.write_text(text, encoding="utf-8")
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._save(trainer, pl_module, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "predict")
