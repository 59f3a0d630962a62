"""Config fragments compose in any order; `!include`; every sweep names real CLI keys."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import yaml

from experiments.cli import build_cli
from experiments.include import load_yaml
from tests.experiments.conftest import CONFIG_DIR, REPO

FRAGMENT_DIRS = ("model", "data", "callbacks", "trainer", "world")
NON_TRAINER_DIRS = (
    "format_alignment",
    "selection",
    "synthesis",
)  # configs of commands other than `python -m experiments`
EXPERIMENTS = sorted(
    p
    for p in CONFIG_DIR.rglob("*.yaml")
    if p.relative_to(CONFIG_DIR).parts[0] not in (*FRAGMENT_DIRS, *NON_TRAINER_DIRS)
)
TRAINER_OVERLAYS = sorted((CONFIG_DIR / "trainer").glob("*.yaml"))
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


def resolved(args: list[str], capfd: pytest.CaptureFixture[str]) -> dict:
    """The `--print_config` output of `fit` with `args`, as a dict."""
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capfd.readouterr().out)


_ALONE: dict[Path, dict] = {}


def resolved_alone(experiment: Path, capfd: pytest.CaptureFixture[str]) -> dict:
    """`resolved` of an experiment config without overlays, computed once per experiment (every
    trainer overlay is compared against it)."""
    if experiment not in _ALONE:
        _ALONE[experiment] = resolved(["--config", str(experiment)], capfd)
    return copy.deepcopy(_ALONE[experiment])


def test_layout_has_fragments_and_experiments() -> None:
    for name in FRAGMENT_DIRS:
        assert list((CONFIG_DIR / name).glob("*.yaml")), name
    assert {p.parent.name for p in EXPERIMENTS} >= {"cpt", "default", "smoke"}


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_experiments_hold_no_hardware_logger_or_inline_callbacks(experiment: Path) -> None:
    raw = yaml.safe_load(experiment.read_text().replace("!include", ""))
    trainer = raw.get("trainer", {})
    overlay_keys = set()
    for overlay in TRAINER_OVERLAYS:
        overlay_keys |= set(yaml.safe_load(overlay.read_text())["trainer"])
    assert not overlay_keys & set(trainer), "an experiment sets a key a trainer fragment also sets"
    assert "logger" not in trainer
    assert isinstance(trainer.get("callbacks", ""), str), (
        "callbacks must name a callbacks/ fragment"
    )
    assert isinstance(raw["data"], str), "data must name a data/ fragment"


def order_pairs() -> list[tuple[Path, Path]]:
    """(experiment, overlay) pairs composed in both orders: every overlay with the first
    experiment of each directory, and every experiment with one overlay (in turn). That no
    experiment sets a key an overlay sets is checked for every pair statically, above; each parse
    here costs about a second, so the whole product (170 pairs) is not run."""
    firsts = {}
    for experiment in EXPERIMENTS:
        firsts.setdefault(experiment.relative_to(CONFIG_DIR).parts[0], experiment)
    pairs = set(itertools.product(firsts.values(), TRAINER_OVERLAYS))
    pairs |= {(e, TRAINER_OVERLAYS[i % len(TRAINER_OVERLAYS)]) for i, e in enumerate(EXPERIMENTS)}
    return sorted(pairs)


def test_order_pairs_cover_every_experiment_and_overlay() -> None:
    pairs = order_pairs()
    assert {e for e, _ in pairs} == set(EXPERIMENTS)
    assert {o for _, o in pairs} == set(TRAINER_OVERLAYS)


@pytest.mark.parametrize(
    ("experiment", "overlay"), order_pairs(), ids=lambda p: str(p.relative_to(CONFIG_DIR))
)
def test_config_order_never_changes_a_run(experiment: Path, overlay: Path, capfd) -> None:
    readme_order = resolved(["--config", str(overlay), "--config", str(experiment)], capfd)
    reversed_order = resolved(["--config", str(experiment), "--config", str(overlay)], capfd)
    assert readme_order == reversed_order
    alone = resolved_alone(experiment, capfd)
    # the overlay changed only the trainer keys it sets, and kept the experiment's callbacks
    assert readme_order["trainer"]["callbacks"] == alone["trainer"]["callbacks"]
    assert readme_order["model"] == alone["model"] and readme_order["data"] == alone["data"]


def test_model_definitions_live_only_in_model_fragments(capfd) -> None:
    tiny = load_yaml((CONFIG_DIR / "model" / "tiny_llama.yaml").read_text())
    base = load_yaml((CONFIG_DIR / "model" / "world_base.yaml").read_text())
    for name, expected in (
        ("cpt/world_tiny.yaml", tiny),
        ("world_models/smoke/pretrained.yaml", tiny),
        ("world_models/default/pretrained.yaml", base),
    ):
        printed = resolved(["--config", str(CONFIG_DIR / name)], capfd)
        assert printed["model"]["init_args"]["model_config"] == expected, name
    defining = {p.name for p in CONFIG_DIR.rglob("*.yaml") if "hidden_size" in p.read_text()}
    assert defining == {"tiny_llama.yaml", "world_base.yaml"}


def test_include_resolves_relative_to_the_including_file(tmp_path: Path, capfd) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (tmp_path / "a" / "tiny.yaml").write_text("model_type: llama\nhidden_size: 8\n")
    experiment = nested / "exp.yaml"
    experiment.write_text(
        (CONFIG_DIR / "cpt" / "world_tiny.yaml")
        .read_text()
        .replace("../model/tiny_llama.yaml", "../tiny.yaml")
        .replace("../callbacks/cpt.yaml", str(CONFIG_DIR / "callbacks" / "cpt.yaml"))
        .replace("../data/world_domain.yaml", str(CONFIG_DIR / "data" / "world_domain.yaml"))
    )
    printed = resolved(["--config", str(experiment)], capfd)
    assert printed["model"]["init_args"]["model_config"] == {
        "model_type": "llama",
        "hidden_size": 8,
    }
    assert load_yaml("lr: 1e-3\n")["lr"] == 1e-3  # jsonargparse's float rules are kept


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_names_cli_keys_and_a_sampled_combination_parses(
    sweep: Path, tmp_path: Path, tiny_base_model: Path
) -> None:
    spec = yaml.safe_load(sweep.read_text())
    command = spec["command"]
    assert "${args}" in command
    if command[command.index("-m") + 1] == "experiments.trait_table":  # a whole TRAIT chain
        from experiments.trait_table import parse_options

        fixed = [c for c in command if not c.startswith("${")][3:]
        sampled = {
            k: (v.get("values") or [v.get("value")])[-1] for k, v in spec["parameters"].items()
        }
        options = parse_options([*fixed, *(f"--{k}={v}" for k, v in sampled.items())])
        for key, value in sampled.items():
            assert getattr(options, key) == value, key
        return
    assert command[command.index("-m") + 1] == "experiments"
    fixed = [c for c in command if not c.startswith("${")][3:]  # after python -m experiments
    assert fixed[0] == "fit"
    fixed = [str(REPO / c) if c.endswith(".yaml") else c for c in fixed[1:]]
    sampled = {}
    for key, spec_values in spec["parameters"].items():
        candidates = spec_values.get("values") or [spec_values.get("value", spec_values.get("min"))]
        sampled[key] = candidates[-1]
    combination = [f"--{key}={value}" for key, value in sampled.items()]
    configs = [Path(c) for c in fixed if c.endswith(".yaml")]
    if any("model_name_or_path" in c.read_text() for c in configs):  # a cached base model
        combination.append(f"--model.init_args.model_name_or_path={tiny_base_model}")
    cli = build_cli(
        [*fixed, *combination, f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False
    )
    for key, value in sampled.items():
        parsed = cli.config
        for part in key.split("."):
            parsed = parsed[part]
        assert parsed == value, key


def test_every_fragment_is_used_by_an_experiment() -> None:
    """Fragments are not runnable alone: each must be reached from an experiment (run with
    fast_dev_run in test_cli.py) or be a trainer overlay (composed with every experiment above)."""
    text = "\n".join(p.read_text() for p in EXPERIMENTS)
    for fragment in CONFIG_DIR.rglob("*.yaml"):
        kind = fragment.relative_to(CONFIG_DIR).parts[0]
        if kind in ("model", "data", "callbacks"):
            assert f"../{kind}/{fragment.name}" in text, f"{fragment} is used by no experiment"
