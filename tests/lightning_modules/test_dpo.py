"""DPOModule: the loss against a naive definition, both references, the cache, exact reductions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from common.errors import ConfigError
from datamodules.preference import PreferenceDataModule
from lightning_modules import DPOModule
from lightning_modules.modeling import LoraSettings
from losses import dpo_loss
from losses.reference import sequence_log_probs
from tests.datamodules.test_preference import PAIRS, write_pairs
from tests.helpers import TINY_LLAMA, cpu_trainer

REPO = Path(__file__).resolve().parents[2]
MORE_PAIRS = [
    *PAIRS,
    {"prompt": "Bram Oster works for", "chosen": " Kestrel Labs.", "rejected": " the sea."},
    {"prompt": "She studied", "chosen": " physics.", "rejected": " Orlin in 1987."},
    {"prompt": "Question: Where does Bram live? Answer:", "chosen": " Dunmore.", "rejected": " no"},
    {"prompt": "Alice Varen was", "chosen": " born in Orlin.", "rejected": " a river."},
]


def dpo(tokenizer_dir: Path, **kwargs) -> DPOModule:
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.05))
    return DPOModule(
        model_config=TINY_LLAMA, tokenizer=str(tokenizer_dir), attn_implementation="sdpa", **kwargs
    )


def data(tmp_path: Path, tokenizer_dir: Path, records=MORE_PAIRS, **kwargs) -> PreferenceDataModule:
    kwargs.setdefault("micro_batch_size", 4)
    path = kwargs.pop("path", tmp_path / "pairs.jsonl")
    if not Path(path).exists():
        write_pairs(Path(path), records)
    return PreferenceDataModule(
        tokenizer=str(tokenizer_dir),
        train_sources=[{"path": str(path)}],
        max_length=48,
        cache_dir=str(tmp_path / "stores"),
        **kwargs,
    )


def first_batch(dm: PreferenceDataModule) -> dict[str, torch.Tensor]:
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def naive_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed response log-probs of every row from full logits (right padding, attention mask)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_log_probs(logits[:, :-1], batch["labels"][:, 1:])


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)


class Grads(pl.Callback):
    """Keeps the first optimizer step's gradients and the logged train metrics of every step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.metrics: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = {
                n: p.grad.detach().clone()
                for n, p in pl_module.model.named_parameters()
                if p.grad is not None
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.metrics.append(
                {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            )


def fit(module, dm, tmp_path: Path, steps: int = 1, **trainer) -> Grads:
    recorder = Grads()
    cpu_trainer(tmp_path, max_steps=steps, callbacks=[recorder], **trainer).fit(module, dm)
    return recorder


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"),
    [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.2), ("hinge", 0.0), ("ipo", 0.0)],
)
def test_loss_equals_dpo_loss_of_naive_log_probs(
    loss_type, label_smoothing, tmp_path, tiny_tokenizer_dir
):
    module = dpo(
        tiny_tokenizer_dir,
        reference="teacher",
        beta=0.3,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
    )
    module.configure_model()
    perturb(module.model)  # the policy moves away from the (frozen) reference
    batch = first_batch(data(tmp_path, tiny_tokenizer_dir))
    pairs = batch["pair_index"].numel()
    sums = module.compute_losses(batch)
    with torch.no_grad():
        policy = naive_logps(module.model, batch)
        reference = naive_logps(module.teacher.model, batch)
    assert not torch.allclose(policy, reference)
    if loss_type == "ipo":  # length-averaged log-probs
        targets = (batch["labels"][:, 1:] != -100).sum(dim=1)
        policy, reference = policy / targets, reference / targets
    expected = dpo_loss(
        policy[:pairs],
        policy[pairs:],
        reference[:pairs],
        reference[pairs:],
        beta=0.3,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        average_log_prob=loss_type == "ipo",
        reduction="sum",
    )
    torch.testing.assert_close(sums["loss"], expected.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        sums["rewards/chosen"], expected.chosen_rewards.sum(), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        sums["rewards/rejected"], expected.rejected_rewards.sum(), atol=1e-5, rtol=1e-5
    )
    margin = expected.chosen_rewards - expected.rejected_rewards
    torch.testing.assert_close(sums["rewards/margin"], margin.sum(), atol=1e-5, rtol=1e-5)
    assert float(sums["rewards/accuracy"]) == float((margin > 0).sum())
    summed = naive_logps(module.model, batch).detach()
    torch.testing.assert_close(sums["logps/chosen"], summed[:pairs].sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sums["logps/rejected"], summed[pairs:].sum(), rtol=1e-5, atol=1e-4)
    sums["loss"].backward()  # the gradient flows to the policy only
    assert all(p.grad is None for p in module.teacher.model.parameters())
    assert any(p.grad is not None for p in module.model.parameters())


def test_teacher_and_precomputed_references_agree_and_never_change(tmp_path, tiny_tokenizer_dir):
    runs = {}
    for reference in ("teacher", "precomputed"):
        module = dpo(tiny_tokenizer_dir, reference=reference)
        dm = data(tmp_path, tiny_tokenizer_dir)
        if reference == "teacher":
            module.configure_model()
            before = [p.detach().clone() for p in module.teacher.parameters()]
        recorder = fit(module, dm, tmp_path / reference, steps=3)
        runs[reference] = recorder.metrics
        if reference == "teacher":
            assert all(torch.equal(a, b) for a, b in zip(before, module.teacher.parameters()))
        else:
            assert module.teacher is None  # no reference model in memory
            table = module.reference_logps("train").clone()
            # the cached values are the initial policy's: a fresh module recomputes them
            fresh = dpo(tiny_tokenizer_dir, reference="precomputed")
            fresh.configure_model()
            batch = first_batch(data(tmp_path, tiny_tokenizer_dir))
            with torch.no_grad():
                logps = naive_logps(fresh.model, batch)
            pairs = batch["pair_index"]
            torch.testing.assert_close(table[pairs, 0], logps[: len(pairs)], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(table[pairs, 1], logps[len(pairs) :], rtol=1e-5, atol=1e-4)
            files = list((tmp_path / "reference_logps").glob("*.pt"))
            assert len(files) == 1
            saved = torch.load(files[0], weights_only=True)["logps"]
            assert torch.equal(saved, table)  # unchanged by training
    teacher, precomputed = runs["teacher"], runs["precomputed"]
    assert teacher[0]["train/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    for step_t, step_p in zip(teacher, precomputed):
        for name in ("train/loss", "train/logps/chosen", "train/rewards/margin"):
            assert step_p[name] == pytest.approx(step_t[name], rel=1e-4, abs=1e-5), name
    assert precomputed[-1]["train/rewards/margin"] > 0  # DPO learns the preference


@pytest.mark.parametrize("reference", ["teacher", "precomputed"])
def test_batch_4_equals_batch_2_times_accumulation_2(reference, tmp_path, tiny_tokenizer_dir):
    results = []
    for batch, accumulate in ((4, 1), (2, 2)):
        module = dpo(tiny_tokenizer_dir, reference=reference)
        dm = data(tmp_path, tiny_tokenizer_dir, micro_batch_size=batch, pad_to_max_length=True)
        results.append(
            fit(module, dm, tmp_path / f"{batch}x{accumulate}", accumulate_grad_batches=accumulate)
        )
    whole, accumulated = results
    assert whole.metrics[0]["train/step_weight"] == accumulated.metrics[0]["train/step_weight"] == 4
    for name, value in whole.metrics[0].items():
        assert accumulated.metrics[0][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert whole.grads.keys() == accumulated.grads.keys()
    for name, grad in whole.grads.items():
        torch.testing.assert_close(accumulated.grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_cache_is_reused_and_invalidated_by_new_data(tmp_path, tiny_tokenizer_dir, monkeypatch):
    module = dpo(tiny_tokenizer_dir)
    fit(module, data(tmp_path, tiny_tokenizer_dir), tmp_path / "a")
    first = module.reference_logps("train").clone()
    cache = tmp_path / "reference_logps"
    (file,) = cache.glob("*.pt")

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although the cache holds the values")

    with monkeypatch.context() as patch:  # a second run loads them
        patch.setattr(DPOModule, "_compute_reference", fail)
        again = dpo(tiny_tokenizer_dir)
        fit(again, data(tmp_path, tiny_tokenizer_dir), tmp_path / "b")
        assert torch.equal(again.reference_logps("train"), first)
    # new data: a new key, computed again, the old file kept
    changed = [*MORE_PAIRS[:-1], {**MORE_PAIRS[-1], "rejected": " a lake."}]
    other = dpo(tiny_tokenizer_dir)
    dm = data(tmp_path, tiny_tokenizer_dir, changed, path=tmp_path / "b.jsonl")
    fit(other, dm, tmp_path / "c")
    files = set(cache.glob("*.pt"))
    assert len(files) == 2 and file in files
    assert torch.equal(other.reference_logps("train")[:-1], first[:-1])
    assert not torch.equal(other.reference_logps("train")[-1], first[-1])
    # another initial model: another key
    seeded = dpo(tiny_tokenizer_dir, init_seed=1)
    fit(seeded, data(tmp_path, tiny_tokenizer_dir), tmp_path / "d")
    assert len(set(cache.glob("*.pt"))) == 3


@pytest.mark.parametrize(
    "lora", [None, LoraSettings(r=4, alpha=8, dropout=0.0)], ids=["full", "lora"]
)
def test_resume_without_the_cache_scores_with_the_initial_policy(
    lora, tmp_path, tiny_tokenizer_dir, caplog
):
    """A resumed run whose cache file is gone recomputes the reference with the initial policy:
    rebuilt from its source (full weights), or the student with its adapters off (LoRA)."""

    def sgd(params):
        return torch.optim.SGD(params, lr=0.5)

    pl.seed_everything(0)  # the LoRA adapters' initialization
    module = dpo(tiny_tokenizer_dir, lora=lora, optimizer=sgd)
    run = tmp_path / "run"
    cpu_trainer(run, max_steps=2, enable_checkpointing=True).fit(
        module, data(tmp_path, tiny_tokenizer_dir, micro_batch_size=2)
    )
    first = module.reference_logps("train").clone()
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    for file in (tmp_path / "reference_logps").glob("*.pt"):
        file.unlink()
    resumed = dpo(tiny_tokenizer_dir, lora=lora, optimizer=sgd)
    recorder = Grads()
    with caplog.at_level(logging.INFO, logger="lightning_modules.dpo"):
        cpu_trainer(tmp_path / "resumed", max_steps=3, callbacks=[recorder]).fit(
            resumed, data(tmp_path, tiny_tokenizer_dir, micro_batch_size=2), ckpt_path=checkpoint
        )
    assert ("rebuilding the initial model" in caplog.text) == (lora is None)
    assert len(recorder.metrics) == 1  # one more step, from the trained weights
    table = resumed.reference_logps("train")
    torch.testing.assert_close(table, first, rtol=1e-6, atol=1e-5)
    batch = first_batch(data(tmp_path, tiny_tokenizer_dir, micro_batch_size=2))
    with torch.no_grad():  # the trained policy scores differently: the check above means something
        trained = naive_logps(resumed.model.eval(), batch)
    pairs = batch["pair_index"]
    reference = torch.cat([table[pairs, 0], table[pairs, 1]])
    assert (trained - reference).abs().max() > 1e-2
    assert len(list((tmp_path / "reference_logps").glob("*.pt"))) == 1
    if lora is not None:
        assert resumed.teacher is None
        teacher = dpo(tiny_tokenizer_dir, lora=lora, reference="teacher")
        assert teacher.teacher_settings.kind == "adapters_disabled"


def test_validation_reports_reward_accuracy_on_held_out_pairs(tmp_path, tiny_tokenizer_dir):
    path = write_pairs(tmp_path / "pairs.jsonl", MORE_PAIRS)

    def pairs_with_val() -> PreferenceDataModule:
        val = {"held_out": {"path": str(path)}}
        return data(tmp_path, tiny_tokenizer_dir, path=path, val_sources=val)

    for reference in ("precomputed", "teacher"):
        module = dpo(tiny_tokenizer_dir, reference=reference, beta=0.5)
        run = tmp_path / reference
        trainer = cpu_trainer(run, max_steps=6, val_check_interval=2, enable_checkpointing=True)
        trainer.fit(module, pairs_with_val())
        metrics = trainer.callback_metrics
        assert 0.0 <= float(metrics["val/held_out/rewards/accuracy"]) <= 1.0
        assert float(metrics["val/held_out/rewards/margin"]) > 0
        assert float(metrics["val/held_out/loss"]) < float(torch.log(torch.tensor(2.0)))
        assert "val/held_out/logps/chosen" in metrics
        if reference == "precomputed":
            assert set(module._reference) == {"train", "val/held_out"}
            # `validate` from the checkpoint in a fresh module: the cached reference, same numbers
            (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
            fresh = dpo(tiny_tokenizer_dir, reference=reference, beta=0.5)
            result = cpu_trainer(tmp_path / "validate").validate(
                fresh, pairs_with_val(), ckpt_path=checkpoint, verbose=False
            )[0]
            expected = float(metrics["val/held_out/loss"])
            assert result["val/held_out/loss"] == pytest.approx(expected, rel=1e-6)


def test_config_errors_name_the_key(tiny_tokenizer_dir):
    cases = [
        ({"beta": 0.0}, "beta"),
        ({"loss_type": "kto"}, "loss_type"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"reference": "none"}, "reference"),
        ({"teacher": {"kind": "frozen"}}, "teacher"),
        ({"reference_batch_size": 0}, "reference_batch_size"),
        ({"loss": {"kl_weight": 1.0}}, "loss"),
    ]
    for kwargs, key in cases:
        with pytest.raises(ConfigError, match=rf"'model\.init_args\.{key}'"):
            dpo(tiny_tokenizer_dir, **kwargs)


def test_world_experiment_runs_through_the_cli(tmp_path, monkeypatch):
    from experiments.cli import build_cli
    from experiments.include import load_yaml
    from tests.experiments.conftest import CONFIG_DIR, _flat

    monkeypatch.chdir(tmp_path)
    smoke = load_yaml((CONFIG_DIR / "world" / "smoke.yaml").read_text())
    cli = build_cli(
        [
            "fit",
            "--model.class_path=lightning_modules.DPOModule",
            f"--model.init_args.model_config={json.dumps(TINY_LLAMA)}",
            "--model.init_args.attn_implementation=sdpa",
            f"--data={CONFIG_DIR / 'data' / 'world_alignment_preference.yaml'}",
            f"--data.init_args.world_cache_dir={tmp_path / 'worlds'}",
            f"--data.init_args.cache_dir={tmp_path / 'stores'}",
            *_flat(smoke, "data.init_args.world."),
            "--data.init_args.micro_batch_size=4",  # the smoke world's pool has 8 pairs
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 1
    assert len(list((tmp_path / "reference_logps").glob("*.pt"))) == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_compute_the_reference_of_one(tmp_path, tiny_tokenizer_dir):
    """DDP and FSDP2 (2 CPU processes) each compute a strided share of the reference log-probs
    and all-gather them: the same values as one process."""
    from tests.methods.cases import METHODS, trainer_args, write_run_files

    case = next(c for c in METHODS if c.name == "dpo")
    strategies = {
        "single": None,
        "ddp": {
            "class_path": "lightning.pytorch.strategies.DDPStrategy",
            "init_args": {"process_group_backend": "gloo"},
        },
        "fsdp2": {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
            "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
        },
    }
    files = write_run_files(case, tmp_path / "files", tiny_tokenizer_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    values = {}
    for name, strategy in strategies.items():
        out = tmp_path / name
        out.mkdir()
        args = [sys.executable, "-m", "experiments", "fit", *files, *trainer_args(out, 1)]
        args += [f"--model.init_args.reference_cache_dir={out / 'reference'}"]
        args += ["--model.init_args.reference_batch_size=3", "--data.init_args.micro_batch_size=2"]
        if strategy is not None:
            overlay = out / "strategy.yaml"
            overlay.write_text(json.dumps({"trainer": {"strategy": strategy, "devices": 2}}))
            args += ["--config", str(overlay)]
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        (file,) = (out / "reference").glob("*.pt")
        values[name] = torch.load(file, weights_only=True)
    single = values.pop("single")
    for name, other in values.items():
        assert other["fingerprint"] == single["fingerprint"], name
        torch.testing.assert_close(other["logps"], single["logps"], rtol=0, atol=1e-6, msg=name)
