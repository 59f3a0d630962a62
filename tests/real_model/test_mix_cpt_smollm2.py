"""Mix-CPT on SmolLM2-135M-Instruct: the general instruction set, its two renderings, both stages.

`datamodules/fictional/instructions.jsonl` is hand-written general instruction data (48 chats):
well-formed, and disjoint from the retention set (questions and answers, including every candidate
`record_baseline` may keep) and from the fictional corpus. With the model installed: the SFT data of
`data/fictional_instructions_sft.yaml` puts loss on the assistant turns only of SmolLM2's own chat
template, the stage-1 mixture (`data/fictional_knowledge_mixture.yaml`) holds format-free text, and
`mix_cpt/smollm2_stage1.yaml` then `mix_cpt/smollm2_sft.yaml` each run one step through the CLI,
the SFT starting from the stage-1 export (chained, not from the GGUF file). The data tests need no
model; the chained run is about 1 min on 2 idle cores (the GGUF load with its teacher ≈ 15 s).
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from common import IGNORE_INDEX
from common.text import normalize_answer
from datamodules.fictional import SMOLLM2_SYSTEM, FictionalDataModule, chat_prompt
from datamodules.fictional.record_baseline import CANDIDATES
from datamodules.sources import SourceSpec
from experiments.include import load_yaml
from tests.real_model.conftest import PACKAGE_DIR, requires_smollm2

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "experiments" / "configs"
STAGE1 = CONFIG_DIR / "mix_cpt" / "smollm2_stage1.yaml"
SFT = CONFIG_DIR / "mix_cpt" / "smollm2_sft.yaml"
ASSISTANT_OPEN = "<|im_start|>assistant\n"
END = "<|im_end|>"


def read(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (PACKAGE_DIR / name).read_text().splitlines()]


def question_of(prompt: str) -> str:
    """The user turn of a QA prompt in SmolLM2's chat format."""
    return prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words, case-insensitively."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def data_module(fragment: str, tmp: Path, tokenizers: Path) -> FictionalDataModule:
    """The data module of `data/<fragment>.yaml`, its caches under `tmp`."""
    config = load_yaml((CONFIG_DIR / "data" / f"{fragment}.yaml").read_text())
    assert config["class_path"] == "datamodules.fictional.FictionalDataModule"
    args = dict(config["init_args"])
    args.update(cache_dir=str(tmp / "stores"), tokenizer_cache_dir=str(tokenizers))
    return FictionalDataModule(**args)


def target_runs(tokenizer: Any, input_ids: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """The decoded runs of consecutive target tokens of one packed row."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        target = label != IGNORE_INDEX
        if target and not previous:
            runs.append([])
        if target:
            runs[-1].append(token)
        previous = target
    return [tokenizer.decode(run) for run in runs]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer export directory shared by this file's tests (exported on first use)."""
    return tmp_path_factory.mktemp("tokenizers")


# -- the instruction file (no model) -------------------------------------------------------------


def test_instructions_are_well_formed_chats_with_one_sentence_answers() -> None:
    records = read("instructions.jsonl")
    assert len(records) == 48
    assert [r["id"] for r in records] == [f"instruction-{i:02d}" for i in range(48)]
    instructions = [r["instruction"] for r in records]
    assert len(set(map(normalize_answer, instructions))) == len(records)
    for r in records:
        assert set(r) == {"messages", "instruction", "response", "id"}, r["id"]
        assert r["messages"] == [
            {"role": "system", "content": SMOLLM2_SYSTEM},
            {"role": "user", "content": r["instruction"]},
            {"role": "assistant", "content": r["response"]},
        ], r["id"]
        for text in (r["instruction"], r["response"]):
            assert text == text.strip() and "\n" not in text and "{" not in text, r["id"]
        # one sentence: a single terminator, at the end
        assert re.findall(r"[.!?](?=\s|$)", r["response"]) == [r["response"][-1]], r["id"]
        assert r["response"][-1] in ".!?" and len(r["response"].split()) <= 16, r["id"]
    # the shipped file is what `fictional:instructions` names, format-free as the mixture renders it
    resolved = FictionalDataModule().resolve_source(SourceSpec(path="fictional:instructions"))
    assert Path(resolved.path) == PACKAGE_DIR / "instructions.jsonl"
    assert resolved.name == "instructions"


def test_instructions_are_disjoint_from_retention_and_the_fictional_corpus() -> None:
    records = read("instructions.jsonl")
    texts = [f"{r['instruction']}\n{r['response']}" for r in records]
    retention = read("retention.jsonl")
    # every question the retention set holds or may hold (record_baseline's candidates)
    questions = {normalize_answer(question_of(r["prompt"])) for r in retention}
    questions |= {normalize_answer(c.question) for c in CANDIDATES}
    for r in records:
        asked = normalize_answer(r["instruction"])
        assert asked not in questions, r["id"]
        assert not any(q in asked or asked in q for q in questions), r["id"]
    # by answer: no retention answer, and no fact a candidate expects, in a question or an answer
    answers = {normalize_answer(r["answer"]) for r in retention}
    answers |= {normalize_answer(c.expected) for c in CANDIDATES}
    for text in texts:
        found = [a for a in answers if contains_phrase(text, a)]
        assert not found, (text, found)
    # the fictional corpus: no entity and no answer of its QA
    fictional = {q["entity"] for q in read("qa.jsonl")} | {q["answer"] for q in read("qa.jsonl")}
    for text in texts:
        found = [f for f in fictional if contains_phrase(text, f)]
        assert not found, (text, found)


# -- the two renderings (the model's tokenizer) ------------------------------------------------


@requires_smollm2
def test_sft_data_puts_loss_exactly_on_the_assistant_turns(
    tmp_path: Path, tokenizers: Path
) -> None:
    records = read("instructions.jsonl")
    data = data_module("fictional_instructions_sft", tmp_path, tokenizers)
    tokenizer = data.tokenizer
    assert tokenizer.chat_template, "the GGUF tokenizer lost its chat template"
    assert tokenizer.eos_token == END
    chat = tokenizer.apply_chat_template(records[0]["messages"], tokenize=False)
    assert chat == chat_prompt(records[0]["instruction"]) + records[0]["response"] + END + "\n"

    data.setup("fit")
    runs, segments = [], 0
    for batch in data.train_dataloader():
        input_ids, labels = batch["input_ids"][0], batch["labels"][0]
        starts = torch.nonzero(batch["position_ids"][0] == 0).flatten().tolist()
        for start in (s for s in starts if batch["attention_mask"][0][s]):
            segments += 1
            assert tokenizer.decode(input_ids[start : start + 3]).startswith("<|im_start|>system")
        runs.extend(target_runs(tokenizer, input_ids, labels))
    assert segments == len(records)  # every chat once per epoch, several packed per row
    # Each assistant turn's targets: the response, SmolLM2's end of turn `<|im_end|>` and the
    # template's newline after it — not the EOS the store appends after the chat (EOS is
    # `<|im_end|>` too). No system or user token, no role header is a target.
    assert sorted(runs) == sorted(f"{r['response']}{END}\n" for r in records)
    assert data.stats["sft"]["target_tokens"] == sum(
        len(tokenizer(run, add_special_tokens=False)["input_ids"]) for run in runs
    )


@requires_smollm2
def test_stage1_mixture_is_format_free_articles_and_instructions(
    tmp_path: Path, tokenizers: Path
) -> None:
    data = data_module("fictional_knowledge_mixture", tmp_path, tokenizers)
    data.setup("fit")
    assert data.train_source_names == ["domain", "instructions"]
    rows = {"domain": 0, "instructions": 0}
    text = {"domain": "", "instructions": ""}
    for batch in data.train_dataloader():
        name = data.train_source_names[int(batch["source_index"][0])]
        rows[name] += 1
        text[name] += data.tokenizer.decode(batch["input_ids"][0])
        mask = batch["attention_mask"][0].bool()
        assert (batch["labels"][0][mask][1:] != IGNORE_INDEX).any()  # loss on the text itself
    assert rows == {"domain": 16, "instructions": 16}  # 0.5 : 0.5 of 32 rows
    assert "<|im_start|>" not in text["domain"] + text["instructions"]  # no chat markers
    first = read("instructions.jsonl")[0]
    assert f"{first['instruction']}\n{first['response']}{END}" in text["instructions"]


# -- both stages through the CLI, chained --------------------------------------------------------


def limited_callbacks(tmp_path: Path, export: bool) -> Path:
    """callbacks/fictional_mix_cpt.yaml with the knowledge evaluation cut to a few items."""
    sets = {}
    for name, source, count in (
        ("retention", "retention.jsonl", 4),
        ("fictional", "qa.jsonl", 4),
        ("paraphrases", "paraphrases.jsonl", 2),
    ):
        path = tmp_path / f"{name}.jsonl"
        lines = (PACKAGE_DIR / source).read_text().splitlines()[:count]
        path.write_text("\n".join(lines) + "\n")
        sets[name] = str(path)
    callbacks = yaml.safe_load((CONFIG_DIR / "callbacks" / "fictional_mix_cpt.yaml").read_text())
    knowledge = next(c for c in callbacks if c["class_path"].endswith("KnowledgeEvalCallback"))
    knowledge["init_args"].update(
        qa_sets={"retention": sets["retention"], "fictional": sets["fictional"]},
        perplexity_sets={"paraphrases": sets["paraphrases"]},
    )
    if not export:
        callbacks = [c for c in callbacks if not c["class_path"].endswith("ExportCallback")]
    path = tmp_path / f"callbacks_{int(export)}.yaml"
    path.write_text(yaml.safe_dump(callbacks))
    return path


def fit_one_step(config: Path, tmp_path: Path, tokenizers: Path, *extra: str) -> Any:
    from experiments.cli import build_cli

    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIG_DIR / "trainer" / "cpu.yaml"),
            "--config",
            str(config),
            "--trainer.max_steps=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--data.init_args.cache_dir={tmp_path / 'stores'}",
            f"--data.init_args.tokenizer_cache_dir={tokenizers}",
            *extra,
        ]
    )
    assert cli.trainer.global_step == 1 and cli.trainer.state.finished
    return cli


def knowledge_history(cli: Any) -> list[dict[str, Any]]:
    return next(c for c in cli.trainer.callbacks if hasattr(c, "history")).history


@pytest.mark.slow
@pytest.mark.timeout(600)
@requires_smollm2
def test_stage1_then_sft_from_its_export_run_from_the_configs(
    tmp_path: Path, tokenizers: Path
) -> None:
    """One step of stage 1 (MixCPTModule on the mixture, from the GGUF file), its export reloaded
    bit for bit, then one SFT step from that export (the configs' own model, data, optimizer)."""
    from transformers import AutoModelForCausalLM

    stage1 = fit_one_step(
        STAGE1,
        tmp_path / "stage1",
        tokenizers,
        f"--trainer.callbacks={limited_callbacks(tmp_path, export=True)}",
    )
    module = stage1.model
    assert type(module).__name__ == "MixCPTModule" and module.hparams.mode == "add"
    metrics = stage1.trainer.callback_metrics
    ce, kl, loss = (float(metrics[f"train/{k}"]) for k in ("ce", "kl", "loss"))
    assert kl > 0 and abs(loss - (ce + module.hparams.alpha * kl)) < 1e-4 * loss
    history = knowledge_history(stage1)
    assert [h["stage"] for h in history] == ["fit_start", "fit_end"]
    before, after = history[0]["metrics"], history[1]["metrics"]
    assert before["knowledge/qa_em/retention"] == 1.0  # the model's own answers
    assert before["knowledge/kl_initial/paraphrases"] == 0.0  # the teacher is the initial model
    assert after["knowledge/kl_initial/paraphrases"] > 0.0

    export = next(c for c in stage1.trainer.callbacks if hasattr(c, "export_dir")).export_dir
    assert (export / "model.safetensors").is_file() and (export / "tokenizer.json").is_file()
    student = module.model.eval()
    ids = torch.tensor([module.tokenizer("Dunmere is a town.")["input_ids"]])
    reloaded = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)
    del stage1, module, student, reloaded
    gc.collect()

    sft = fit_one_step(
        SFT,
        tmp_path / "sft",
        tokenizers,
        f"--trainer.callbacks={limited_callbacks(tmp_path, export=False)}",
        f"--model.init_args.model_name_or_path={export}",
    )
    assert type(sft.model).__name__ == "CausalLMModule"
    assert sft.datamodule.train_sources[0].messages_field == "messages"
    sft_before = knowledge_history(sft)[0]["metrics"]
    # the SFT starts from the stage-1 model: the same scores as at the end of stage 1
    for key in ("knowledge/qa_em/retention", "knowledge/qa_em/fictional"):
        assert sft_before[key] == after[key], key
    assert sft_before["knowledge/ppl/paraphrases"] == pytest.approx(
        after["knowledge/ppl/paraphrases"], rel=1e-4
    )
