"""The checkpoint rule: best new knowledge among checkpoints within the drop threshold on every skill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from common.errors import ConfigError
from evaluation.selection import (
    Candidate,
    main,
    retained_keys,
    select_checkpoint,
    select_over_runs,
)

NEW = "knowledge/qa_em/domain"
BASE = {
    NEW: 0.05,
    "knowledge/qa_em/general": 0.80,
    "knowledge/qa_em/general/birth_city": 0.7,
    "knowledge/qa_em/skill_addition": 0.70,
    "knowledge/ppl/domain": 50.0,
}


def metrics(new: float, general: float, addition: float) -> dict[str, float]:
    return {
        NEW: new,
        "knowledge/qa_em/general": general,
        "knowledge/qa_em/general/birth_city": 0.0,  # per-attribute: never a retained key
        "knowledge/qa_em/skill_addition": addition,
        "knowledge/ppl/domain": 2.0,
    }


def test_retained_keys_are_overall_scores_of_general_and_skills() -> None:
    assert retained_keys(BASE) == ["knowledge/qa_em/general", "knowledge/qa_em/skill_addition"]


def test_best_eligible_wins_and_ineligible_never_does() -> None:
    candidates = [
        Candidate("lr1", 10, metrics(0.40, 0.70, 0.70), lr=1e-3),  # general -10: out
        Candidate("lr1", 20, metrics(0.20, 0.76, 0.66), lr=1e-3),  # -4 / -4: in
        Candidate("lr2", 10, metrics(0.25, 0.75, 0.65), lr=3e-4),  # exactly -5 / -5: in
        Candidate("lr2", 20, metrics(0.30, 0.80, 0.64), lr=3e-4),  # addition -6: out
    ]
    chosen = select_checkpoint(candidates, BASE, threshold=0.05)
    assert (chosen.chosen.run, chosen.chosen.step) == ("lr2", 10)
    assert chosen.drops == pytest.approx(
        {"knowledge/qa_em/general": 0.05, "knowledge/qa_em/skill_addition": 0.05}
    )
    assert (chosen.eligible, chosen.candidates, chosen.is_base) == (3, 5, False)
    strict = select_checkpoint(candidates, BASE, threshold=0.045)
    assert (strict.chosen.run, strict.chosen.step) == ("lr1", 20)
    loose = select_checkpoint(candidates, BASE, threshold=1.0)
    assert loose.chosen.metrics[NEW] == 0.40


def test_nothing_eligible_selects_the_initial_model() -> None:
    candidates = [Candidate("lr1", 10, metrics(0.9, 0.1, 0.1))]
    chosen = select_checkpoint(candidates, BASE, threshold=0.05)
    assert chosen.is_base and chosen.chosen.metrics[NEW] == BASE[NEW]
    assert max(chosen.drops.values()) == 0.0


def test_ties_go_to_smaller_drop_then_earlier_step_then_lower_lr() -> None:
    a = Candidate("a", 30, metrics(0.2, 0.78, 0.70), lr=1e-3)
    b = Candidate("b", 20, metrics(0.2, 0.79, 0.70), lr=1e-3)
    c = Candidate("c", 10, metrics(0.2, 0.79, 0.70), lr=3e-3)
    d = Candidate("d", 10, metrics(0.2, 0.79, 0.70), lr=1e-4)
    assert select_checkpoint([a, b, c, d], BASE).chosen.run == "d"
    assert select_checkpoint([a, b, c], BASE).chosen.run == "c"
    assert select_checkpoint([a, b], BASE).chosen.run == "b"


def test_missing_metrics_and_bad_threshold_are_errors() -> None:
    partial = {NEW: 0.3, "knowledge/qa_em/general": 0.8}
    with pytest.raises(ValueError, match="lacks"):
        select_checkpoint([Candidate("x", 5, partial)], BASE)
    with pytest.raises(ValueError, match="threshold"):
        select_checkpoint([], BASE, threshold=-1)


def write_run(root: Path, lr: float, rows: list[tuple[str, int, dict]]) -> Path:
    root.mkdir(parents=True)
    (root / "adaptlm_config.yaml").write_text(
        yaml.safe_dump({"model": {"init_args": {"optimizer": {"init_args": {"lr": lr}}}}})
    )
    path = root / "knowledge_eval.jsonl"
    lines = [
        json.dumps({"stage": s, "step": n, "epoch": 0, "metrics": m, "counts": {}})
        for s, n, m in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_over_runs_reads_results_files_lr_and_command_line(tmp_path: Path, capsys) -> None:
    first = write_run(
        tmp_path / "lr0.001",
        1e-3,
        [
            ("fit_start", 0, BASE),
            ("train_step", 10, metrics(0.3, 0.78, 0.69)),
            ("fit_end", 20, metrics(0.5, 0.5, 0.5)),
        ],
    )
    second = write_run(
        tmp_path / "lr0.0003",
        3e-4,
        [("fit_start", 0, BASE), ("train_step", 10, metrics(0.2, 0.8, 0.7))],
    )
    chosen = select_over_runs([first, second])
    assert chosen.chosen.lr == 1e-3 and chosen.chosen.step == 10
    assert chosen.candidates == 4
    main(["--run", f"ft={tmp_path}/lr*/knowledge_eval.jsonl"])
    out = capsys.readouterr().out
    assert out.startswith("ft: knowledge/qa_em/domain 0.050 -> 0.300") and "3/4 eligible" in out


def test_runs_from_different_initial_models_are_refused(tmp_path: Path) -> None:
    other = dict(BASE, **{NEW: 0.5})
    a = write_run(tmp_path / "a", 1e-3, [("fit_start", 0, BASE)])
    b = write_run(tmp_path / "b", 1e-3, [("fit_start", 0, other)])
    with pytest.raises(ValueError, match="different initial model"):
        select_over_runs([a, b])


def test_a_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_run(tmp_path / "a", 1e-3, [("fit_start", 0, BASE)])
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ConfigError, match=r"knowledge_eval.jsonl:2"):
        select_over_runs([path])
