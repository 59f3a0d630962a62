"""Every method of `tests/methods/cases.METHODS` through the same tests.

- `fit` with `fast_dev_run` through the CLI;
- every trainable parameter changes after one step;
- batch 4 × accumulation 1 equals batch 1 × accumulation 4 (losses and gradients);
- 2-process DDP (gloo) and 2-process FSDP2 (`ModelParallelStrategy`) equal one process: the same
  samples, losses and gathered gradients;
- a mid-epoch resume replays the uninterrupted run exactly;
- checkpoints hold the student only (never a teacher), and load with `weights_only=True`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments.cli import build_cli, main
from tests.methods.cases import (
    METHODS,
    REPO,
    MethodCase,
    read_grads,
    read_run,
    recorder_overlay,
    trainer_args,
    write_run_files,
)

CASES = [pytest.param(case, id=case.name) for case in METHODS]
LR = "--model.init_args.optimizer=torch.optim.SGD"
LR_VALUE = "--model.init_args.optimizer.init_args.lr=0.05"


def fit_in_process(
    case: MethodCase, out: Path, tokenizer_dir: Path, *args: str, steps: int = 2, **trainer: object
) -> dict[int, dict]:
    """Run `fit` in this process with the recorder; return the recorded steps."""
    recorder = trainer.pop("_recorder", {})
    overlay = recorder_overlay(out, **recorder)
    ckpt_path = trainer.pop("ckpt_path", None)
    if recorder.get("checkpoint_every"):
        trainer["enable_checkpointing"] = True
    cli = build_cli(
        [
            *write_run_files(case, out.parent / "files", tokenizer_dir),
            "--config",
            str(overlay),
            LR,
            LR_VALUE,
            *trainer_args(out, steps, **trainer),
            *args,
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return read_run(out)


def assert_same_run(a: dict[int, dict], b: dict[int, dict], rel: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step]["samples"] == b[step]["samples"], step
        assert len(a[step]["weights"]) == len(b[step]["weights"]) == 1, step
        assert a[step]["weights"] == b[step]["weights"], step
        for name, value in a[step]["losses"].items():
            if name.endswith("_weight") or name in ("train/lr", "train/grad_norm"):
                continue
            assert b[step]["losses"][name] == pytest.approx(value, rel=rel, abs=1e-7), (step, name)


def assert_same_grads(a: Path, b: Path, rtol: float = 1e-5) -> None:
    ga, gb = read_grads(a), read_grads(b)
    assert ga.keys() == gb.keys() and ga
    for name, grad in ga.items():
        torch.testing.assert_close(gb[name], grad, rtol=rtol, atol=1e-7, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_fast_dev_run_through_the_cli(case, tmp_path, tiny_tokenizer_dir) -> None:
    files = write_run_files(case, tmp_path / "files", tiny_tokenizer_dir)
    main(["fit", *files, *trainer_args(tmp_path / "run", 1), "--trainer.fast_dev_run=true"])


@pytest.mark.parametrize("case", CASES)
def test_every_trainable_parameter_changes_after_one_step(
    case, tmp_path, tiny_tokenizer_dir
) -> None:
    cli = build_cli(
        [
            *write_run_files(case, tmp_path / "files", tiny_tokenizer_dir),
            "--model.init_args.optimizer=torch.optim.AdamW",
            "--model.init_args.optimizer.init_args.lr=0.01",
            *trainer_args(tmp_path / "run", 1),
        ],
        run=False,
    )
    cli.model.configure_model()
    before = {
        n: p.detach().clone() for n, p in cli.model.model.named_parameters() if p.requires_grad
    }
    assert before
    cli.trainer.fit(cli.model, cli.datamodule)
    after = dict(cli.model.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(after[n], p)]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.mark.parametrize("case", CASES)
def test_batch_times_accumulation_invariance(case, tmp_path, tiny_tokenizer_dir) -> None:
    whole = fit_in_process(
        case, tmp_path / "b4", tiny_tokenizer_dir, "--data.init_args.micro_batch_size=4"
    )
    accumulated = fit_in_process(
        case,
        tmp_path / "b1a4",
        tiny_tokenizer_dir,
        "--data.init_args.micro_batch_size=1",
        accumulate_grad_batches=4,
    )
    assert_same_run(whole, accumulated)
    assert_same_grads(tmp_path / "b4", tmp_path / "b1a4")


@pytest.mark.parametrize("case", CASES)
def test_mid_epoch_resume_replays_the_uninterrupted_run(case, tmp_path, tiny_tokenizer_dir) -> None:
    full = fit_in_process(
        case, tmp_path / "full", tiny_tokenizer_dir, steps=4, _recorder={"checkpoint_every": 2}
    )
    checkpoint = tmp_path / "full" / "ckpt" / "step=2.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert not any("teacher" in key for key in saved["state_dict"])
    assert all(key.startswith("lm.model.") for key in saved["state_dict"])
    resumed = fit_in_process(
        case, tmp_path / "resumed", tiny_tokenizer_dir, steps=4, ckpt_path=str(checkpoint)
    )
    assert sorted(resumed) == [3, 4]
    assert_same_run({k: full[k] for k in (3, 4)}, resumed)


def launch(
    case: MethodCase,
    out: Path,
    tokenizer_dir: Path,
    strategy: dict | None,
    batch: int,
    accelerator: str = "cpu",
) -> None:
    """`python -m experiments fit` as a subprocess (DDP and FSDP2 re-launch it per rank)."""
    overlay = recorder_overlay(out)
    args = [
        sys.executable,
        "-m",
        "experiments",
        "fit",
        *write_run_files(case, out.parent / "files", tokenizer_dir),
        "--config",
        str(overlay),
        LR,
        LR_VALUE,
        *trainer_args(out, 2),
        f"--data.init_args.micro_batch_size={batch}",
    ]
    if strategy is not None:
        strategy_file = out / "strategy.yaml"
        trainer = {"strategy": strategy, "devices": 2, "accelerator": accelerator}
        strategy_file.write_text(yaml.safe_dump({"trainer": trainer}))
        args += ["--config", str(strategy_file)]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


DDP = {
    "class_path": "lightning.pytorch.strategies.DDPStrategy",
    "init_args": {"process_group_backend": "gloo"},
}
FSDP2 = {
    "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
    "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("strategy", [pytest.param(DDP, id="ddp"), pytest.param(FSDP2, id="fsdp2")])
@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].distributed])
def test_two_processes_match_one(case, strategy, tmp_path, tiny_tokenizer_dir) -> None:
    # the same global batch of 4: one process × 4 rows (this one, with the ranks' single thread),
    # or two ranks × 2 rows
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit_in_process(
            case, tmp_path / "single", tiny_tokenizer_dir, "--data.init_args.micro_batch_size=4"
        )
    finally:
        torch.set_num_threads(threads)
    launch(case, tmp_path / "two", tiny_tokenizer_dir, strategy, batch=2)
    two = read_run(tmp_path / "two")
    assert_same_run(read_run(tmp_path / "single"), two, rel=1e-5)
    expected = "DTensor" if strategy is FSDP2 else "Parameter"
    assert all(entry["head"] == {expected} for entry in two.values())  # really sharded
    assert_same_grads(tmp_path / "single", tmp_path / "two", rtol=1e-4)


FSDP1 = {
    "class_path": "lightning.pytorch.strategies.FSDPStrategy",
    "init_args": {
        "auto_wrap_policy": ["transformers.models.llama.modeling_llama.LlamaDecoderLayer"],
        "sharding_strategy": "FULL_SHARD",
    },
}


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", CASES)
def test_fsdp1_on_gpus_matches_one_process(case, tmp_path, tiny_tokenizer_dir) -> None:
    """FSDP1 (decoder layers wrapped, the head in the root unit) on 2 GPUs: same losses as 1 CPU."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    launch(case, tmp_path / "single", tiny_tokenizer_dir, None, batch=4)
    launch(case, tmp_path / "fsdp1", tiny_tokenizer_dir, FSDP1, batch=2, accelerator="gpu")
    assert_same_run(read_run(tmp_path / "single"), read_run(tmp_path / "fsdp1"), rel=1e-4)
