"""Mix-CPT's format-alignment selection (`datamodules.format_alignment`): scores against a naive
full-logits computation, the selection rule, determinism, the resumable step and one-line errors."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from common.errors import ConfigError, DataError
from datamodules.format_alignment import (
    CandidateSource,
    FormatAlignmentConfig,
    encode_pairs,
    main,
    parse_config,
    random_scores,
    run_format_alignment,
    select_lowest,
)
from tests.helpers import TINY_LLAMA

REPO = Path(__file__).resolve().parents[2]
WORLD_YAML = REPO / "experiments/configs/format_alignment/world.yaml"

QUESTIONS = [
    ("Where was Alice Varen born?", "Orlin"),
    ("Who employs Bram Oster?", "Kestrel Labs"),
    ("Where does the river Tal flow?", "to the sea"),
    ("Where was Alice Varen born?", "Orlin"),  # a duplicate of the first
    ("What did she study?", "physics at Mereth University"),
    ("Where does Bram live?", "Dunmore"),
    ("Name the numbers.", "0 1 2 3 4 5 6 7 8 9"),
]


def _prompt(question: str) -> str:
    return f"User: {question}\nAssistant:"


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Handmade SFT and preference candidates."""
    root = tmp_path_factory.mktemp("fa_data")
    sft = [
        {
            "text": _prompt(q) + " " + a,
            "prompt": _prompt(q),
            "instruction": q,
            "response": " " + a,
            "id": i,
        }
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    pairs = [
        {"prompt": _prompt(q), "instruction": q, "chosen": " " + a, "rejected": " no idea"}
        for q, a in QUESTIONS[:5]
    ]
    return {
        "sft": _write_jsonl(root / "sft.jsonl", sft),
        "preference": _write_jsonl(root / "pairs.jsonl", pairs),
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """The tiny Llama (random init, seed 0) saved with its tokenizer, like a run's export."""
    from common import load_tokenizer
    from lightning_modules.modeling import ModelSource, build_causal_lm

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir), key="tokenizer")
    model = build_causal_lm(ModelSource(config=TINY_LLAMA, init_seed=0), tokenizer)
    out = tmp_path_factory.mktemp("fa_model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _config(model_dir: Path, data: dict[str, Path], out: Path, **overrides: Any):
    values: dict[str, Any] = {
        "model": str(model_dir),
        "output_dir": str(out),
        "sft_source": CandidateSource(path=str(data["sft"])),
        "preference_source": CandidateSource(
            path=str(data["preference"]), response_field="chosen", required_fields=["rejected"]
        ),
        "count_sft": 3,
        "count_preference": 2,
        "batch_size": 3,
    }
    values.update(overrides)
    return FormatAlignmentConfig(**values)


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _naive_nll(model: Any, tokenizer: Any, prompt: str, response: str) -> float:
    """Mean CE of the response tokens (end offset past the prompt) and EOS from full logits."""
    enc = tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    ids = [*enc["input_ids"], tokenizer.eos_token_id]
    is_target = [end > len(prompt) for _start, end in enc["offset_mapping"]] + [True]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    rows = [t - 1 for t in range(1, len(ids)) if is_target[t]]
    targets = torch.tensor([ids[t + 1] for t in rows])
    return float(torch.nn.functional.cross_entropy(logits[rows], targets))


@pytest.fixture(scope="module")
def naive(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda prompt, response: _naive_nll(model, tokenizer, prompt, response)


@pytest.fixture(scope="module")
def ppl_runs(model_dir: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """`response_ppl` at batch size 1 and 3."""
    root = tmp_path_factory.mktemp("fa_ppl")
    return {
        b: run_format_alignment(_config(model_dir, data, root / f"b{b}", batch_size=b))
        for b in (1, 3)
    }


def test_response_ppl_matches_full_logits(ppl_runs, naive) -> None:
    result = ppl_runs[3]
    for name, response_key, count in (("sft", "response", 7), ("preference", "chosen", 5)):
        records = _read(Path(result.manifest["sets"][name]["resolved_path"]))
        scores = _read(result.path("scores", name))
        assert [s["index"] for s in scores] == list(range(count))
        for record, row in zip(records, scores, strict=True):
            expected = naive(record["prompt"], record[response_key])
            assert row["score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
            assert row["nll"] == row["score"]


def test_selection_is_the_lowest_scores_in_order(ppl_runs) -> None:
    result = ppl_runs[3]
    for name, count in (("sft", 3), ("preference", 2)):
        scores = _read(result.path("scores", name))
        ranked = sorted(scores, key=lambda s: (s["score"], s["index"]))[:count]
        selected = result.selected(name)
        assert [r["index"] for r in selected] == [s["index"] for s in ranked]
        assert [r["score"] for r in selected] == [s["score"] for s in ranked]
    originals = _read(Path(result.manifest["sets"]["sft"]["resolved_path"]))
    for record in result.selected("sft"):  # the original record, plus score and index
        original = originals[record["index"]]
        assert {k: v for k, v in record.items() if k not in ("score", "index")} == original
    manifest = result.manifest
    assert manifest["sets"]["sft"]["selected"] == 3 and manifest["sets"]["sft"]["candidates"] == 7
    assert manifest["model"]["name_or_path"] == str(result.manifest["settings"]["model"])
    assert manifest["sets"]["sft"]["score_stats"]["min"] == result.selected("sft")[0]["score"]


def test_batch_size_changes_round_off_only(ppl_runs) -> None:
    one, three = ppl_runs[1], ppl_runs[3]
    assert one.fingerprint == three.fingerprint  # batch size is not a setting of the result
    for name in ("sft", "preference"):
        a = [s["score"] for s in _read(one.path("scores", name))]
        b = [s["score"] for s in _read(three.path("scores", name))]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert [r["index"] for r in one.selected(name)] == [
            r["index"] for r in three.selected(name)
        ]


def test_template_ratio_matches_full_logits(model_dir, data, naive, tmp_path) -> None:
    config = _config(model_dir, data, tmp_path / "out", score="template_ratio", count_sft=7)
    result = run_format_alignment(config)
    records = _read(data["sft"])
    for record, row in zip(records, _read(result.path("scores", "sft")), strict=True):
        templated = naive(record["prompt"], record["response"])
        plain = naive(record["instruction"] + "\n", record["response"])
        assert row["nll"] == pytest.approx(templated, rel=1e-5, abs=1e-6)
        assert row["nll_plain"] == pytest.approx(plain, rel=1e-5, abs=1e-6)
        assert row["score"] == pytest.approx(templated / plain, rel=1e-5)
    # the duplicate record (index 3) ties with index 0 up to round-off; the selection is the
    # full ranking here, lowest first
    selected = [r["index"] for r in result.selected("sft")]
    assert sorted(selected) == list(range(7))
    scores = [r["score"] for r in result.selected("sft")]
    assert scores == sorted(scores)


def test_select_lowest_breaks_ties_by_index_and_skips_nan() -> None:
    scores = [0.5, 0.1, 0.5, math.nan, 0.1, 0.3]
    assert select_lowest(scores, 3) == [1, 4, 5]
    assert select_lowest(scores, 5) == [1, 4, 5, 0, 2]
    assert select_lowest(scores, 0) == []
    with pytest.raises(ValueError, match="only 5"):
        select_lowest(scores, 6)


def test_stratified_selection_gives_each_group_its_share_of_its_lowest_scores() -> None:
    groups = ["qa"] * 6 + ["add"] * 3 + ["rev"] * 1
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0, 4.0, 6.0, 9.0]
    assert select_lowest(scores, 4) == [0, 1, 2, 3]  # globally lowest: only qa
    # shares 3 / 1.5 / 0.5: floors 3 / 1 / 0, the last one to the tied remainder seen first (add)
    chosen = select_lowest(scores, 5, groups)
    assert sorted(chosen) == [0, 1, 2, 6, 7]
    assert chosen == sorted(chosen, key=lambda i: scores[i])  # lowest first overall
    # shares 5.4 / 2.7 / 0.9: floors 5 / 2 / 0, remainders to rev (.9) then add (.7)
    assert sorted(select_lowest(scores, 9, groups)) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    # shares 1.6 / 6.4: qa gets both of its candidates, add its six lowest
    assert sorted(select_lowest(scores, 8, ["qa"] * 2 + ["add"] * 8)) == list(range(8))
    assert len(select_lowest(scores, 10, groups)) == 10
    nan_scores = [math.nan, *scores[1:]]
    assert 0 not in select_lowest(nan_scores, 6, groups)


def test_boundary_is_exact(tiny_tokenizer) -> None:
    prompt, response = _prompt("Where was Alice Varen born?"), " Orlin"
    (item,) = encode_pairs(tiny_tokenizer, [prompt], [response])
    targets = [t for t, label in zip(item.input_ids, item.labels) if label != -100]
    assert targets[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(targets[:-1]) == response
    assert tiny_tokenizer.decode(item.input_ids[: len(item.input_ids) - len(targets)]) == prompt
    # a prompt ending inside a token: the straddling token belongs to the response
    (cut,) = encode_pairs(tiny_tokenizer, [prompt[:-3]], [prompt[-3:] + response])
    assert cut.input_ids == item.input_ids
    assert cut.targets > item.targets


def test_random_is_seeded_and_loads_no_weights(model_dir, data, tmp_path, monkeypatch) -> None:
    import datamodules.format_alignment as fa

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("random must not load the model")

    monkeypatch.setattr(fa, "load_scorer", no_model)
    runs = [
        run_format_alignment(_config(model_dir, data, tmp_path / f"r{i}", score="random", seed=s))
        for i, s in enumerate((7, 7, 8))
    ]
    scores = [[s["score"] for s in _read(r.path("scores", "sft"))] for r in runs]
    assert scores[0] == scores[1] != scores[2]
    assert scores[0] == pytest.approx(random_scores(7, 7, "sft").tolist())
    chosen = [r["index"] for r in runs[0].selected("sft")]
    assert chosen == select_lowest(scores[0], 3)
    assert random_scores(5, 7, "preference").tolist() != random_scores(5, 7, "sft")[:5].tolist()


def test_second_run_is_skipped_and_force_recomputes(model_dir, data, tmp_path, caplog) -> None:
    config = _config(model_dir, data, tmp_path / "out", count_preference=0)
    first = run_format_alignment(config)
    assert not first.reused and first.selected("preference") == []
    stamp = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="datamodules.format_alignment"):
        second = run_format_alignment(config)
    assert second.reused and second.fingerprint == first.fingerprint
    assert "skipping" in caplog.text
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == stamp
    forced = run_format_alignment(config, force=True)
    assert not forced.reused and forced.fingerprint == first.fingerprint
    changed = run_format_alignment(replace(config, count_sft=2))
    assert not changed.reused and changed.fingerprint != first.fingerprint
    assert len(changed.selected("sft")) == 2
    # a damaged output is recomputed, not trusted
    (tmp_path / "out" / "selected_sft.jsonl").write_text("")
    assert not run_format_alignment(replace(config, count_sft=2)).reused


def test_overlong_candidates_are_skipped(model_dir, data, tmp_path) -> None:
    config = _config(model_dir, data, tmp_path / "out", max_length=40, count_sft=1)
    result = run_format_alignment(config)
    scores = _read(result.path("scores", "sft"))
    skipped = [s["index"] for s in scores if s["score"] is None]
    assert skipped and all(s["skipped"] == "overlong" for s in scores if s["score"] is None)
    assert result.selected("sft")[0]["index"] not in skipped
    assert result.manifest["sets"]["sft"]["skipped"]["overlong"] == len(skipped)
    with pytest.raises(ConfigError, match="count_sft.*can be scored"):
        run_format_alignment(replace(config, count_sft=7, output_dir=str(tmp_path / "o2")))


def _one_line_error(caplog, argv: list[str]) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    return errors[0]


def test_bad_inputs_are_one_line(model_dir, data, tmp_path, caplog) -> None:
    base = [
        f"--model={model_dir}",
        f"--output_dir={tmp_path / 'out'}",
        f"--sft_source.path={data['sft']}",
        f"--preference_source.path={data['preference']}",
        "--preference_source.response_field=chosen",
        "--count_sft=2",
        "--count_preference=2",
    ]
    bad = _write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "reply": "d"}]
    )
    message = _one_line_error(caplog, [*base, f"--sft_source.path={bad}"])
    assert (
        f"{bad}:2" in message and "'response'" in message and "sft_source.response_field" in message
    )
    message = _one_line_error(caplog, [*base, "--count_sft=8"])
    assert "count_sft" in message and "only 7 candidates" in message
    message = _one_line_error(caplog, [*base, f"--model={tmp_path / 'no' / 'such' / 'model'}"])
    assert "'model'" in message and "no such model directory" in message
    message = _one_line_error(caplog, [*base, "--model=runs/missing/stage1/export"])
    assert "no such model directory" in message
    message = _one_line_error(caplog, [*base, "--cout_sft=2"])
    assert "cout_sft" in message and "count_sft" in message
    message = _one_line_error(caplog, [*base, "--score=template_ratio", f"--sft_source.path={bad}"])
    assert f"{bad}:1" in message and "'instruction'" in message
    message = _one_line_error(
        caplog, [*base, "--plain_template=no field", "--score=template_ratio"]
    )
    assert "plain_template" in message
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    message = _one_line_error(caplog, [*base, f"--output_dir={foreign}"])
    assert "output_dir" in message and (foreign / "notes.txt").exists()
    missing = tmp_path / "pairs_without_rejected.jsonl"
    _write_jsonl(missing, [{"prompt": "a", "chosen": "b"}])
    message = _one_line_error(
        caplog,
        [
            *base,
            f"--preference_source.path={missing}",
            "--count_preference=1",
            "--preference_source.required_fields=[rejected]",
        ],
    )
    assert f"{missing}:1" in message and "'rejected'" in message


def test_world_config_parses() -> None:
    config, force = parse_config(["--config", str(WORLD_YAML)])
    assert not force
    assert config.model == "runs/mix_cpt/world/stage1/export"
    assert config.sft_source.path == "world:instructions"
    assert config.preference_source.path == "world:preference_pairs"
    assert config.preference_source.response_field == "chosen"
    assert (config.count_sft, config.count_preference, config.score) == (200, 100, "response_ppl")
    assert config.stratify_field == "source"
    default_world = yaml.safe_load((REPO / "experiments/configs/world/default.yaml").read_text())
    assert config.world.num_general_entities == default_world["num_general_entities"]
    config.validate()


def test_world_splits_end_to_end(tmp_path) -> None:
    """`world:<split>` sources of a small world, through the command and the world config."""
    from common import load_tokenizer
    from datamodules.world import materialize_world
    from lightning_modules.modeling import ModelSource, build_causal_lm
    from tests.datamodules.world.conftest import small_config

    world = small_config()
    cache = tmp_path / "worlds"
    artifacts = materialize_world(world, cache)
    tokenizer = load_tokenizer(str(artifacts.tokenizer_dir), key="tokenizer")
    model = build_causal_lm(ModelSource(config=TINY_LLAMA, init_seed=1), tokenizer)
    export = tmp_path / "stage1" / "export"
    model.save_pretrained(export)
    tokenizer.save_pretrained(export)
    world_yaml = tmp_path / "world.yaml"
    world_yaml.write_text(yaml.safe_dump(asdict(world)))
    args = [
        "--config",
        str(WORLD_YAML),
        f"--model={export}",
        f"--output_dir={tmp_path / 'selection'}",
        f"--world={world_yaml}",
        f"--world_cache_dir={cache}",
        "--count_sft=4",
        "--count_preference=3",
    ]
    result = main(args)
    assert result is not None and not result.reused
    sft, pairs = result.selected("sft"), result.selected("preference")
    assert len(sft) == 4 and len(pairs) == 3
    instructions = artifacts.read_split("instructions")
    assert all(instructions[r["index"]]["text"] == r["text"] for r in sft)
    assert all({"prompt", "chosen", "rejected", "score", "index"} <= set(r) for r in pairs)
    sets = result.manifest["sets"]
    assert sets["sft"]["candidates"] == len(instructions)
    assert sets["preference"]["source"] == "world:preference_pairs"
    assert main(args).reused


def test_validate_rejects_bad_values(model_dir, data, tmp_path) -> None:
    config = _config(model_dir, data, tmp_path / "out")
    for overrides, key in (
        ({"count_sft": -1}, "count_sft"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 1}, "max_length"),
        ({"sft_source": CandidateSource(path=None)}, "sft_source.path"),
        ({"device": "nonsense"}, "device"),
    ):
        with pytest.raises(ConfigError, match=key):
            replace(config, **overrides).validate()
    replace(config, sft_source=CandidateSource(path=None), count_sft=0).validate()
    with pytest.raises(DataError, match="no such file"):
        run_format_alignment(
            replace(config, sft_source=CandidateSource(path=str(tmp_path / "x.jsonl")))
        )


def test_any_model_source(ppl_runs, data, tiny_tokenizer_dir, tmp_path) -> None:
    """A `ModelSource` built from a config (same seed as the saved model) scores the same."""
    from lightning_modules.modeling import ModelSource

    config = replace(
        _config(Path("unused"), data, tmp_path / "out"),
        model=None,
        tokenizer=str(tiny_tokenizer_dir),
    )
    result = run_format_alignment(config, source=ModelSource(config=TINY_LLAMA, init_seed=0))
    assert result.manifest["model"]["config"] == TINY_LLAMA
    assert result.fingerprint != ppl_runs[3].fingerprint
    for name in ("sft", "preference"):
        a = [s["score"] for s in _read(result.path("scores", name))]
        b = [s["score"] for s in _read(ppl_runs[3].path("scores", name))]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_help_documents_every_option() -> None:
    from datamodules.format_alignment import build_parser

    text = " ".join(build_parser().format_help().split())
    for name in FormatAlignmentConfig.__dataclass_fields__:
        if name in ("sft_source", "preference_source", "world"):
            continue
        assert f"--{name} " in text
    for option in ("--sft_source.response_field", "--preference_source.required_fields", "--force"):
        assert option in text
    assert "mean NLL per token of the response" in text and "recompute" in text


def test_parquet_candidates(model_dir, data, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = _read(data["sft"])
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "sft.parquet")
    config = _config(
        model_dir,
        data,
        tmp_path / "out",
        score="random",
        sft_source=CandidateSource(path=str(tmp_path / "sft.parquet")),
    )
    result = run_format_alignment(config)
    assert [r["id"] for r in result.selected("sft")] == [r["index"] for r in result.selected("sft")]
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}]), tmp_path / "bad.parquet")
    bad = replace(
        config, sft_source=CandidateSource(path=str(tmp_path / "bad.parquet")), count_sft=1
    )
    with pytest.raises(DataError, match=r"bad\.parquet: record 0 \(0-based row\): .*'response'"):
        run_format_alignment(bad)
