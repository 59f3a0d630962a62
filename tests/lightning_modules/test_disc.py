"""DiSCModule: one teacher pass and packed students give exactly the naive per-split reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common import ConfigError
from datamodules.sources import SourceSpec
from datamodules.split_context import (
    SplitContextDataModule,
    draw_rng,
    pack_documents,
    split_document,
    target_spans,
)
from lightning_modules import DiSCModule, TeacherSettings
from losses import LossSpec, reference
from tests.helpers import TINY_LLAMA, cpu_trainer

T = 2.0
SEED, VISIT = 7, 3


def disc_module(tokenizer_dir: Path, **kwargs: Any) -> DiSCModule:
    """A built DiSC module on the tiny Llama (fp32, sdpa) whose student differs from its teacher."""
    kwargs.setdefault("optimizer", lambda params: torch.optim.AdamW(params, lr=1e-2))
    module = DiSCModule(
        model_config=TINY_LLAMA,
        tokenizer=str(tokenizer_dir),
        attn_implementation="sdpa",
        temperature=T,
        **kwargs,
    )
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the teacher is the initial student: move the student away from it
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return module


def hand_made_documents(vocab: int) -> list[list[list[int]]]:
    """Sentence token ids: several lengths, n = 2, all-draws (duplicates of n-1), 1-token targets."""
    rng = np.random.default_rng(1)

    def sentence(length: int) -> list[int]:
        return [int(t) for t in rng.integers(2, vocab, size=length)]

    return [
        [sentence(n) for n in (5, 7, 1, 6, 4, 8)],  # n = 6, a 1-token sentence in the middle
        [sentence(6), sentence(5)],  # n = 2: only index 1
        [sentence(4), sentence(1), sentence(6)],  # k-1 >= n-1: all, a 1-token target skipped
        [sentence(5), sentence(1)],  # n = 2 and the only target has 1 token: no kept split
        [sentence(n) for n in (3, 9, 2, 4, 6, 3, 5, 7)],  # n = 8
        [sentence(n) for n in (2, 2, 3, 2)],  # 2-token targets: one predicted token each
    ]


def reference_loss(module: DiSCModule, documents, mode: str) -> torch.Tensor:
    """The reference: per split, the teacher on context + target alone and the student on the target
    alone (full logits); forward KL at T times T² on target tokens 2..L; mean over tokens, splits,
    then documents with a kept split."""
    student, teacher = module.model, module.teacher.model
    per_document = []
    for index, sentences in enumerate(documents):
        tokens = [t for s in sentences for t in s]
        spans = target_spans(
            [len(s) for s in sentences],
            mode=mode,  # type: ignore[arg-type]
            num_splits=5,
            rng=draw_rng(SEED, VISIT, index),
        )
        per_split = []
        for start, end in spans:
            context, target = tokens[:start], tokens[start:end]
            if len(target) < 2:
                continue
            with torch.no_grad():
                t_logits = teacher(input_ids=torch.tensor([context + target])).logits[0]
            t_logits = t_logits[len(context) : len(context) + len(target) - 1]
            s_logits = student(input_ids=torch.tensor([target])).logits[0, : len(target) - 1]
            kl = reference.token_divergence(s_logits, t_logits, "forward_kl", temperature=T)
            per_split.append((kl * T**2).mean())
        if per_split:
            per_document.append(torch.stack(per_split).mean())
    return torch.stack(per_document).mean()


def module_loss(module: DiSCModule, documents, mode: str, max_length: int = 40) -> torch.Tensor:
    splits = [
        split_document(s, mode=mode, num_splits=5, seed=SEED, visit=VISIT, document=i)  # type: ignore[arg-type]
        for i, s in enumerate(documents)
    ]
    batch = pack_documents(splits, max_length=max_length, pad_token_id=0)
    step_weight = sum(1 for d in splits if d.splits)
    return module.compute_losses(batch)["loss"] / step_weight


def student_grads(module: DiSCModule, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters()}
    module.model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("mode", ["random", "middle", "uniform", "random_tokens"])
def test_one_teacher_pass_and_packed_students_equal_the_naive_reference(
    mode, tiny_tokenizer_dir
) -> None:
    module = disc_module(tiny_tokenizer_dir)
    documents = hand_made_documents(module.model.config.vocab_size)
    if mode == "random":  # the cases the documents are meant to exercise
        draws = [
            split_document(s, seed=SEED, visit=VISIT, document=i) for i, s in enumerate(documents)
        ]
        assert [len(d.splits) for d in draws][1:4] == [1, 1, 0]
        assert draws[2].skipped_targets == 1 and draws[3].skipped_targets == 1
    packed = module_loss(module, documents, mode)
    naive = reference_loss(module, documents, mode)
    assert float(naive.detach()) > 1e-3
    torch.testing.assert_close(packed, naive, rtol=2e-5, atol=1e-6)
    got, expected = student_grads(module, packed), student_grads(module, naive)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in module.teacher.parameters())


def test_the_loss_does_not_depend_on_how_documents_are_batched(tiny_tokenizer_dir) -> None:
    module = disc_module(tiny_tokenizer_dir)
    documents = hand_made_documents(module.model.config.vocab_size)
    splits = [
        split_document(s, seed=SEED, visit=VISIT, document=i) for i, s in enumerate(documents)
    ]
    docs = sum(1 for d in splits if d.splits)
    whole = module.compute_losses(pack_documents(splits, max_length=64, pad_token_id=0))
    parts = [
        module.compute_losses(pack_documents([d], max_length=40, pad_token_id=0)) for d in splits
    ]
    for name in ("loss", "kl"):
        total = torch.stack([p[name] for p in parts]).sum()
        torch.testing.assert_close(whole[name] / docs, total / docs, rtol=2e-5, atol=1e-7)
    assert float(whole["loss"].detach()) == pytest.approx(float(whole["kl"]), rel=1e-6)  # no CE


def test_loss_spec_teacher_and_batch_errors(tiny_tokenizer_dir) -> None:
    module = DiSCModule(model_config=TINY_LLAMA, tokenizer=str(tiny_tokenizer_dir))
    assert module.loss_spec == LossSpec(
        ce_weight=0.0,
        kl_weight=1.0,
        divergence="forward_kl",
        temperature=2.0,
        scale_by_temperature_squared=True,
    )
    assert module.teacher_settings == TeacherSettings(kind="frozen")
    assert module.hparams.temperature == 2.0
    # the saved hyperparameters rebuild the module (checkpoints call cls(**hparams))
    DiSCModule(**module.hparams)
    with pytest.raises(ConfigError, match=r"model\.init_args\.loss"):
        DiSCModule(model_config=TINY_LLAMA, loss=LossSpec(kl_weight=1.0))
    with pytest.raises(ConfigError, match=r"model\.init_args\.temperature"):
        DiSCModule(model_config=TINY_LLAMA, temperature=0.0)
    with pytest.raises(ConfigError, match=r"model\.init_args\.teacher"):
        DiSCModule(model_config=TINY_LLAMA, teacher={"kind": "adapters_disabled"})
    eight_bit = DiSCModule(model_config=TINY_LLAMA, teacher={"kind": "frozen_8bit"})
    assert eight_bit.teacher_settings == TeacherSettings(kind="frozen_8bit")
    built = disc_module(tiny_tokenizer_dir)
    with pytest.raises(ConfigError, match="SplitContextDataModule"):
        built.compute_losses({"input_ids": torch.ones(1, 4, dtype=torch.long)})


TEXTS = [
    "Alice Varen was born in Orlin. She studied physics. She works for Kestrel Labs.",
    "Bram Oster works for Kestrel Labs. He lives in Dunmore.",
    "The river Tal flows through three cities. It reaches the sea. Boats sail on it.",
    "Question: Where was Alice Varen born? Answer: Orlin.",
    "Numbers 0 1 2 3 appear too. The end is near.",
    "Kestrel Labs is in Dunmore. It builds boats. It has a river view. Alice likes it.",
]


def test_training_changes_the_student_never_the_teacher(tiny_tokenizer_dir, tmp_path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    data = SplitContextDataModule(
        tokenizer=str(tiny_tokenizer_dir),
        train_sources=[SourceSpec(path=str(path))],
        val_sources={"docs": SourceSpec(path=str(path))},
        max_length=96,
        micro_batch_size=2,
        seed=1,
        cache_dir=str(tmp_path / "stores"),
    )
    module = DiSCModule(
        model_config=TINY_LLAMA,
        tokenizer=str(tiny_tokenizer_dir),
        max_length=96,
        attn_implementation="sdpa",
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )
    module.configure_model()
    teacher = {n: p.detach().clone() for n, p in module.teacher.model.named_parameters()}
    student = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    for name, value in module.teacher.model.named_parameters():
        assert torch.equal(value, teacher[name]), name
        assert value.grad is None and not value.requires_grad
    assert not module.teacher.model.training
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p, student[n])]
    assert len(changed) == len(student)
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in module.teacher.parameters()}
    assert float(trainer.callback_metrics["train/kl"]) > 0
    evaluator = cpu_trainer(tmp_path / "val")  # validation: perplexity on plain packed rows
    evaluator.validate(module, datamodule=data)
    assert float(evaluator.callback_metrics["val/docs/ppl"]) > 1
