"""KnowledgeEvalCallback and its functions: exact match, perplexity, logging, files, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from callbacks import KnowledgeEvalCallback
from callbacks._common import eval_mode
from common.errors import ConfigError, DataError
from evaluation import (
    greedy_generate,
    heldout_kl,
    heldout_nll,
    load_qa_records,
    load_texts,
    perplexity_chunks,
)
from evaluation import shard as _shard
from tests.callbacks.conftest import (
    QA_LINES,
    cpu_trainer,
    pad_batch,
    qa_sequences,
    tiny_llama,
    write_jsonl,
)

TEXTS = [
    "Alice Varen was born in Orlin in 1987.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "The river Tal flows.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 appear too, and then some more words follow.",
]


def reference_greedy(
    model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int
) -> str:
    """Greedy decoding by hand: full forward on the unpadded sequence, argmax, stop at EOS."""
    ids = tokenizer(prompt)["input_ids"]
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + generated])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            generated.append(token)
    return tokenizer.decode(generated, skip_special_tokens=True)


def reference_nll(model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> tuple[float, int]:
    """Summed NLL and token count from logits, one unpadded document (EOS appended) at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[*tokenizer(text)["input_ids"], tokenizer.eos_token_id]])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            total -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    return total, count


def test_greedy_generate_matches_unbatched_greedy(tiny_tokenizer: Any) -> None:
    """Left-padded batches give exactly the continuation each prompt gets alone (random model)."""
    model = tiny_llama(tiny_tokenizer, seed=3).eval()
    prompts = [p for p, _ in QA_LINES] + ["Q:", "The river Tal flows through three cities before"]
    got = greedy_generate(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    expected = [reference_greedy(model, tiny_tokenizer, p, 6) for p in prompts]
    assert got == expected
    assert all(g for g in got)  # a random model produces something; the test is not vacuous


def test_heldout_nll_is_token_weighted_and_matches_logits(tiny_tokenizer: Any) -> None:
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    nll, tokens = heldout_nll(model, tiny_tokenizer, TEXTS, max_length=128, batch_size=3)
    ref_nll, ref_tokens = reference_nll(model, tiny_tokenizer, TEXTS)
    assert tokens == ref_tokens
    assert nll == pytest.approx(ref_nll, rel=1e-5)
    # Token-weighted: not the mean of per-document perplexities.
    per_doc = [reference_nll(model, tiny_tokenizer, [t]) for t in TEXTS]
    assert math.exp(nll / tokens) != pytest.approx(
        sum(math.exp(n / c) for n, c in per_doc) / len(TEXTS)
    )


def test_perplexity_windows_predict_every_token_once(tiny_tokenizer: Any) -> None:
    ids = [*tiny_tokenizer(TEXTS[3])["input_ids"], tiny_tokenizer.eos_token_id]
    chunks = perplexity_chunks(tiny_tokenizer, [TEXTS[3]], max_length=7)
    assert all(len(c) <= 7 for c in chunks) and len(chunks) > 2
    assert [t for c in chunks for t in c[1:]] == ids[1:]  # each target exactly once, in order
    model = tiny_llama(tiny_tokenizer, seed=1).eval()
    _, windowed_tokens = heldout_nll(model, tiny_tokenizer, [TEXTS[3]], max_length=7)
    assert windowed_tokens == len(ids) - 1


def test_shard_is_disjoint_and_balanced() -> None:
    shards = [_shard(7, rank, 3) for rank in range(3)]
    counted = sorted(i for indices, flags in shards for i, f in zip(indices, flags) if f)
    assert counted == list(range(7))
    assert {len(indices) for indices, _ in shards} == {3}


def test_eval_mode_restores_each_submodule(tiny_tokenizer: Any) -> None:
    model = tiny_llama(tiny_tokenizer).train()
    model.model.layers[1].eval()  # a deliberately frozen part must stay in eval
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before


def qa_file(tmp_path: Path) -> Path:
    """Two memorizable questions (EM 1) and one with a wrong reference answer (EM 0)."""
    (p0, a0), (p1, a1) = QA_LINES
    return write_jsonl(
        tmp_path / "qa_domain.jsonl",
        [
            {
                "prompt": p0,
                "answer": a0.upper() + "  ",
                "entity": "Alice Varen",
                "attribute": "birth_city",
            },
            {"prompt": p1, "answer": a1, "entity": "Bram Oster", "attribute": "employer"},
            {
                "prompt": p0,
                "answer": " Dunmore",
                "entity": "Alice Varen",
                "attribute": "birth_city",
            },
        ],
    )


def test_fit_memorizes_and_reports_before_and_after(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    """A real fit: the "before" row has EM 0; the model memorizes the QA lines; the "after" row has
    EM 1 on them and 0 on the wrong answer; perplexity is exp of the hand-computed mean NLL."""
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    texts = [p + a for p, a in QA_LINES]
    module = module_factory(train_batches=[batch] * 30, val_batches=[batch])
    callback = KnowledgeEvalCallback(
        qa_sets={"domain": str(qa_file(tmp_path))},
        perplexity_sets={
            "domain": str(write_jsonl(tmp_path / "ppl.jsonl", [{"text": t} for t in texts]))
        },
        every_n_epochs=2,
        batch_size=2,
    )
    logger = CSVLogger(tmp_path, name="run")
    trainer = cpu_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[callback])
    trainer.fit(module)

    assert [e["stage"] for e in callback.history] == ["fit_start", "validation", "fit_end"]
    before, validation, after = (e["metrics"] for e in callback.history)
    assert before["knowledge/qa_em/domain"] == 0.0
    assert after == validation  # nothing trained between the last validation and the end
    assert after["knowledge/qa_em/domain"] == pytest.approx(2 / 3)
    assert after["knowledge/qa_em/domain/birth_city"] == 0.5
    assert after["knowledge/qa_em/domain/employer"] == 1.0
    assert callback.history[-1]["counts"]["qa/domain"] == 3
    assert all(module.training_flags) and len(module.training_flags) == 60

    nll, tokens = reference_nll(module.model.eval(), tiny_tokenizer, texts)
    assert after["knowledge/ppl/domain"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert after["knowledge/ppl/domain"] < before["knowledge/ppl/domain"] / 10

    lines = [
        json.loads(line)
        for line in (Path(logger.log_dir) / "knowledge_eval.jsonl").read_text().splitlines()
    ]
    assert lines == json.loads(json.dumps(callback.history))
    assert [(e["step"], e["epoch"]) for e in lines] == [(0, 0), (60, 1), (60, 2)]
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [r for r in rows if r.get("knowledge/qa_em/domain")]
    assert [r["step"] for r in logged] == ["0", "59", "60"]  # Lightning logs validation at step - 1
    assert float(logged[0]["knowledge/ppl/domain"]) == before["knowledge/ppl/domain"]
    assert {"knowledge/ppl/domain", "knowledge/qa_em/domain/employer"} <= set(rows[0])


def test_every_n_train_steps_evaluates_once_per_optimizer_step(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    """Step evaluations at steps 3 and 6 of 7 (micro-batches accumulated in pairs, no validation);
    the last step is evaluated by the "after" row, and a step already evaluated is not recomputed."""
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    module = module_factory(train_batches=[batch] * 14, val_batches=[batch])
    callback = KnowledgeEvalCallback(
        qa_sets={"domain": str(qa_file(tmp_path))},
        perplexity_sets={},
        every_n_epochs=0,
        every_n_train_steps=3,
        batch_size=2,
    )
    trainer = cpu_trainer(
        tmp_path,
        max_epochs=1,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        callbacks=[callback],
    )
    trainer.fit(module)
    stages = [(e["stage"], e["step"]) for e in callback.history]
    assert stages == [("fit_start", 0), ("train_step", 3), ("train_step", 6), ("fit_end", 7)]

    module = module_factory(train_batches=[batch] * 6, val_batches=[batch])
    callback = KnowledgeEvalCallback(
        qa_sets={"domain": str(qa_file(tmp_path))},
        perplexity_sets={},
        every_n_epochs=0,
        every_n_train_steps=3,
        on_fit_start=False,
        batch_size=2,
    )
    trainer = cpu_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module)
    history = callback.history
    assert [(e["stage"], e["step"]) for e in history] == [
        ("train_step", 3),
        ("train_step", 6),
        ("fit_end", 6),
    ]
    assert history[-1]["metrics"] == history[-2]["metrics"]


class EvalSetsDataModule(pl.LightningDataModule):
    """A datamodule that names its evaluation sets, as the synthetic-world datamodule does."""

    def __init__(self, sets: dict[str, dict[str, str]], batch: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.sets = sets
        self.batch = batch

    def evaluation_sets(self) -> dict[str, dict[str, str]]:
        return self.sets

    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader([self.batch], batch_size=None)


def test_validate_takes_sets_from_datamodule_and_logs(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    ppl_path = write_jsonl(tmp_path / "ppl.jsonl", [{"text": t} for t in TEXTS])
    sets = {"qa": {"domain": str(qa_file(tmp_path))}, "perplexity": {"general": str(ppl_path)}}
    callback = KnowledgeEvalCallback(results_file=str(tmp_path / "results.jsonl"))
    trainer = cpu_trainer(tmp_path, callbacks=[callback])
    trainer.validate(module_factory(), datamodule=EvalSetsDataModule(sets, batch), verbose=False)

    assert [e["stage"] for e in callback.history] == ["validation"]
    metrics = callback.history[0]["metrics"]
    assert set(metrics) == {
        "knowledge/qa_em/domain",
        "knowledge/qa_em/domain/birth_city",
        "knowledge/qa_em/domain/employer",
        "knowledge/ppl/general",
    }
    for key, value in metrics.items():
        assert trainer.callback_metrics[key].item() == pytest.approx(value)
    nll, tokens = reference_nll(trainer.lightning_module.model, tiny_tokenizer, TEXTS)
    assert metrics["knowledge/ppl/general"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1


def test_missing_sets_give_a_config_error(module_factory, tmp_path: Path) -> None:
    trainer = cpu_trainer(tmp_path, max_steps=1, callbacks=[KnowledgeEvalCallback(qa_sets={})])
    with pytest.raises(ConfigError, match=r"perplexity_sets.*no evaluation_sets"):
        trainer.fit(module_factory())


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        KnowledgeEvalCallback(max_new_tokens=0)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        KnowledgeEvalCallback(qa_sets={}, perplexity_sets={})._resolve_sets(None)  # type: ignore


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"prompt": "a", "answer": "b", "entity": "e", "attribute": "x"}\n{"prompt": \n',
            r"qa\.jsonl:2: malformed JSON \(Expecting value at column 12\)",
        ),
        (
            b'{"prompt": "a", "answer": "b", "entity": "e"}\n',
            r"qa\.jsonl:1: missing field 'attribute'",
        ),
        (
            b'{"prompt": "a", "answer": 3, "entity": "e", "attribute": "x"}\n',
            r":1: field 'answer' must be a string, got int",
        ),
        (
            b'{"prompt": "a", "answer": " ", "entity": "e", "attribute": "x"}\n',
            r":1: .*must not be empty",
        ),
        (b"[1, 2]\n", r":1: record must be a JSON object, got list"),
        (
            b'{"prompt": "caf\xe9", "answer": "b", "entity": "e", "attribute": "x"}\n',
            r":1: not valid UTF-8",
        ),
        (b"\n\n", r"qa\.jsonl: empty file"),
    ],
)
def test_bad_qa_files_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_qa_records(path)


def test_text_files_validated_and_empty_texts_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'text' must be a string, got list"):
        load_texts(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": ["b"]}]))
    with pytest.raises(DataError, match="file not found"):
        load_texts(tmp_path / "missing.jsonl")
    caplog.set_level("WARNING")
    assert load_texts(
        write_jsonl(tmp_path / "u.jsonl", [{"text": "a"}, {"text": "  "}, {"text": "b"}])
    ) == ["a", "b"]
    assert "skipped 1 empty text record" in caplog.text


def test_generation_loss_and_gradient_untouched(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    """Evaluating inside fit changes neither the weights nor the following training losses."""
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    losses = []
    for with_callback in (False, True):
        module = module_factory(train_batches=[batch] * 3)
        callbacks = [
            KnowledgeEvalCallback(qa_sets={"d": str(qa_file(tmp_path))}, perplexity_sets={})
        ]
        trainer = cpu_trainer(
            tmp_path, max_steps=3, limit_val_batches=0, callbacks=callbacks if with_callback else []
        )
        trainer.fit(module)
        with torch.no_grad():
            losses.append(
                F.cross_entropy(
                    module.model(**batch).logits[0, :-1], batch["input_ids"][0, 1:]
                ).item()
            )
    assert losses[0] == losses[1]


def test_knowledge_eval_rejects_sharded_strategies(module_factory, tmp_path: Path) -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = cpu_trainer(tmp_path, strategy=ModelParallelStrategy(), devices=1)
    with pytest.raises(ConfigError, match="does not support sharded models"):
        KnowledgeEvalCallback(qa_sets={}, perplexity_sets={"x": "y"}).setup(
            trainer, module_factory(), "fit"
        )


def test_resume_keeps_history_and_skips_before_row(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    ppl = {"d": str(write_jsonl(tmp_path / "ppl.jsonl", [{"text": t} for t in TEXTS]))}
    first = KnowledgeEvalCallback(qa_sets={}, perplexity_sets=ppl)
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[first])
    trainer.fit(module_factory(train_batches=[batch] * 4))
    trainer.save_checkpoint(tmp_path / "mid.ckpt")

    second = KnowledgeEvalCallback(qa_sets={}, perplexity_sets=ppl)
    trainer = cpu_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[second])
    trainer.fit(module_factory(train_batches=[batch] * 4), ckpt_path=tmp_path / "mid.ckpt")
    assert [(e["stage"], e["step"]) for e in second.history] == [
        ("fit_start", 0),
        ("fit_end", 2),
        ("fit_end", 4),
    ]
    assert second.history[:2] == first.history


def test_fast_dev_run_evaluates_one_batch_per_set(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    ppl = {"d": str(write_jsonl(tmp_path / "ppl.jsonl", [{"text": t} for t in TEXTS]))}
    callback = KnowledgeEvalCallback(
        qa_sets={"q": str(qa_file(tmp_path))}, perplexity_sets=ppl, batch_size=2
    )
    trainer = cpu_trainer(tmp_path, fast_dev_run=True, callbacks=[callback])
    trainer.fit(module_factory(train_batches=[batch], val_batches=[batch]))
    assert [e["stage"] for e in callback.history] == ["fit_start", "validation", "fit_end"]
    assert callback.history[0]["counts"] == {
        "qa/q": 2,
        "ppl_tokens/d": reference_nll(tiny_llama(tiny_tokenizer), tiny_tokenizer, TEXTS[:2])[1],
    }


# ---------------------------------------------------------------------------------- initial_kl


def _kl_callback(tmp_path: Path, **kwargs: Any) -> KnowledgeEvalCallback:
    ppl = write_jsonl(tmp_path / "ppl_kl.jsonl", [{"text": t} for t in TEXTS])
    kwargs.setdefault("batch_size", 2)
    return KnowledgeEvalCallback(
        qa_sets={}, perplexity_sets={"general": str(ppl)}, initial_kl=True, **kwargs
    )


def _capture_reference(callback: KnowledgeEvalCallback) -> list[Any]:
    """The reference fixed at fit start (the callback drops it at teardown)."""
    captured: list[Any] = []
    setup = callback._setup_reference

    def spy(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        setup(trainer, pl_module)
        captured.append(callback._reference)

    callback._setup_reference = spy  # type: ignore[method-assign]
    return captured


def _kl_rows(callback: KnowledgeEvalCallback) -> list[tuple[str, int, float]]:
    return [
        (e["stage"], e["step"], e["metrics"]["knowledge/kl_initial/general"])
        for e in callback.history
    ]


def test_initial_kl_is_zero_before_training_and_grows_with_a_private_copy(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    """No teacher: a deep copy taken at fit start. KL is exactly 0 at fit_start, > 0 after, equal to
    the KL against an independently rebuilt initial model; the copy never changes and is in neither
    the module's state_dict, the optimizer nor the checkpoint."""
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    module = module_factory(train_batches=[batch] * 6, val_batches=[batch])
    callback = _kl_callback(tmp_path, every_n_train_steps=3, every_n_epochs=0)
    captured = _capture_reference(callback)
    logger = CSVLogger(tmp_path, name="run")
    trainer = cpu_trainer(
        tmp_path, max_epochs=1, limit_val_batches=0, logger=logger, callbacks=[callback]
    )
    trainer.fit(module)

    rows = _kl_rows(callback)
    assert [(stage, step) for stage, step, _ in rows] == [
        ("fit_start", 0),
        ("train_step", 3),
        ("train_step", 6),
        ("fit_end", 6),
    ]
    assert rows[0][2] == 0.0  # exactly: the same weights, the same computation
    assert 0 < rows[1][2] < rows[2][2]

    (reference,) = captured
    assert callback._reference_source == "copy" and callback._reference is None  # released
    initial = tiny_llama(tiny_tokenizer, seed=0).eval()
    ref_params = dict(reference.model.named_parameters())
    for name, param in initial.named_parameters():
        assert torch.equal(ref_params[name], param), name  # the copy never trained
    assert not any(p.requires_grad for p in ref_params.values()) and not reference.model.training
    kl, tokens = heldout_kl(
        module.model.eval(), initial, tiny_tokenizer, TEXTS, max_length=128, batch_size=2
    )
    assert rows[-1][2] == pytest.approx(kl / tokens, rel=1e-5)

    ids = {p.data_ptr() for p in ref_params.values()}
    assert not ids & {t.data_ptr() for t in module.state_dict().values()}
    assert not ids & {p.data_ptr() for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert set(module.state_dict()) == {f"model.{k}" for k in initial.state_dict()}
    trainer.save_checkpoint(tmp_path / "kl.ckpt")
    checkpoint = torch.load(tmp_path / "kl.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == set(module.state_dict())
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "KnowledgeEvalCallback" in k]
    assert set(state) == {"history", "reference_source"} and state["reference_source"] == "copy"

    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("knowledge/kl_initial/general")]
    assert len(logged) == 4 and float(logged[0]["knowledge/kl_initial/general"]) == 0.0


def test_initial_kl_resume_without_initial_weights_is_a_config_error(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    trainer = cpu_trainer(
        tmp_path, max_steps=2, limit_val_batches=0, callbacks=[_kl_callback(tmp_path)]
    )
    trainer.fit(module_factory(train_batches=[batch] * 4))
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    trainer = cpu_trainer(
        tmp_path, max_steps=4, limit_val_batches=0, callbacks=[_kl_callback(tmp_path)]
    )
    with pytest.raises(ConfigError, match="initial model's weights are no longer available"):
        trainer.fit(module_factory(train_batches=[batch] * 4), ckpt_path=tmp_path / "mid.ckpt")


def test_initial_kl_reuses_a_frozen_teacher_and_survives_resume(
    tiny_tokenizer: Any, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """A `frozen` teacher copied from the student is the reference (no second copy), also after a
    resume, where the module rebuilds it from its source."""
    import callbacks.knowledge_eval as knowledge_eval
    from tests.helpers import TINY_TEXTS, fixed_batch, tiny_module

    def no_copy(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the teacher must be reused, not copied")

    monkeypatch.setattr(knowledge_eval, "copy", SimpleNamespace(deepcopy=no_copy))
    batch = fixed_batch(tiny_tokenizer, TINY_TEXTS)
    loader = torch.utils.data.DataLoader([batch] * 4, batch_size=None)
    histories = []
    for max_steps, ckpt in ((2, None), (4, tmp_path / "mid.ckpt")):
        module = tiny_module(tiny_tokenizer_dir, teacher={"kind": "frozen"}, total_steps=4)
        callback = _kl_callback(tmp_path)
        captured = _capture_reference(callback)
        trainer = cpu_trainer(
            tmp_path, max_steps=max_steps, limit_val_batches=0, callbacks=[callback]
        )
        trainer.fit(module, loader, ckpt_path=ckpt)
        if ckpt is None:
            trainer.save_checkpoint(tmp_path / "mid.ckpt")
        assert captured == [module.teacher] and callback._reference_source == "teacher"
        histories.append(_kl_rows(callback))
    first, resumed = histories
    assert [(s, n) for s, n, _ in first] == [("fit_start", 0), ("fit_end", 2)]
    assert first[0][2] == 0.0 and first[1][2] > 0
    assert resumed[:2] == first and resumed[2][:2] == ("fit_end", 4)
    initial = tiny_module(tiny_tokenizer_dir).model.eval()
    kl, tokens = heldout_kl(
        module.model.eval(), initial, tiny_tokenizer, TEXTS, max_length=128, batch_size=2
    )
    assert resumed[2][2] == pytest.approx(kl / tokens, rel=1e-5)


@pytest.mark.parametrize("zero_init", [True, False])
def test_initial_kl_of_a_lora_student(
    tiny_tokenizer: Any, module_factory, tmp_path: Path, zero_init: bool
) -> None:
    """Zero-initialized adapters: the student with adapters disabled is the initial model (no copy;
    also after a resume). Randomly initialized adapters are not: a copy is taken. Either way the
    KL is 0 at fit start."""
    from peft import LoraConfig, get_peft_model

    class ZeroLora(type(module_factory())):
        def configure_model(self) -> None:
            if self.model is None:
                config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
                self.model = get_peft_model(tiny_llama(self.tokenizer, seed=0), config)

    def make(**kwargs: Any) -> pl.LightningModule:
        if zero_init:
            return ZeroLora(tiny_tokenizer, lr=5e-2, **kwargs)
        return module_factory(lora=True, lr=5e-2, **kwargs)

    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    callback = _kl_callback(tmp_path)
    trainer = cpu_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[callback])
    trainer.fit(make(train_batches=[batch] * 3))
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    rows = _kl_rows(callback)
    assert rows[0] == ("fit_start", 0, 0.0) and rows[1][2] > 0
    assert callback._reference_source == ("adapters_disabled" if zero_init else "copy")

    resumed = _kl_callback(tmp_path)
    trainer = cpu_trainer(tmp_path, max_steps=5, limit_val_batches=0, callbacks=[resumed])
    if zero_init:
        module = make(train_batches=[batch] * 5)
        trainer.fit(module, ckpt_path=tmp_path / "lora.ckpt")
        assert resumed._reference_source == "adapters_disabled"
        # Still against the initial model: the rebuilt base, not the checkpointed adapters.
        kl, tokens = heldout_kl(
            module.model.eval(),
            tiny_llama(tiny_tokenizer, seed=0).eval(),
            tiny_tokenizer,
            TEXTS,
            max_length=128,
            batch_size=2,
        )
        assert _kl_rows(resumed)[-1] == ("fit_end", 5, pytest.approx(kl / tokens, rel=1e-5))
    else:
        with pytest.raises(ConfigError, match="no longer available"):
            trainer.fit(make(train_batches=[batch] * 5), ckpt_path=tmp_path / "lora.ckpt")


def test_initial_kl_needs_perplexity_sets(module_factory, tmp_path: Path) -> None:
    callback = KnowledgeEvalCallback(
        qa_sets={"q": str(qa_file(tmp_path))}, perplexity_sets={}, initial_kl=True
    )
    trainer = cpu_trainer(tmp_path, max_steps=1, callbacks=[callback])
    with pytest.raises(ConfigError, match="initial_kl.*no perplexity|none; give perplexity_sets"):
        trainer.fit(module_factory())


def test_cut_at_takes_the_answer_before_the_first_stop() -> None:
    from evaluation.knowledge import cut_at

    assert cut_at(" Orlin\nShe was born there.", ["\n"]) == " Orlin"
    assert cut_at(" yes. Because\nx", ["\n", "."]) == " yes"
    assert cut_at(" Orlin", ["\n"]) == " Orlin"
    assert cut_at(" Orlin\nx", []) == " Orlin\nx"


def test_stop_strings_and_extra_sets_resolved_by_the_datamodule(
    tiny_tokenizer: Any, module_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extra set named by a datamodule path is resolved through `resolve_source`; answers
    followed by reasoning on the next line match only with a newline stop."""
    import evaluation.knowledge as knowledge
    from datamodules.sources import SourceSpec

    extra = write_jsonl(
        tmp_path / "task.jsonl",
        [{"prompt": p, "answer": a.strip(), "entity": "x", "attribute": "t"} for p, a in QA_LINES],
    )

    class Resolving(EvalSetsDataModule):
        def resolve_source(self, spec: SourceSpec) -> SourceSpec:
            assert spec.path == "world:task_test"
            return SourceSpec(path=str(extra))

    answers = {p: a + "\nbecause of a fact." for p, a in QA_LINES}
    monkeypatch.setattr(
        knowledge,
        "greedy_generate",
        lambda model, tok, prompts, **kw: [answers[p] for p in prompts],
    )
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    results = {}
    for stops in ([], ["\n"]):
        callback = KnowledgeEvalCallback(
            qa_sets={},
            perplexity_sets={},
            extra_qa_sets={"task": "world:task_test"},
            stop_strings=stops,
            results_file=str(tmp_path / f"r{len(stops)}.jsonl"),
        )
        trainer = cpu_trainer(tmp_path, callbacks=[callback])
        trainer.validate(module_factory(), datamodule=Resolving({}, batch), verbose=False)
        results[len(stops)] = callback.history[0]["metrics"]["knowledge/qa_em/task"]
    assert results == {0: 0.0, 1: 1.0}


# --------------------------------------------------------------------------- initial_cache_dir


def _cached_fit(
    module_factory, tmp_path: Path, cache: Path, run: str, seed: int = 0, **kwargs: Any
) -> KnowledgeEvalCallback:
    tokenizer = module_factory().tokenizer
    batch = pad_batch(qa_sequences(tokenizer), tokenizer.pad_token_id)
    module = module_factory(train_batches=[batch] * 2, seed=seed)
    settings: dict[str, Any] = {"every_n_epochs": 0, "initial_cache_dir": str(cache), **kwargs}
    callback = _kl_callback(tmp_path, **settings)
    callback.qa_sets = {"domain": str(qa_file(tmp_path))}
    logger = CSVLogger(tmp_path, name=run)
    trainer = cpu_trainer(
        tmp_path, max_epochs=1, limit_val_batches=0, logger=logger, callbacks=[callback]
    )
    trainer.fit(module)
    return callback


def test_initial_cache_reuses_the_before_row_of_identical_weights_only(
    module_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The second fit from the same weights and settings reads the "before" row from the cache (and
    says so); its figures equal an evaluation without the cache. Other weights or another setting
    miss; an unreadable entry is evaluated again and replaced."""
    cache = tmp_path / "initial"
    first = _cached_fit(module_factory, tmp_path, cache, "a")
    assert "reused" not in first.history[0] and len(list(cache.glob("*.json"))) == 1
    with caplog.at_level("INFO", logger="callbacks.knowledge_eval"):
        second = _cached_fit(module_factory, tmp_path, cache, "b")
    (entry,) = list(cache.glob("*.json"))
    assert second.history[0]["reused"] == str(entry)
    assert f"reused from {entry}" in caplog.text
    assert second.history[0]["metrics"] == first.history[0]["metrics"]
    assert second.history[0]["counts"] == first.history[0]["counts"]
    plain = _cached_fit(module_factory, tmp_path, cache, "c", initial_cache_dir=None)
    assert plain.history[0]["metrics"] == first.history[0]["metrics"]
    assert "reused" not in plain.history[0]
    lines = (tmp_path / "b" / "version_0" / "knowledge_eval.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["reused"] == str(entry)
    assert [e["stage"] for e in second.history] == ["fit_start", "fit_end"]
    assert "reused" not in second.history[-1]  # trained weights are always evaluated

    other_weights = _cached_fit(module_factory, tmp_path, cache, "d", seed=1)
    other_setting = _cached_fit(module_factory, tmp_path, cache, "e", max_new_tokens=3)
    assert "reused" not in other_weights.history[0] and "reused" not in other_setting.history[0]
    assert len(list(cache.glob("*.json"))) == 3

    entry.write_text("{not json", encoding="utf-8")
    with caplog.at_level("WARNING", logger="callbacks.knowledge_eval"):
        again = _cached_fit(module_factory, tmp_path, cache, "f")
    assert "unreadable" in caplog.text and "reused" not in again.history[0]
    assert again.history[0]["metrics"] == first.history[0]["metrics"]
    assert json.loads(entry.read_text())["metrics"] == first.history[0]["metrics"]
