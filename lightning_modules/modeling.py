"""Building causal LMs and running them: the one place every method (and evaluation) reuses.

- `ModelSource` says where a model comes from: a hub id, a local `save_pretrained` directory, a GGUF
  file (transformers' `gguf_file=`), or a config for a fresh model (tiny models for tests and the demo).
- `build_causal_lm` turns a source into a `PreTrainedModel` (dtype, attention kernel), with one-line
  errors naming the config key; `enable_activation_checkpointing` and `add_lora` adapt it.
- `decoder_hidden_states` is the packing-aware forward: with `position_ids` restarting at every
  document the 2-D mask is left out, and transformers derives the exact per-document causal mask.
- `output_head` returns the LM head's weight and bias, for the fused losses.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from common import ConfigError
from common.paths import is_local_path, resolve_path

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DType = Literal["float32", "bfloat16", "float16"]
AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the student; the base weights stay frozen.

    Args:
        r: Adapter rank.
        alpha: Scaling numerator (`alpha / r` scales the adapter output).
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt; "all-linear" adapts every linear layer but the LM head.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")


@dataclass
class ModelSource:
    """Where a causal LM comes from: exactly one of `name_or_path` and `config`.

    Args:
        name_or_path: A hub id, a local `save_pretrained` directory, or the directory holding `gguf_file`;
            `pkg:<module>` names an installed package's directory (see `common.paths`).
        gguf_file: A GGUF file inside `name_or_path` (dequantized once, then cached: `dequantized_gguf`).
        config: Keyword arguments of a transformers config for a fresh model, e.g.
            `{model_type: llama, hidden_size: 64, ...}`; `vocab_size` and special token ids come from
            the tokenizer.
        init_seed: Seed of the initial weights of a model built from `config`.
    """

    name_or_path: str | None = None
    gguf_file: str | None = None
    config: dict[str, Any] | None = None
    init_seed: int = 0

    def validate(self, key: str) -> None:
        """Check the source without loading it; `key` prefixes the config keys in the errors."""
        if (self.name_or_path is None) == (self.config is None):
            raise ConfigError(
                f"{key}.model_name_or_path",
                "set exactly one of model_name_or_path (a hub id or a local directory) "
                "and model_config (a transformers config for a fresh model)",
            )
        if self.name_or_path is None:
            if self.gguf_file is not None:
                raise ConfigError(f"{key}.gguf_file", "needs model_name_or_path (its directory)")
            return
        name = resolve_path(self.name_or_path, key=f"{key}.model_name_or_path")
        path = Path(name).expanduser()
        looks_local = is_local_path(name) or name != self.name_or_path
        if not looks_local:
            return  # a hub id: resolved (offline: from the local cache) when loading
        where = f"{key}.model_name_or_path"
        if not path.is_dir():
            raise ConfigError(where, f"{name!r} is not a directory")
        if self.gguf_file is not None:
            if not (path / self.gguf_file).is_file():
                raise ConfigError(
                    f"{key}.gguf_file", f"no file {self.gguf_file!r} in {str(path)!r}"
                )
            return
        if not (path / "config.json").is_file():
            raise ConfigError(
                where, f"{str(path)!r} has no config.json (expected a save_pretrained directory)"
            )
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise ConfigError(
                where, f"{str(path)!r} has no weights (expected one of {', '.join(WEIGHT_FILES)})"
            )


def resolve_attn_implementation(requested: str, key: str = "model.init_args") -> str:
    """Pick the attention kernel: flash-attention 2 when importable on CUDA, else sdpa."""
    flash_available = (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    )
    if requested == "auto":
        return "flash_attention_2" if flash_available else "sdpa"
    if requested == "flash_attention_2" and not flash_available:
        raise ConfigError(
            f"{key}.attn_implementation",
            "flash_attention_2 needs a CUDA device and the flash-attn package "
            "(pip install -e .[gpu]); use 'sdpa' or 'auto' on this machine",
        )
    return requested


def build_causal_lm(
    source: ModelSource,
    tokenizer: Any,
    *,
    dtype: DType = "float32",
    attn_implementation: AttnImplementation = "auto",
    max_length: int | None = None,
    key: str = "model.init_args",
) -> nn.Module:
    """A `PreTrainedModel` from `source`, in train mode, with `use_cache=False`.

    transformers' `from_pretrained` returns a model in eval mode (and Lightning does not call
    `train()`), which would silently disable dropout and activation checkpointing: the model is put
    in train mode here. Errors name `key.<field>` in one line.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source.validate(key)
    torch_dtype = DTYPES[dtype]
    attn = resolve_attn_implementation(attn_implementation, key)
    if source.name_or_path is not None:
        name = resolve_path(source.name_or_path, key=f"{key}.model_name_or_path")
        if source.gguf_file is not None:
            name = str(dequantized_gguf(source, name, dtype, key))
        model = _from_pretrained(source, name, key, dtype=torch_dtype, attn_implementation=attn)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    else:
        kwargs = dict(source.config or {})
        model_type = kwargs.pop("model_type", "llama")
        kwargs.update(
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        try:
            config = AutoConfig.for_model(model_type, **kwargs)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{key}.model_config", str(error)) from error
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.init_seed)
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype, attn_implementation=attn
            )
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and max_length is not None and max_length > max_positions:
        raise ConfigError(
            "data.init_args.max_length",
            f"{max_length} exceeds the model's maximum sequence length "
            f"(max_position_embeddings={max_positions})",
        )
    model.config.use_cache = False
    model.train()
    return model


def _from_pretrained(source: ModelSource, name: str, key: str, **kwargs: Any) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(name, **kwargs)`; a failure is one `ConfigError` line
    naming `key.model_name_or_path`."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"{key}.model_name_or_path", f"cannot load {source.name_or_path!r}: {first}"
        ) from None


GGUF_EXPORT_VERSION = 1
"""Bumped when `dequantized_gguf`'s directory changes for the same GGUF file and dtype."""

GGUF_CACHE_ENV = "ADAPTLM_GGUF_CACHE"
"""The environment variable naming the cache of dequantized GGUF models (default
`.cache/adaptlm/gguf_models`, relative to the working directory like the project's other caches)."""


def gguf_cache_dir() -> Path:
    """Where `dequantized_gguf` keeps its exports: `$ADAPTLM_GGUF_CACHE` or `.cache/adaptlm/gguf_models`."""
    return Path(os.environ.get(GGUF_CACHE_ENV) or ".cache/adaptlm/gguf_models")


def dequantized_gguf(source: ModelSource, directory: str, dtype: DType, key: str) -> Path:
    """The `save_pretrained` directory of `directory/<source.gguf_file>` dequantized to `dtype`,
    exported into `gguf_cache_dir()` on first use.

    transformers dequantizes a GGUF file on every `from_pretrained(..., gguf_file=...)` (numpy, tens
    of seconds for SmolLM2-135M on 2 cores); the export is the same weights in safetensors, read in
    about a second. The directory is `<gguf stem>-<fingerprint>-<dtype>` (`common.gguf`: the file's
    name, size and modification time, the transformers version, this exporter's version), published
    atomically, so concurrent runs may both export and either copy is kept.
    """
    from common.atomic import atomic_directory
    from common.gguf import gguf_file_fingerprint

    assert source.gguf_file is not None
    gguf_path = Path(directory) / source.gguf_file
    fingerprint = gguf_file_fingerprint(gguf_path, GGUF_EXPORT_VERSION, dtype=dtype)
    target = gguf_cache_dir() / f"{gguf_path.stem}-{fingerprint}-{dtype}"
    if (target / "config.json").is_file() and any((target / n).is_file() for n in WEIGHT_FILES):
        return target
    log.info("dequantizing %s to %s once (cached for later runs)", gguf_path, target)
    model = _from_pretrained(
        source, directory, key, dtype=DTYPES[dtype], gguf_file=source.gguf_file
    )
    _drop_gguf_quantizer(model, key)
    with atomic_directory(target, overwrite=False) as staging:
        model.save_pretrained(str(staging))
    return target


def _drop_gguf_quantizer(model: nn.Module, key: str) -> None:
    """Make a model dequantized from a GGUF file a plain model.

    transformers loads a GGUF file through its GGUF quantizer and, even when it dequantized every
    weight (always without the `kernels` package), leaves the model marked quantized
    (`hf_quantizer`, `config.quantization_config`), so `save_pretrained` refuses it ("quantized
    with gguf and is not serializable") and `ExportCallback` could not export a trained GGUF model.
    The mark is removed here; weights left packed in GGUF blocks cannot be trained, a `ConfigError`.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise ConfigError(
            f"{key}.gguf_file",
            "transformers kept the GGUF weights packed (the `kernels` package is installed), "
            "which cannot be trained; uninstall `kernels` so that the file is dequantized on load",
        )
    quantizer.remove_quantization_config(model)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every decoder layer's activations in backward (non-reentrant)."""
    base = unwrap(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            "model.init_args.gradient_checkpointing",
            f"{type(base).__name__} does not support activation checkpointing",
        )
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap `model` with LoRA adapters; only the adapters remain trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers `PreTrainedModel` under a peft wrapper (or `model` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_hidden_states(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Final hidden states `[B, L, H]` of `model`'s decoder (the LM head is left to the loss).

    With `position_ids` (restarting at every document and at trailing padding, as the collator makes
    them) the 2-D attention mask is left out: transformers then derives the exact per-document causal
    mask from the positions (flash-attention varlen on GPU, a block-diagonal mask with sdpa/eager), so
    packed documents never attend to each other. Without them, `attention_mask` (right padding) is used.
    Under peft, the decoder's LoRA layers are active unless the caller disabled the adapters.
    """
    decoder = unwrap(model).get_decoder()
    outputs = decoder(
        input_ids=input_ids,
        attention_mask=None if position_ids is not None else attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return outputs.last_hidden_state


def output_head(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight `[V, H]`, bias `[V]` or None) of `model`'s LM head.

    Under FSDP these are whole only inside the forward of the module that owns them: call this from
    inside the root module's forward (as `CausalLMWithLoss` does), never from a training step.
    """
    head = unwrap(model).get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    vocab = unwrap(model).config.vocab_size
    if weight.dim() != 2 or weight.shape[0] < vocab:
        raise RuntimeError(
            f"the LM head weight has shape {tuple(weight.shape)} here, not (vocab={vocab}, hidden): "
            "it is sharded outside its owner's forward. Under FSDP1 wrap only the decoder layers "
            "(auto_wrap_policy: the decoder layer class), never the LM head in a unit of its own"
        )
    return weight, bias


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of `model` (the units that sharding and activation checkpointing wrap)."""
    decoder = unwrap(model).get_decoder()
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise ConfigError(
            "model.init_args",
            f"cannot find the decoder layers of {type(decoder).__name__} (expected .layers or .h)",
        )
    return list(layers)
