"""`python -m experiments evaluate`: same numbers as the callback, `--help`, one-line bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM

from callbacks import KnowledgeEvalCallback
from experiments.cli import main as cli_main
from experiments.evaluate import build_parser
from tests.callbacks.conftest import TinyCausalLM, cpu_trainer, pad_batch, qa_sequences

ROOT = Path(__file__).resolve().parents[2]


def _command(exported: Path, files: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--model",
        str(exported),
        "--qa",
        f"domain={files['qa']}",
        "--ppl",
        f"general={files['ppl']}",
        "--max_new_tokens",
        "5",
        "--batch_size",
        "3",
        "--device",
        "cpu",
        "--output",
        str(output),
        *extra,
    ]


def test_command_numbers_equal_the_callbacks(
    exported_model: Path, eval_files: dict[str, Path], tiny_tokenizer: Any, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "results.json"
    cli_main(_command(exported_model, eval_files, output))
    results = json.loads(output.read_text())
    assert [p.name for p in output.parent.iterdir()] == ["results.json"]  # no temp file left

    callback = KnowledgeEvalCallback(
        qa_sets={"domain": str(eval_files["qa"])},
        perplexity_sets={"general": str(eval_files["ppl"])},
        max_new_tokens=5,
        batch_size=3,
        results_file=str(tmp_path / "history.jsonl"),
    )
    module = TinyCausalLM(
        tiny_tokenizer,
        val_batches=[pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)],
    )
    module.model = AutoModelForCausalLM.from_pretrained(exported_model)
    cpu_trainer(tmp_path, callbacks=[callback]).validate(module, verbose=False)
    expected = callback.history[-1]
    assert results["metrics"] == expected["metrics"]
    assert results["counts"] == expected["counts"]
    assert set(results["metrics"]) == {
        "knowledge/qa_em/domain",
        "knowledge/qa_em/domain/birth_city",
        "knowledge/qa_em/domain/employer",
        "knowledge/ppl/general",
    }
    assert results["counts"]["qa/domain"] == 4 and results["counts"]["ppl_tokens/general"] > 0


def test_table_is_logged(
    exported_model: Path,
    eval_files: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="experiments.evaluate")
    cli_main(_command(exported_model, eval_files, tmp_path / "r.json"))
    lines = [r.getMessage() for r in caplog.records if r.name == "experiments.evaluate"]
    assert any(line.startswith("qa   domain") and "exact match" in line for line in lines)
    assert any("birth_city" in line for line in lines)
    assert any(line.startswith("ppl  general") and "perplexity" in line for line in lines)


def test_help_documents_every_option() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "evaluate", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in result.stdout
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"


def _bad_input_cases(exported: Path, files: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"prompt": "a", "answer": "b", "entity": "e", "attribute": "x"}\n{"pro\n')
    return {
        "missing model": (
            ["--model", str(tmp_path / "nope"), "--qa", f"d={files['qa']}"],
            "no such model directory",
        ),
        "malformed jsonl": (
            ["--model", str(exported), "--qa", f"d={malformed}"],
            "bad.jsonl:2: malformed JSON",
        ),
        "missing set file": (
            ["--model", str(exported), "--ppl", f"g={tmp_path / 'missing.jsonl'}"],
            "missing.jsonl: file not found",
        ),
        "bad set syntax": (["--model", str(exported), "--qa", str(files["qa"])], "NAME=FILE"),
        "no sets": (["--model", str(exported)], "nothing to evaluate"),
        "unknown option": (["--model", str(exported), "--bogus", "1"], "unrecognized arguments"),
    }


BAD_INPUTS = [
    "missing model",
    "malformed jsonl",
    "missing set file",
    "bad set syntax",
    "no sets",
    "unknown option",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_one_error_and_exit_2_in_process(
    case: str,
    exported_model: Path,
    eval_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every bad input: exit status 2 and exactly one error (a log line, or argparse's usage error)."""
    from experiments.evaluate import main

    args, expected = _bad_input_cases(exported_model, eval_files, tmp_path)[case]
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    errors += [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize("case", ["malformed jsonl", "unknown option"])
def test_bad_inputs_are_one_line_and_exit_2(
    case: str, exported_model: Path, eval_files: dict[str, Path], tmp_path: Path
) -> None:
    """The real command line, one case of each path (a logged data error, an argparse error): the
    whole of stderr is one line (no traceback, no library noise)."""
    args, expected = _bad_input_cases(exported_model, eval_files, tmp_path)[case]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "evaluate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
