"""The demo wired as `make demo` runs it: CPT from a base model, knowledge evaluated before and after."""

from __future__ import annotations

from pathlib import Path

from callbacks import KnowledgeEvalCallback
from experiments.demo import find_callback, format_table, run_cpt


def test_cpt_stage_evaluates_before_and_after(
    tmp_path: Path, small_world_args: list[str], tiny_base_model: Path
) -> None:
    quick = ["--trainer.max_steps=1", *small_world_args]
    cpt = run_cpt(tiny_base_model, tmp_path, quick)
    history = find_callback(cpt, KnowledgeEvalCallback).history
    assert history[0]["stage"] == "fit_start"
    assert history[-1]["stage"] == "fit_end"
    table = format_table(history[0]["metrics"], history[-1]["metrics"])
    assert "new-domain QA exact match" in table and "documents only" in table
    assert (tmp_path / "cpt" / "version_0" / "adaptlm_config.yaml").is_file()
