"""`python -m experiments world-models`: build the synthetic world's two base models, cached.

    python -m experiments world-models [--size default|smoke] [--seed 0] [--stages pretrained chat]

- `pretrained`: trained from scratch on plain text only (articles about every general entity,
  plain-text QA on the QA-trained half, general web text; never the chat markers). Mix-CPT and
  TRAIT start from it.
- `chat`: `pretrained` fine-tuned in the chat format on general QA and the skills (with the
  articles replayed). DiSC adapts it.

Each stage is an ordinary `fit` through the CLI (`experiments/configs/world_models/<size>/`), so
the models are trained by the same module, data pipeline and callbacks as every experiment. A stage
is cached under `<cache_dir>/<size>-seed<seed>-<pretrained fingerprint>/<stage>/` (a
`save_pretrained` directory with the tokenizer, written atomically) beside `<stage>.json`, its
manifest (fingerprint, metrics at the end of training, wall time). A stage's fingerprint hashes its
config with every fragment resolved, the world (config and generator source), the seed, the parent
stage's fingerprint and the torch and transformers versions, so a changed recipe never reuses a
stale model (a changed `chat` recipe rebuilds `chat` only); a complete stage is reused as is.
`<cache_dir>/<size>-seed<seed>` is a symbolic link to the directory built last, so
configs can name `.cache/adaptlm/world_models/default-seed0/pretrained` (replaced atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import atomic_file
from experiments.config_errors import OneLineParser

log = logging.getLogger("experiments.world_models")

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "world_models"
WORLD_CONFIG_DIR = CONFIG_DIR.parent / "world"
SIZES = ("default", "smoke")
STAGES = ("pretrained", "chat")
DEFAULT_CACHE_DIR = Path(".cache/adaptlm/world_models")


def stage_config(size: str, stage: str) -> Path:
    """The fit config of one stage of one size."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return CONFIG_DIR / size / f"{stage}.yaml"


def worlds_dir(cache_dir: str | Path) -> Path:
    """Where the base models of `cache_dir` materialize their worlds; a run adapting one of them
    passes it as `--data.init_args.world_cache_dir` to reuse that world instead of building it again."""
    return Path(cache_dir) / "worlds"


def world_config(size: str) -> Path:
    """The world of one size (`experiments/configs/world/<size>.yaml`), passed to every stage."""
    return WORLD_CONFIG_DIR / f"{size}.yaml"


def _resolved(value: Any, base_dir: Path) -> Any:
    """`value` with every `*.yaml` fragment path (as `data: ../data/x.yaml` names one) replaced by
    the fragment's content, recursively, so that the fingerprint sees what a run reads."""
    from experiments.include import load_yaml

    if isinstance(value, dict):
        return {k: _resolved(v, base_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, base_dir) for v in value]
    if isinstance(value, str) and value.endswith(".yaml") and (base_dir / value).is_file():
        path = (base_dir / value).resolve()
        return _resolved(
            load_yaml(path.read_text(encoding="utf-8"), base_dir=path.parent), path.parent
        )
    return value


def _world_of(size: str, seed: int) -> Any:
    from datamodules.world import WorldConfig
    from experiments.include import load_yaml

    values = load_yaml(world_config(size).read_text(encoding="utf-8"))
    return WorldConfig(**{**values, "seed": seed})


def stage_fingerprint(size: str, stage: str, seed: int, parent: str | None) -> str:
    """16 hex digits identifying everything that determines a stage's model."""
    import torch
    import transformers

    from datamodules.world.materialize import world_fingerprint
    from experiments.include import load_yaml

    path = stage_config(size, stage)
    payload = {
        "config": _resolved(
            load_yaml(path.read_text(encoding="utf-8"), base_dir=path.parent), path.parent
        ),
        "world": load_yaml(world_config(size).read_text(encoding="utf-8")),
        "size": size,
        "stage": stage,
        "seed": seed,
        "parent": parent,
        "world_fingerprint": world_fingerprint(_world_of(size, seed)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class WorldModel:
    """One built stage: its `save_pretrained` directory and its manifest."""

    stage: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        """Knowledge and skill metrics measured when training ended."""
        return self.manifest["metrics"]


def _manifest_path(root: Path, stage: str) -> Path:
    return root / f"{stage}.json"


def _load_complete(root: Path, stage: str, fingerprint: str) -> WorldModel | None:
    try:
        manifest = json.loads(_manifest_path(root, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_dir = root / stage
    if manifest.get("fingerprint") != fingerprint or not (model_dir / "config.json").is_file():
        return None
    return WorldModel(stage, model_dir, manifest)


def _train_stage(
    size: str, stage: str, seed: int, root: Path, cache_dir: Path, parent: Path | None
) -> dict[str, float]:
    """Run the stage's `fit` through the CLI; the export lands in `root/stage`. Returns metrics."""
    from callbacks import ExportCallback, KnowledgeEvalCallback
    from experiments.cli import build_cli, find_callback

    logs = root / "logs"
    args = [
        "--config",
        str(stage_config(size, stage)),
        f"--data.init_args.world={world_config(size)}",
        f"--seed_everything={seed}",
        f"--data.init_args.world.seed={seed}",
        f"--data.init_args.world_cache_dir={worlds_dir(cache_dir)}",
        f"--trainer.default_root_dir={logs}",
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--trainer.logger.init_args.name={stage}",
    ]
    if parent is not None:
        args.append(f"--model.init_args.model_name_or_path={parent}")
    cli = build_cli(args, run=False)
    find_callback(cli.trainer, ExportCallback).dirpath = str(root / stage)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    history = find_callback(cli.trainer, KnowledgeEvalCallback).history
    return dict(history[-1]["metrics"]) if history else {}


def build_world_models(
    size: str = "default",
    seed: int = 0,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    stages: Sequence[str] = STAGES,
    rebuild: bool = False,
) -> dict[str, WorldModel]:
    """Build (or reuse) the requested stages and every stage they start from; return all of them.

    `chat` starts from `pretrained`, so asking for `chat` alone builds `pretrained` first.
    """
    cache_dir = Path(cache_dir)
    wanted = {s for s in stages}
    unknown = wanted - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    if "chat" in wanted:
        wanted.add("pretrained")
    fingerprints: dict[str, str] = {}
    parent: str | None = None
    for stage in STAGES:
        fingerprints[stage] = stage_fingerprint(size, stage, seed, parent)
        parent = fingerprints[stage]
    # One directory per `pretrained` model; a later stage whose recipe changed is rebuilt in it
    # (its manifest's fingerprint no longer matches), the stages before it are kept.
    root = cache_dir / f"{size}-seed{seed}-{fingerprints[STAGES[0]]}"
    built: dict[str, WorldModel] = {}
    for stage in STAGES:
        if stage not in wanted:
            continue
        model = None if rebuild else _load_complete(root, stage, fingerprints[stage])
        if model is not None:
            log.info("reusing %s world model %s", stage, model.path)
            built[stage] = model
            continue
        parent_path = built["pretrained"].path if stage == "chat" else None
        if (root / stage).exists():
            shutil.rmtree(root / stage)  # an export whose manifest never got written
        log.info(
            "training the %s %s world model (seed %d) into %s; a few minutes on 2 CPU cores, "
            "reused from the cache afterwards",
            size,
            stage,
            seed,
            root / stage,
        )
        started = time.perf_counter()
        metrics = _train_stage(size, stage, seed, root, cache_dir, parent_path)
        manifest = {
            "fingerprint": fingerprints[stage],
            "size": size,
            "stage": stage,
            "seed": seed,
            "config": str(stage_config(size, stage).relative_to(CONFIG_DIR.parent.parent.parent)),
            "parent": str(parent_path) if parent_path else None,
            "wall_s": round(time.perf_counter() - started, 1),
            "metrics": metrics,
        }
        with atomic_file(_manifest_path(root, stage)) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        log.info("built %s world model %s in %.0f s", stage, root / stage, manifest["wall_s"])
        built[stage] = WorldModel(stage, root / stage, manifest)
    if built:
        _link_latest(root)
    return built


def _link_latest(root: Path) -> Path:
    """Point `<cache_dir>/<size>-seed<seed>` at `root` (a relative link, swapped in one step)."""
    link = root.parent / root.name.rsplit("-", 1)[0]
    staged = root.parent / f".{link.name}.{os.getpid()}.link"
    staged.unlink(missing_ok=True)
    os.symlink(root.name, staged)
    os.replace(staged, link)
    return link


def main(argv: Sequence[str] | None = None) -> dict[str, WorldModel]:
    """Command-line entry point; prints one line per stage: its path and its metrics."""
    parser = OneLineParser(
        prog="python -m experiments world-models",
        description="Build (or reuse) the synthetic world's pretrained and chat base models.",
    )
    parser.add_argument("--size", choices=SIZES, default="default", help="model and world size")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to build"
    )
    parser.add_argument(
        "--cache_dir", type=Path, default=DEFAULT_CACHE_DIR, help="where models are cached"
    )
    parser.add_argument("--rebuild", action="store_true", help="retrain even if cached")
    options = parser.parse_args(argv)
    if options.seed < 0:
        parser.error(f"--seed must be >= 0, got {options.seed}")
    built = build_world_models(
        options.size, options.seed, options.cache_dir, options.stages, options.rebuild
    )
    for stage, model in built.items():
        metrics = ", ".join(
            f"{k.removeprefix('knowledge/')}={v:.3f}"
            for k, v in sorted(model.metrics.items())
            if k.count("/") == 2
        )
        sys.stdout.write(f"{stage}: {model.path} ({model.manifest['wall_s']:.0f} s) {metrics}\n")
    return built
