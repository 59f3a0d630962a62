"""The selection pipeline and its command line on the smoke world: every method end to end, reruns
that skip, `--force`, the step commands, and bad input (one line, exit status 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from datamodules.selection.__main__ import main, parse_config
from datamodules.selection.pipeline import run_selection
from datamodules.selection.select import write_selected
from tests.datamodules.selection.conftest import REPO, SMOKE_BUDGET, smoke_argv, smoke_world

METHODS = ("fasttext", "fasttext_quality", "dsir", "random")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _corpus_ids(world_cache: Path) -> list[str]:
    from datamodules.world.materialize import materialize_world

    path = materialize_world(smoke_world(), world_cache).split_path("web_corpus")
    return [r["id"] for r in _lines(path)]


@pytest.fixture(scope="module")
def runs(world_cache: Path, tmp_path_factory) -> dict[str, Path]:
    """Every method run once through `main(["run", ...])` from the repo's world configs."""
    out = tmp_path_factory.mktemp("runs")
    for method in METHODS:
        main(["run", *smoke_argv(world_cache, out / method, method)])
    return {m: out / m for m in METHODS}


def test_the_world_configs_parse_and_name_their_method(world_cache, tmp_path):
    for method in METHODS:
        _, config, _ = parse_config(["run", *smoke_argv(world_cache, tmp_path, method)])
        assert config.method == method and config.budget_tokens == SMOKE_BUDGET
        assert config.world == smoke_world()
        assert config.corpus.path == "world:web_corpus"
        assert config.quality.classifier.source.world_seed == 1000
    _, default, _ = parse_config(
        ["run", "--config", str(REPO / "experiments/configs/selection/world_fasttext.yaml")]
    )
    assert default.budget_tokens == 15000 and default.world.web.num_documents == 4000


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_a_sane_selection(runs, world_cache, method):
    out = runs[method]
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    selected = _lines(out / "selected.jsonl")
    ids = [r["id"] for r in selected]
    corpus = _corpus_ids(world_cache)
    assert len(set(ids)) == len(ids) > 0 and set(ids) <= set(corpus)
    assert all(isinstance(r["text"], str) and r["text"] for r in selected)
    assert manifest["method"] == method and manifest["counts"]["selected"] == len(ids)
    assert manifest["counts"]["read"] == len(corpus) and manifest["counts"]["skipped"] == 0
    assert SMOKE_BUDGET - 100 < manifest["tokens_selected"] <= SMOKE_BUDGET
    assert metrics["tokens_selected"] == manifest["tokens_selected"]
    assert metrics["selected"] == len(ids) and metrics["corpus_documents"] == len(corpus)
    for key in ("precision", "recall", "low_quality_share", "in_domain_high_quality_precision"):
        assert 0 <= metrics[key] <= 1
    assert metrics["selected_in_domain"] == round(metrics["precision"] * len(ids))
    if method != "random":
        scores = _lines(out / "scores.jsonl")
        assert [r["id"] for r in scores] == corpus
    if method.startswith("fasttext"):
        heldout = manifest["classifiers"]["domain"]["heldout"]
        assert 0.5 <= heldout["auc"] <= 1
        domain = {r["id"]: r["score"] for r in _lines(out / "scores.jsonl")}
        picked = [domain[i] for i in ids]
        assert picked == sorted(picked, reverse=True)  # taken by domain score
    if method == "fasttext_quality":
        quality = {r["id"]: r["score"] for r in _lines(out / "quality" / "scores.jsonl")}
        assert all(quality[i] >= 0.5 for i in ids)  # the world config's quality threshold
        assert "quality" in manifest["classifiers"]
        assert (out / "quality_classifier.json").is_file()
    if method == "dsir":
        assert (out / "dsir.npz").is_file()


def test_fasttext_beats_random_on_the_smoke_world(runs):
    def precision(method: str) -> float:
        return json.loads((runs[method] / "metrics.json").read_text())["precision"]

    assert precision("fasttext") > precision("random")
    assert precision("fasttext") >= 0.5


def test_a_rerun_skips_and_force_recomputes(world_cache, tmp_path, capsys):
    argv = ["run", *smoke_argv(world_cache, tmp_path / "r", "fasttext")]
    first = main(argv)
    outputs = ("selected.jsonl", "manifest.json", "metrics.json", "domain_classifier.bin")
    mtimes = {name: (tmp_path / "r" / name).stat().st_mtime_ns for name in outputs}
    again = main(argv)
    assert again["reused"] and not first["reused"]
    assert {n: (tmp_path / "r" / n).stat().st_mtime_ns for n in outputs} == mtimes
    assert again["metrics"] == first["metrics"]
    forced = main([*argv, "--force"])
    assert not forced["reused"] and forced["metrics"] == first["metrics"]  # deterministic
    assert all((tmp_path / "r" / n).stat().st_mtime_ns > mtimes[n] for n in outputs)
    changed = main([*argv, "--budget_tokens", str(SMOKE_BUDGET // 2)])
    assert not changed["reused"] and changed["tokens_selected"] <= SMOKE_BUDGET // 2
    summary = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    assert summary["budget_tokens"] == SMOKE_BUDGET // 2
    assert not list((tmp_path / "r").glob(".tmp-*"))


def test_a_crash_leaves_no_manifest_and_the_next_run_recomputes(smoke_config, monkeypatch):
    import datamodules.selection.pipeline as pipeline

    config = smoke_config("random")

    def boom(*args, **kwargs):
        raise RuntimeError("killed while evaluating")

    monkeypatch.setattr(pipeline, "_evaluate", boom)
    with pytest.raises(RuntimeError, match="killed"):
        run_selection(config)
    out = Path(config.output_dir)
    assert (out / "selected.jsonl").is_file() and not (out / "manifest.json").exists()
    monkeypatch.undo()
    assert not run_selection(config).reused


def test_an_interrupted_write_leaves_no_file(tmp_path):
    from datamodules.selection.corpus import Document

    with pytest.raises(IndexError):
        write_selected(tmp_path / "selected.jsonl", [Document("a", "x")], np.array([0, 5]))
    assert list(tmp_path.iterdir()) == []


def test_the_step_commands_give_the_runs_selection(runs, world_cache, tmp_path):
    common = smoke_argv(world_cache, tmp_path, "fasttext")
    trained = main(["train", *common, "--kind", "domain"])
    assert trained["heldout"]["auc"] >= 0.5 and Path(trained["model_path"]).is_file()
    scores = main(
        ["score", *common, "--scorer.kind", "fasttext", "--scorer.path", trained["model_path"]]
    )
    selection = main(["select", *common, "--scores", scores["scores"]])
    selected = tmp_path / "selected.jsonl"
    assert _lines(selected) == _lines(runs["fasttext"] / "selected.jsonl")
    assert (
        selection["tokens_selected"]
        == json.loads((runs["fasttext"] / "manifest.json").read_text())["tokens_selected"]
    )
    metrics = main(
        ["evaluate", *common, "--selected", str(selected), "--output", str(tmp_path / "m.json")]
    )
    assert metrics == {
        **json.loads((runs["fasttext"] / "metrics.json").read_text()),
        "selected_path": str(selected),
    }
    quality = main(
        ["train", *smoke_argv(world_cache, tmp_path / "q", "fasttext_quality"), "--kind", "quality"]
    )
    assert Path(quality["model_path"]).name == "quality_classifier.bin"
    assert quality["counts"]["positives"] > quality["counts"]["negatives"] > 0


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget_tokens", "100000000"], "'budget_tokens': is 100000000 but the corpus has only"),
        (["--quality.classifier.positive_values", "[excellent]"], "no positive examples"),
        (["--quality.classifier.positive_values", "[high, low]"], "no negative examples"),
        (
            ["--quality.scorer", "perplexity", "--quality.model", "/nonexistent/model"],
            "'quality.model'",
        ),
        (["--domain.positives", '[{"path": "/nonexistent/in_domain.jsonl"}]'], "no such file"),
        (["--method", "best"], "method"),
        (["--no_such_option", "1"], "no_such_option"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(world_cache, tmp_path, caplog, extra, message):
    argv = ["run", *smoke_argv(world_cache, tmp_path / "bad", "fasttext_quality"), *extra]
    assert _exit_code(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]


def test_missing_model_file_and_no_positives_in_the_step_commands(
    world_cache, tmp_path, write_jsonl, caplog
):
    common = smoke_argv(world_cache, tmp_path, "fasttext")
    missing = [
        "score",
        *common,
        "--scorer.kind",
        "fasttext",
        "--scorer.path",
        str(tmp_path / "absent.bin"),
    ]
    assert _exit_code(missing) == 2
    assert "'scorer.path': no such fastText .bin model file" in caplog.records[-1].getMessage()
    unreadable = write_jsonl("positives.jsonl", ["{broken", "{also broken"])
    no_positives = [
        "train",
        *common,
        "--kind",
        "domain",
        "--domain.positives",
        json.dumps([{"path": str(unreadable), "id_field": None}]),
    ]
    assert _exit_code(no_positives) == 2
    assert f"{unreadable}: no readable document among 2 records" in caplog.records[-1].getMessage()
    assert _exit_code(["select", *common]) == 2  # fasttext needs its scores file
    assert "'scores'" in caplog.records[-1].getMessage()


def test_library_errors_are_typed(smoke_config):
    with pytest.raises(ConfigError, match="'budget_tokens'"):
        run_selection(smoke_config("random", budget_tokens=None))
    with pytest.raises(ConfigError, match="'threshold'"):
        run_selection(smoke_config("dsir", threshold=0.5))
    config = smoke_config("fasttext_quality")
    config.quality.classifier.positive_values = ["nothing"]
    with pytest.raises(DataError, match="no positive examples"):
        run_selection(config)


def test_threshold_mode_selects_every_document_above_it(smoke_config):
    result = run_selection(smoke_config("fasttext", budget_tokens=None, threshold=0.5))
    out = Path(result.output_dir)
    scores = {r["id"]: r["score"] for r in _lines(out / "scores.jsonl")}
    ids = [r["id"] for r in _lines(out / "selected.jsonl")]
    assert sorted(ids) == sorted(i for i, s in scores.items() if s >= 0.5)


def test_a_subprocess_run_exits_2_on_a_budget_above_the_corpus(world_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = smoke_argv(world_cache, tmp_path, "random")
    argv[argv.index("--budget_tokens") + 1] = "999999999"
    done = subprocess.run(
        [sys.executable, "-m", "datamodules.selection", "run", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "'budget_tokens': is 999999999" in errors[0]
    assert done.stdout == ""


def test_the_in_process_fallback_scores_like_the_sharded_scorer(runs, world_cache, tmp_path):
    from datamodules.selection.pipeline import Context, _score_in_process
    from datamodules.selection.scorers import ScorerSpec

    _, config, _ = parse_config(["run", *smoke_argv(world_cache, tmp_path, "fasttext")])
    corpus = Context(config).resolve(config.corpus, "corpus")
    model = runs["fasttext"] / "domain_classifier.bin"
    spec = ScorerSpec(kind="fasttext", path=str(model))
    path = _score_in_process(corpus, spec, tmp_path, batch_size=7)
    assert _lines(path) == _lines(runs["fasttext"] / "scores.jsonl")


def test_a_model_based_quality_filter_in_the_pipeline(smoke_config, world_cache, tmp_path):
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from datamodules.selection.corpus import WorldSplits
    from tests.helpers import TINY_LLAMA

    tokenizer_dir = WorldSplits(smoke_world(), world_cache).tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        **TINY_LLAMA, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id
    )
    model_dir = tmp_path / "lm"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, model_dir / f.name)
    selection = smoke_config("fasttext_quality")
    selection.quality.scorer = "perplexity"
    selection.quality.model = str(model_dir)
    selection.quality.keep_fraction = 0.5
    selection.quality.threshold = None
    out = Path(run_selection(selection).output_dir)
    quality = np.array([r["score"] for r in _lines(out / "quality" / "scores.jsonl")])
    ids = [r["id"] for r in _lines(out / "quality" / "scores.jsonl")]
    cut = np.sort(quality)[::-1][len(quality) // 2 - 1]  # the top half of the whole corpus
    picked = {r["id"] for r in _lines(out / "selected.jsonl")}
    assert picked and all(quality[ids.index(i)] >= cut for i in picked)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["candidates"] <= len(quality) // 2
    assert "quality" not in manifest["classifiers"]  # no fastText quality classifier trained
