"""Building students: pretrained models train in train mode, checkpointing recomputes, clear errors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from common import ConfigError
from lightning_modules import CausalLMModule, LoraSettings
from lightning_modules.modeling import _drop_gguf_quantizer, decoder_layers
from tests.helpers import TINY_LLAMA, cpu_trainer, fixed_batch

TEXTS = ["Alice Varen was born in Orlin in 1987.", "Bram Oster works for Kestrel Labs."]


@pytest.fixture
def pretrained_dir(tmp_path: Path, tiny_tokenizer_dir: Path) -> Path:
    """A tiny Llama saved with `save_pretrained` (with its tokenizer), as a hub model would be."""
    from transformers import AutoTokenizer

    module = CausalLMModule(model_config=TINY_LLAMA, tokenizer=str(tiny_tokenizer_dir))
    module.configure_model()
    out = tmp_path / "pretrained"
    module.model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(out)
    return out


class RecordModes(pl.Callback):
    """The training flag of every student module at each training batch."""

    def __init__(self) -> None:
        self.modes: list[list[bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append([m.training for m in pl_module.model.modules()])


def count_mlp_calls(module: CausalLMModule) -> list[int]:
    """Count the layer-0 MLP's forward calls (a patched `forward`: module hooks do not fire again
    when torch's checkpoint recomputes a layer)."""
    calls = [0]
    mlp = decoder_layers(module.model)[0].mlp
    forward = mlp.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    mlp.forward = counted
    return calls


@pytest.mark.parametrize("checkpointing", [False, True])
def test_pretrained_student_trains_in_train_mode_and_checkpointing_recomputes(
    tmp_path, pretrained_dir, tiny_tokenizer, checkpointing
) -> None:
    module = CausalLMModule(
        model_name_or_path=str(pretrained_dir), gradient_checkpointing=checkpointing
    )
    module.configure_model()
    calls = count_mlp_calls(module)
    modes = RecordModes()
    batch = fixed_batch(tiny_tokenizer, TEXTS)
    trainer = cpu_trainer(tmp_path, max_steps=3, callbacks=[modes])
    trainer.fit(module, DataLoader([batch] * 3, batch_size=None))
    assert len(modes.modes) == 3
    assert all(all(step) for step in modes.modes), "a student module trained in eval mode"
    # 3 steps: one forward each, plus one recomputation each in backward with checkpointing
    assert calls[0] == (6 if checkpointing else 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "is not a directory"),
        (lambda root: root.joinpath("empty").mkdir() or root / "empty", "has no config.json"),
        (
            lambda root: (
                (
                    root.joinpath("noweights").mkdir(),
                    root.joinpath("noweights", "config.json").write_text("{}"),
                )
                and root / "noweights"
            ),
            "has no weights",
        ),
    ],
)
def test_bad_model_directory_is_one_line_naming_the_key(tmp_path, make, message) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        CausalLMModule(model_name_or_path=str(path))
    text = str(error.value)
    assert text.startswith("config key 'model.init_args.model_name_or_path'")
    assert "\n" not in text


def test_missing_gguf_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"gguf_file'.*no file 'model.gguf'"):
        CausalLMModule(model_name_or_path=str(tmp_path), gguf_file="model.gguf")


def test_a_dequantized_gguf_model_loses_its_quantizer_mark(pretrained_dir: Path) -> None:
    """transformers marks a model dequantized from GGUF as quantized, which `save_pretrained`
    refuses; `build_causal_lm` removes the mark (the real file: tests/real_model), and refuses
    weights left packed."""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.base import HfQuantizer

    class Marked(HfQuantizer):  # what transformers' GGUF quantizer leaves on the model
        def __init__(self) -> None:
            self.quantization_config = type("Config", (), {"quant_method": "gguf"})()
            self.packed_modules: dict[str, object] = {}

        def is_serializable(self, safe_serialization=None) -> bool:
            return False

        def _process_model_before_weight_loading(self, model, **kwargs) -> None: ...

        def _process_model_after_weight_loading(self, model, **kwargs) -> None: ...

        @property
        def is_trainable(self) -> bool:
            return False

    model = AutoModelForCausalLM.from_pretrained(pretrained_dir)
    model.hf_quantizer = Marked()
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(pretrained_dir.parent / "refused")
    _drop_gguf_quantizer(model, "model.init_args")
    assert getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(pretrained_dir.parent / "saved")
    packed = Marked()
    packed.packed_modules = {"lm_head.weight": object()}
    model.hf_quantizer = packed
    with pytest.raises(ConfigError, match="gguf_file.*packed"):
        _drop_gguf_quantizer(model, "model.init_args")


def test_lora_settings_from_a_mapping_and_lora_checkpoints_resume(
    tmp_path, tiny_tokenizer_dir, tiny_tokenizer
) -> None:
    """The CLI hands dataclass arguments over as mappings; hparams stay plain for weights_only loads."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    module = CausalLMModule(model_config=TINY_LLAMA, tokenizer=str(tiny_tokenizer_dir), lora=lora)
    assert module.lora_settings == LoraSettings(r=4, alpha=8, dropout=0.0)
    batch = fixed_batch(tiny_tokenizer, TEXTS)
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, DataLoader([batch] * 2, batch_size=None))
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # no pickled dataclasses
    resumed = CausalLMModule(
        model_config=TINY_LLAMA, tokenizer=str(tiny_tokenizer_dir), lora=LoraSettings(r=4, alpha=8)
    )
    cpu_trainer(tmp_path / "resumed", max_steps=3).fit(
        resumed, DataLoader([batch] * 3, batch_size=None), ckpt_path=str(path)
    )
    trained = dict(module.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, trained[name]), f"{name} did not go on training"


def test_lora_from_the_command_line(tmp_path, tiny_tokenizer_dir) -> None:
    from experiments.cli import build_cli

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(f'{{"text": "{t} {i}"}}\n' for i in range(8) for t in TEXTS))
    cli = build_cli(
        [
            "--model=lightning_modules.CausalLMModule",
            f"--model.init_args.model_config={TINY_LLAMA}",
            "--model.init_args.lora.r=4",
            "--model.init_args.lora.alpha=8",
            "--data=datamodules.PretrainingDataModule",
            f"--data.init_args.tokenizer={tiny_tokenizer_dir}",
            f"--data.init_args.train_sources=[{{path: {data}}}]",
            "--data.init_args.max_length=32",
            "--data.init_args.micro_batch_size=2",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            "--trainer.max_steps=1",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.model.lora_settings.r == 4
    assert any("lora_A" in n for n, _ in cli.model.model.named_parameters())
