"""The demo wired as `make demo` runs it: CPT from a base model, knowledge evaluated before and after."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_demo_rejects_a_non_positive_step_count(capsys) -> None:
    from experiments.demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--cpt-steps", "0"])
    assert exit_info.value.code == 2
    assert "--cpt-steps must be a positive number of steps, got 0" in capsys.readouterr().err


def test_demo_trains_for_the_requested_number_of_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import experiments.demo as demo
    from experiments.world_models import WorldModel

    class Stop(Exception):
        pass

    seen: dict[str, object] = {}

    def fake_build(size: str, seed: int, cache_dir: Path, stages: list[str]) -> dict:
        seen["build"] = (size, seed, Path(cache_dir), list(stages))
        return {"pretrained": WorldModel("pretrained", tmp_path / "base", {})}

    def fake_cpt(base: Path, output_dir: Path, extra: list[str]) -> None:
        seen["cpt"] = (base, output_dir, list(extra))
        raise Stop

    monkeypatch.setattr(demo, "build_world_models", fake_build)
    monkeypatch.setattr(demo, "run_cpt", fake_cpt)
    with pytest.raises(Stop):
        demo.main(["--cpt-steps", "7", "--cache-dir", str(tmp_path / "c"), "--output-dir", "o"])
    assert seen["build"] == ("default", 0, tmp_path / "c", ["pretrained"])
    worlds = f"--data.init_args.world_cache_dir={tmp_path / 'c' / 'worlds'}"
    assert seen["cpt"] == (tmp_path / "base", Path("o"), ["--trainer.max_steps=7", worlds])
