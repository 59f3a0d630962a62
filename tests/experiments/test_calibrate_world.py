"""The calibration report: gains, the largest retained drop, and the markdown table."""

from __future__ import annotations

from experiments.calibrate_world import markdown, retained, summarize


def _row() -> dict:
    before = {
        "knowledge/qa_em/domain": 0.05,
        "knowledge/qa_em/general": 0.80,
        "knowledge/qa_em/general/birth_city": 0.9,
        "knowledge/qa_em/skill_addition": 0.95,
        "knowledge/ppl/general": 1.7,
    }
    after = dict(before)
    after.update(
        {
            "knowledge/qa_em/domain": 0.45,
            "knowledge/qa_em/general": 0.70,
            "knowledge/qa_em/skill_addition": 0.60,
        }
    )
    return {"base": "chat", "seed": 0, "lr": 1e-3, "before": before, "after": after}


def test_retained_sets_are_general_qa_and_skills_overall_only() -> None:
    assert set(retained(_row()["before"])) == {
        "knowledge/qa_em/general",
        "knowledge/qa_em/skill_addition",
    }


def test_summary_names_the_largest_drop() -> None:
    row = summarize(_row())
    assert row["new_domain_before"] == 0.05 and row["new_domain_after"] == 0.45
    assert row["largest_drop_on"] == "knowledge/qa_em/skill_addition"
    assert abs(row["largest_drop"] - 0.35) < 1e-12


def test_markdown_has_one_line_per_run_and_every_retained_set() -> None:
    table = markdown([summarize(_row()), summarize({**_row(), "lr": 2e-3})])
    lines = table.splitlines()
    assert len(lines) == 4
    assert "general after (before)" in lines[0] and "skill_addition after (before)" in lines[0]
    assert "5.0% → 45.0%" in lines[2] and "35.0% (skill_addition)" in lines[2]
