"""The demo's two stages wired as `make demo` runs them, on a small world for a few steps."""

from __future__ import annotations

from pathlib import Path

from callbacks import ExportCallback, KnowledgeEvalCallback
from experiments.demo import find_callback, run_stage


def test_stage_two_starts_from_the_stage_one_export(
    tmp_path: Path, small_world_args: list[str]
) -> None:
    quick = ["--trainer.max_steps=2", *small_world_args]
    export = tmp_path / "base" / "export"
    base = run_stage("base.yaml", tmp_path, "base", quick, export_dir=export)
    assert find_callback(base, ExportCallback).export_dir == export
    assert (export / "model.safetensors").is_file()
    cpt = run_stage(
        "cpt.yaml",
        tmp_path,
        "cpt",
        [*quick, "--trainer.max_steps=1", f"--model.init_args.model_name_or_path={export}"],
    )
    stages = [e["stage"] for e in find_callback(cpt, KnowledgeEvalCallback).history]
    assert stages[0] == "fit_start" and stages[-1] == "fit_end"
    assert (tmp_path / "cpt" / "version_0" / "adaptlm_config.yaml").is_file()
