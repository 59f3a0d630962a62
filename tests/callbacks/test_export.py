"""ExportCallback and export_pretrained: round trip through plain transformers, LoRA, atomicity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedModel

from callbacks import ExportCallback, export_pretrained
from common import atomic as atomic_module
from common.atomic import atomic_directory
from tests.callbacks.conftest import TinyCausalLM, cpu_trainer, pad_batch, qa_sequences, tiny_llama

PROBE = "Alice Varen was born in Orlin"


def logits(model: torch.nn.Module, tokenizer: Any, text: str = PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([tokenizer(text)["input_ids"]])).logits


def test_fit_exports_a_plain_transformers_model(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    module = module_factory(train_batches=[batch] * 3)
    logger = CSVLogger(tmp_path, name="run")
    callback = ExportCallback()
    trainer = cpu_trainer(tmp_path, max_steps=3, logger=logger, callbacks=[callback])
    trainer.fit(module)

    assert callback.export_dir == Path(logger.log_dir) / "export"
    loaded = AutoModelForCausalLM.from_pretrained(callback.export_dir)
    tokenizer = AutoTokenizer.from_pretrained(callback.export_dir)
    assert torch.equal(logits(loaded, tokenizer), logits(module.model, tiny_tokenizer))
    assert not torch.equal(
        logits(loaded, tokenizer), logits(tiny_llama(tiny_tokenizer), tiny_tokenizer)
    )  # trained
    assert tokenizer(PROBE)["input_ids"] == tiny_tokenizer(PROBE)["input_ids"]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert sorted(p.name for p in callback.export_dir.parent.iterdir() if "export" in p.name) == [
        "export"
    ]


def test_crash_mid_export_keeps_previous_export(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "export"
    export_pretrained(tiny_llama(tiny_tokenizer, seed=0), tiny_tokenizer, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash(self: PreTrainedModel, save_directory: Any, **kwargs: Any) -> None:
        (Path(save_directory) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_pretrained(tiny_llama(tiny_tokenizer, seed=1), tiny_tokenizer, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no partial or temp directory left
    monkeypatch.undo()
    loaded = AutoModelForCausalLM.from_pretrained(target)
    assert torch.equal(
        logits(loaded, tiny_tokenizer), logits(tiny_llama(tiny_tokenizer, seed=0), tiny_tokenizer)
    )


def test_new_export_replaces_old_and_leftovers_are_recovered(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    target = tmp_path / "export"
    export_pretrained(tiny_llama(tiny_tokenizer, seed=0), tiny_tokenizer, target)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    host = atomic_module._host_tag()
    (tmp_path / f".tmp-export-{dead.pid}-{host}dead").mkdir()  # a crashed writer's partial dir
    export_pretrained(tiny_llama(tiny_tokenizer, seed=1), tiny_tokenizer, target)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    loaded = AutoModelForCausalLM.from_pretrained(target)
    assert torch.equal(
        logits(loaded, tiny_tokenizer), logits(tiny_llama(tiny_tokenizer, seed=1), tiny_tokenizer)
    )

    # A crash between "move the old export aside" and "move the new one in" leaves it aside.
    target.rename(tmp_path / f".old-export-{dead.pid}-{host}beef")
    with atomic_directory(target) as tmp:
        assert (
            target.exists() and tmp.exists()
        )  # the old export was put back before writing started
        (tmp / "marker").write_text("new")
    assert (target / "marker").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_lora_is_merged_into_a_plain_model(
    tiny_tokenizer: Any, module_factory, tmp_path: Path
) -> None:
    module = module_factory(lora=True)
    module.configure_model()
    peft_model = module.model
    expected = logits(peft_model, tiny_tokenizer)
    with peft_model.disable_adapter():
        assert not torch.allclose(
            expected, logits(peft_model, tiny_tokenizer)
        )  # the adapters matter

    export_pretrained(peft_model, tiny_tokenizer, tmp_path / "merged", merge_lora=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert isinstance(merged, LlamaForCausalLM)
    assert not any("lora" in key for key in merged.state_dict())
    torch.testing.assert_close(logits(merged, tiny_tokenizer), expected, rtol=1e-5, atol=1e-5)
    assert any(
        "lora_A" in name for name, _ in peft_model.named_parameters()
    )  # the live model is untouched

    from peft import PeftModel

    export_pretrained(peft_model, tiny_tokenizer, tmp_path / "adapter", merge_lora=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(tiny_llama(tiny_tokenizer, seed=0), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, tiny_tokenizer), expected, rtol=0, atol=0)


class ScriptedValLoss(TinyCausalLM):
    """Logs a scripted `val_loss` per epoch: the best epoch is known, the weights keep training."""

    SCRIPT = (3.0, 1.0, 2.0, 4.0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.SCRIPT[self.current_epoch])


def test_export_best_holds_the_best_checkpoint_weights(tiny_tokenizer: Any, tmp_path: Path) -> None:
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    module = ScriptedValLoss(tiny_tokenizer, train_batches=[batch] * 2, val_batches=[batch])
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min")
    callback = ExportCallback(export_best=True)
    trainer = cpu_trainer(
        tmp_path, max_epochs=4, enable_checkpointing=True, callbacks=[checkpoint, callback]
    )
    trainer.fit(module)

    assert Path(checkpoint.best_model_path).name == "epoch=1-step=4.ckpt"
    best = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    exported = AutoModelForCausalLM.from_pretrained(callback.best_export_dir).state_dict()
    for key, value in exported.items():
        assert torch.equal(value, best[f"model.{key}"]), key
    final = AutoModelForCausalLM.from_pretrained(callback.export_dir).state_dict()
    assert not torch.equal(
        final["lm_head.weight"], exported["lm_head.weight"]
    )  # trained on after the best
    assert callback.best_export_dir == tmp_path / "export_best"
    assert callback.export_dir == tmp_path / "export"


@pytest.mark.distributed
@pytest.mark.slow
def test_export_gathers_a_sharded_model(
    tiny_tokenizer_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """FSDP2 over 2 CPU processes: rank 0 writes the full, unsharded weights."""
    root = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "tests.callbacks.sharded_export",
        str(tiny_tokenizer_dir),
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    reference = tiny_llama(tiny_tokenizer, seed=0)
    assert exported.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value), key
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "export")(PROBE)["input_ids"]
        == tiny_tokenizer(PROBE)["input_ids"]
    )


def test_wandb_offline_run_places_files_beside_its_checkpoints(
    tiny_tokenizer: Any, module_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B offline needs no account; export and results go to `<save_dir>/<project>/<run id>`."""
    from lightning.pytorch.loggers import WandbLogger

    from callbacks import KnowledgeEvalCallback, ThroughputCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    batch = pad_batch(qa_sequences(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    ppl = {"d": str(tmp_path / "ppl.jsonl")}
    (tmp_path / "ppl.jsonl").write_text('{"text": "Alice Varen"}\n')
    logger = WandbLogger(save_dir=str(tmp_path), project="probe", offline=True)
    callbacks = [
        KnowledgeEvalCallback(qa_sets={}, perplexity_sets=ppl),
        ThroughputCallback(log_every_n_steps=1, warmup_steps=1),
        ExportCallback(),
    ]
    trainer = cpu_trainer(tmp_path, max_steps=2, logger=logger, callbacks=callbacks)
    trainer.fit(module_factory(train_batches=[batch] * 2))
    run = tmp_path / "probe" / logger.version
    assert callbacks[2].export_dir == run / "export"
    assert AutoModelForCausalLM.from_pretrained(run / "export") is not None
    assert len((run / "knowledge_eval.jsonl").read_text().splitlines()) == 2


def test_every_exported_file_has_the_default_mode(tiny_tokenizer: Any, tmp_path: Path) -> None:
    """safetensors writes its file 0600; an export is for others to read, like the rest (0644)."""
    mask = os.umask(0o022)
    os.umask(mask)
    target = export_pretrained(tiny_llama(tiny_tokenizer), tiny_tokenizer, tmp_path / "export")
    modes = {p.name: p.stat().st_mode & 0o777 for p in target.rglob("*")}
    assert "model.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask
