"""Training data the model writes itself: its rewrites (Rephrase) or continuations (CD-base) of documents.

Two baselines of DiSC (`../shared/docs/methods.md`) train on the initial model's own generations:
**Rephrase** fine-tunes with CE on the model's rewrites of each document
(`SelfGeneratedDataModule`, `prompt: rephrase`), and **CD-base** distils the frozen initial model
reading `document + continuation` into the student reading the continuation alone
(`datamodules.split_context.SelfGeneratedContextDataModule`, `prompt: continue`). Both generate in
`prepare_data` through `generate_cached`:

- **Prompts** (`encode_prompts`). `continue`: the document itself (stripped), tokenized as the
  tokenizer does by default. `rephrase`: `instruction` with `{document}` replaced, as the user turn
  of the tokenizer's chat template (`apply_chat_template(..., add_generation_prompt=True)`) when it
  has one, else `plain_template` as plain text. The world's chat models carry the world's chat
  format as their template (`datamodules.world.chat.CHAT_TEMPLATE`), so their prompt is
  `format_prompt(instruction)`, the format of the world's chat QA.
- **Generation** (`generate`): `model.generate` in batches of similar prompt length, left-padded
  (the conventions of `evaluation.knowledge.greedy_generate`: `generate` derives positions from the
  attention mask), `num_samples` sequences per prompt, greedy or sampled (`temperature`, `top_p`).
  Each batch draws from its own seed (from `seed` and the batch index) inside a forked RNG, so a
  run is deterministic and leaves the global RNG untouched. A generation ends at the first special
  token of the tokenizer (EOS, chat markers) and is decoded without special tokens, then stripped.
  A batch whose prompt plus `max_new_tokens` exceeds the model's context generates only up to the
  context (counted as `shortened`); a prompt that fills the context is skipped (`overlong_prompts`).
- **Degenerate generations**: a text that is empty after stripping is skipped and counted
  (`GenerationStats.empty`, logged as a warning), never silently. Generations that hit the token
  budget without ending are counted too (`unfinished`).
- **Cache**: `<cache_dir>/<prompt>-<fingerprint>/` holds `generations.jsonl` (one `{"id",
  "source_index", "text"}` per kept generation; `id = source_index · num_samples + sample`) and
  `manifest.json` (settings and counts), written with `common.atomic.atomic_directory`. The
  fingerprint covers the generator's model files (paths, sizes, content hashes: the rule of
  `sources.source_fingerprint`), or its config and init seed for a fresh model; its tokenizer
  (`store.tokenizer_fingerprint`) and chat template; the documents; every setting but the model's
  name (its files identify it); and the torch and
  transformers versions. A second call with the same inputs reads the cache and never loads the
  model (logged).

The generator is, by default, the run's own initial model (`model_name_or_path: null`): the
`ModelSource` of the trainer's LightningModule, read with the tokenizer the module reads, so a
config names its model once. This module loads it with `lightning_modules.modeling.build_causal_lm`,
the project's one model builder, imported only when a cache misses: the one place where the data
side runs a model (`datamodules` otherwise imports only `datamodules` and `common`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch

from common import ConfigError, DataError
from common.atomic import atomic_directory
from common.jsonl import read_jsonl
from common.paths import is_local_path, resolve_path
from datamodules.fictional.datamodule import (
    DEFAULT_GGUF_FILE,
    DEFAULT_MODEL_DIR,
    FictionalDataModule,
)
from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import ReadStats, SourceSpec, read_documents, source_fingerprint
from datamodules.store import tokenizer_fingerprint
from datamodules.world.config import WorldConfig
from datamodules.world.datamodule import DEFAULT_WORLD, WorldDataModule

if TYPE_CHECKING:
    from lightning_modules.modeling import ModelSource

log = logging.getLogger(__name__)

_KEY = "data.init_args"
GENERATION_KEY = f"{_KEY}.generation"

CACHE_VERSION = 1
"""Bumped when the cached files or the generation procedure change."""
RECORDS = "generations.jsonl"
MANIFEST = "manifest.json"
DOCUMENT_FIELD = "{document}"

PROMPT_KINDS = ("rephrase", "continue")
PromptKind = Literal["rephrase", "continue"]
DTYPES = ("float32", "bfloat16", "float16")

DEFAULT_INSTRUCTION = (
    "Rewrite the following text in your own words. Keep every fact.\n\n" + DOCUMENT_FIELD
)
"""The user turn of a rephrase prompt (chat models)."""
DEFAULT_PLAIN_TEMPLATE = (
    "Original text:\n" + DOCUMENT_FIELD + "\n\nThe same text in other words, every fact kept:\n"
)
"""A rephrase prompt for tokenizers without a chat template."""


@dataclass
class SelfGeneration:
    """How the model writes its own training text for each document.

    Args:
        prompt: `rephrase` (a rewrite of the document, Rephrase) or `continue` (the document
            continued, CD-base). Default (null): the datamodule's kind (`SelfGeneratedDataModule`:
            `rephrase`, `SelfGeneratedContextDataModule`: `continue`).
        model_name_or_path: The generator: a hub id or local directory (or the directory of
            `gguf_file`). Default (null): the run's own initial model, read with the run's tokenizer.
        gguf_file: A GGUF file inside `model_name_or_path`.
        instruction: The user turn of a `rephrase` prompt for a tokenizer with a chat template;
            `{document}` is replaced by the document.
        plain_template: The whole `rephrase` prompt for a tokenizer without a chat template (or
            with `use_chat_template: false`); `{document}` is replaced by the document.
        use_chat_template: Wrap `rephrase` prompts in the tokenizer's chat template. Default
            (null): when the tokenizer has one.
        max_new_tokens: Most tokens generated per sample (less where the model's context ends).
        min_new_tokens: Fewest tokens before a stop token may end a sample (0: none).
        num_samples: Generations per document (more than 1 needs `do_sample`).
        do_sample: Sample (`temperature`, `top_p`) instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass (1: the whole distribution).
        seed: Seed of the sampling (one stream per batch).
        batch_size: Prompts per `generate` call.
        dtype: The generator's parameter dtype.
    """

    prompt: PromptKind | None = None
    model_name_or_path: str | None = None
    gguf_file: str | None = None
    instruction: str = DEFAULT_INSTRUCTION
    plain_template: str = DEFAULT_PLAIN_TEMPLATE
    use_chat_template: bool | None = None
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    num_samples: int = 1
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self, key: str = GENERATION_KEY) -> None:
        """Check every field; errors name `key.<field>`."""
        if self.prompt not in PROMPT_KINDS:
            raise ConfigError(
                f"{key}.prompt", f"must be one of {list(PROMPT_KINDS)}, got {self.prompt!r}"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"{key}.dtype", f"must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.gguf_file is not None and self.model_name_or_path is None:
            raise ConfigError(f"{key}.gguf_file", "needs model_name_or_path (its directory)")
        for name in ("instruction", "plain_template"):
            if DOCUMENT_FIELD not in getattr(self, name):
                raise ConfigError(f"{key}.{name}", f"must contain {DOCUMENT_FIELD}")
        for name, minimum in (
            ("max_new_tokens", 1),
            ("min_new_tokens", 0),
            ("num_samples", 1),
            ("batch_size", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"{key}.{name}", f"must be an integer >= {minimum}, got {value!r}"
                )
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"{key}.min_new_tokens",
                f"{self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}",
            )
        if self.num_samples > 1 and not self.do_sample:
            raise ConfigError(
                f"{key}.num_samples",
                f"{self.num_samples} greedy samples would all be the same; set do_sample: true",
            )
        if not self.temperature > 0:
            raise ConfigError(f"{key}.temperature", f"must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.top_p", f"must be in (0, 1], got {self.top_p!r}")


def as_generation(
    value: Any, default_prompt: PromptKind = "rephrase", key: str = GENERATION_KEY
) -> SelfGeneration:
    """`value` (a `SelfGeneration`, a mapping of its fields, or None for the defaults) with an unset
    `prompt` set to `default_prompt`, validated."""
    if value is None:
        value = SelfGeneration()
    elif isinstance(value, dict):
        try:
            value = SelfGeneration(**value)
        except TypeError as error:
            raise ConfigError(key, f"not valid generation settings: {error}") from None
    elif isinstance(value, SelfGeneration):
        value = dataclasses.replace(value)
    else:
        raise ConfigError(key, f"expected generation settings, got {type(value).__name__}")
    if value.prompt is None:
        value.prompt = default_prompt
    value.validate(key)
    return value


# --------------------------------------------------------------------------------- prompts


def uses_chat_template(settings: SelfGeneration, tokenizer: Any) -> bool:
    """Whether `rephrase` prompts go through the tokenizer's chat template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if settings.use_chat_template is None:
        return has_template
    if settings.use_chat_template and not has_template:
        raise ConfigError(
            f"{GENERATION_KEY}.use_chat_template",
            "the generator's tokenizer has no chat template; set it to false or null",
        )
    return bool(settings.use_chat_template)


def prompt_text(document: str, settings: SelfGeneration, tokenizer: Any) -> tuple[str, bool]:
    """The prompt of one document and whether it already holds its special tokens (chat)."""
    if settings.prompt == "continue":
        return document, False
    if uses_chat_template(settings, tokenizer):
        message = {
            "role": "user",
            "content": settings.instruction.replace(DOCUMENT_FIELD, document),
        }
        text = tokenizer.apply_chat_template([message], add_generation_prompt=True, tokenize=False)
        return str(text), True
    return settings.plain_template.replace(DOCUMENT_FIELD, document), False


def encode_prompts(
    documents: Sequence[str], settings: SelfGeneration, tokenizer: Any
) -> list[list[int]]:
    """The token ids of every document's prompt: a chat-templated prompt without added special
    tokens (the template has them), a plain one as the tokenizer encodes text by default."""
    encoded = []
    for document in documents:
        text, templated = prompt_text(document, settings, tokenizer)
        encoded.append(list(tokenizer(text, add_special_tokens=not templated)["input_ids"]))
    return encoded


# --------------------------------------------------------------------------------- generation


@dataclass
class GenerationStats:
    """Counts of one generation run (or of the cached run it reuses)."""

    documents: int = 0
    generations: int = 0  # kept, non-empty
    empty: int = 0  # empty after stripping: skipped
    unfinished: int = 0  # hit the token budget without a stop token (kept)
    overlong_prompts: int = 0  # the prompt fills the model's context: document skipped
    shortened: int = 0  # samples whose budget the model's context cut below max_new_tokens
    new_tokens: int = 0  # generated tokens of the kept generations
    seconds: float = 0.0


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, longest first (stable, so deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _batch_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(batch), 0x5E1F]).generate_state(1)[0])


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids that end a generation: EOS and every other special token (chat markers)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: SelfGeneration,
    *,
    name: str = "documents",
) -> tuple[list[list[str]], GenerationStats]:
    """`num_samples` texts per prompt (stripped; empty ones included, the caller skips them) and
    the counts. A prompt that fills the model's context gets no text (`overlong_prompts`)."""
    from transformers import GenerationConfig

    stats = GenerationStats(documents=len(prompts))
    start = time.perf_counter()
    eos_id = int(tokenizer.eos_token_id)
    pad_id = eos_id if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    stops = stop_token_ids(tokenizer)
    stop_set = set(stops)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    device = _device(model)
    n = settings.num_samples
    outputs: list[list[str]] = [[] for _ in prompts]
    usable = [i for i, p in enumerate(prompts) if context is None or len(p) < context]
    stats.overlong_prompts = len(prompts) - len(usable)
    batches = [
        [usable[i] for i in batch]
        for batch in _length_batches([len(prompts[i]) for i in usable], settings.batch_size)
    ]
    every = max(1, len(batches) // 10)
    sampling = (
        {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
    )
    devices = [device] if device.type == "cuda" else []
    for number, batch in enumerate(batches):
        width = max(len(prompts[i]) for i in batch)
        budget = settings.max_new_tokens
        if context is not None:
            budget = min(budget, context - width)
        if budget < settings.max_new_tokens:
            stats.shortened += len(batch) * n
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = prompts[index]
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        config = GenerationConfig(
            max_new_tokens=budget,
            min_new_tokens=min(settings.min_new_tokens, budget),
            do_sample=settings.do_sample,
            num_beams=1,
            num_return_sequences=n,
            eos_token_id=stops,
            pad_token_id=pad_id,
            use_cache=True,
            **sampling,
        )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_batch_seed(settings.seed, number))
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
        for row, sequence in enumerate(generated[:, width:].tolist()):
            end = next((t for t, token in enumerate(sequence) if token in stop_set), None)
            if end is None:
                stats.unfinished += 1
                end = len(sequence)
            text = tokenizer.decode(sequence[:end], skip_special_tokens=True).strip()
            outputs[batch[row // n]].append(text)
            if text:
                stats.new_tokens += end
        if (number + 1) % every == 0 or number + 1 == len(batches):
            log.info(
                "self-generation %s: %d of %d batches (%.1f s)",
                name,
                number + 1,
                len(batches),
                time.perf_counter() - start,
            )
    stats.seconds = round(time.perf_counter() - start, 3)
    return outputs, stats


# --------------------------------------------------------------------------------- the cache


class GeneratedRecord(NamedTuple):
    """One kept generation: `id = source_index · num_samples + sample`."""

    id: int
    source_index: int
    text: str


@dataclass
class SelfGenerated:
    """The generations of one document list (from the cache or freshly written)."""

    directory: Path
    fingerprint: str
    records: list[GeneratedRecord]
    stats: GenerationStats
    cached: bool = False

    @property
    def path(self) -> Path:
        """The JSONL file of the records (a readable `SourceSpec` path)."""
        return self.directory / RECORDS


def model_fingerprint(source: ModelSource) -> dict[str, Any]:
    """What identifies the generator's weights without loading them: its files (paths, sizes and
    content hashes, as `sources.source_fingerprint` identifies a data source: size and modification
    time above 256 MiB), or for a fresh model its config and init seed. A hub id is looked up in the
    local cache (offline)."""
    if source.name_or_path is None:
        return {"config": source.config, "init_seed": source.init_seed}
    key = f"{GENERATION_KEY}.model_name_or_path"
    name = resolve_path(source.name_or_path, key=key)
    path = Path(name).expanduser()
    if not (is_local_path(name) or name != source.name_or_path):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=True))
        except Exception as error:  # offline and not cached: one line naming the key
            raise ConfigError(
                key, f"cannot find {name!r} in the local hub cache: {error}"
            ) from None
    if source.gguf_file is not None:
        return source_fingerprint(SourceSpec(path=str(path / source.gguf_file), format="text"))
    if not path.is_dir():
        raise ConfigError(key, f"{str(path)!r} is not a directory")
    return source_fingerprint(SourceSpec(path=str(path), format="hf"))  # every file of the folder


def generation_fingerprint(
    documents: Sequence[str], settings: SelfGeneration, source: ModelSource, tokenizer: Any
) -> str:
    """The cache key of generating for `documents` with `settings` by the model of `source`."""
    import transformers

    settings_key = asdict(settings)
    for name in ("model_name_or_path", "gguf_file"):  # the model's files identify it
        settings_key.pop(name)
    payload = {
        "version": CACHE_VERSION,
        "settings": settings_key,
        "model": model_fingerprint(source),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "documents": hashlib.blake2b(
            json.dumps(list(documents), ensure_ascii=False).encode(), digest_size=16
        ).hexdigest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def load_generator(
    source: ModelSource, tokenizer: Any, settings: SelfGeneration
) -> torch.nn.Module:
    """The generator in eval mode, on the current CUDA device when there is one."""
    from lightning_modules.modeling import build_causal_lm

    model = build_causal_lm(
        source, tokenizer, dtype=settings.dtype, key=GENERATION_KEY.rsplit(".", 1)[0]
    )
    model.eval()
    if torch.cuda.is_available():
        model.to(torch.device("cuda", torch.cuda.current_device()))
    return model


def _read_cache(directory: Path, fingerprint: str) -> SelfGenerated | None:
    """The complete cache entry in `directory`, or None (missing or not matching)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint or manifest.get("version") != CACHE_VERSION:
        return None
    stats = GenerationStats(**manifest["stats"])
    records = [
        GeneratedRecord(int(r["id"]), int(r["source_index"]), str(r["text"]))
        for _, r in read_jsonl(directory / RECORDS)
    ]
    if len(records) != stats.generations:
        log.warning("ignoring incomplete self-generation cache %s", directory)
        return None
    return SelfGenerated(directory, fingerprint, records, stats, cached=True)


def _log_stats(name: str, stats: GenerationStats, settings: SelfGeneration) -> None:
    log.info("self-generation %s (%s): %s", name, settings.prompt, stats)
    total = stats.generations + stats.empty
    if stats.empty:
        log.warning(
            "self-generation %s: skipped %d of %d generations that are empty after stripping",
            name,
            stats.empty,
            total,
        )
    if stats.overlong_prompts:
        log.warning(
            "self-generation %s: skipped %d of %d documents whose prompt fills the model's context",
            name,
            stats.overlong_prompts,
            stats.documents,
        )
    if stats.shortened:
        log.warning(
            "self-generation %s: %d samples had fewer than max_new_tokens=%d tokens left in the "
            "model's context",
            name,
            stats.shortened,
            settings.max_new_tokens,
        )
    if stats.unfinished:
        log.info(
            "self-generation %s: %d of %d generations reached the token budget without ending",
            name,
            stats.unfinished,
            total,
        )


def generate_cached(
    documents: Sequence[str],
    settings: SelfGeneration,
    *,
    source: ModelSource,
    tokenizer: Any,
    cache_dir: str | Path,
    name: str = "documents",
) -> SelfGenerated:
    """The generations for `documents`: read from `cache_dir` when an entry of the same fingerprint
    exists (the model is not loaded), else generated, written atomically and returned.

    Args:
        documents: The texts, in order (`source_index` counts them).
        settings: What to generate.
        source: The generator (`lightning_modules.modeling.ModelSource`).
        tokenizer: The generator's tokenizer.
        cache_dir: Where entries live (`<cache_dir>/<prompt>-<fingerprint>/`).
        name: The documents' name in logs.
    """
    settings.validate()
    fingerprint = generation_fingerprint(documents, settings, source, tokenizer)
    directory = Path(cache_dir) / f"{settings.prompt}-{fingerprint}"
    cached = _read_cache(directory, fingerprint)
    if cached is not None:
        log.info(
            "self-generation %s: reusing %d cached generations from %s",
            name,
            len(cached.records),
            directory,
        )
        _log_stats(name, cached.stats, settings)
        return cached
    log.info(
        "self-generation %s: generating for %d documents (%s, not cached)",
        name,
        len(documents),
        settings.prompt,
    )
    model = load_generator(source, tokenizer, settings)
    texts, stats = generate(
        model, tokenizer, encode_prompts(documents, settings, tokenizer), settings, name=name
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    records = []
    for index, samples in enumerate(texts):
        for sample, text in enumerate(samples):
            if text:
                records.append(GeneratedRecord(index * settings.num_samples + sample, index, text))
            else:
                stats.empty += 1
    stats.generations = len(records)
    manifest = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "name": name,
        "settings": asdict(settings),
        "stats": asdict(stats),
    }
    with atomic_directory(directory, overwrite=directory.exists()) as tmp:
        lines = [json.dumps(r._asdict(), ensure_ascii=False) + "\n" for r in records]
        (tmp / RECORDS).write_text("".join(lines), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _log_stats(name, stats, settings)
    return SelfGenerated(directory, fingerprint, records, stats)


# --------------------------------------------------------------------------------- in a run


def run_generator(
    settings: SelfGeneration, trainer: Any, run_tokenizer: Any
) -> tuple[ModelSource, Any]:
    """The generator's source and tokenizer: `settings.model_name_or_path` with its own tokenizer,
    or (default) the run's initial model (the `source` of the trainer's LightningModule) with the
    tokenizer that module reads (`load_tokenizer()`, else `run_tokenizer`)."""
    if settings.model_name_or_path is not None:
        from common import load_tokenizer
        from lightning_modules.modeling import ModelSource

        source = ModelSource(settings.model_name_or_path, settings.gguf_file)
        source.validate(GENERATION_KEY.rsplit(".", 1)[0])
        tokenizer = load_tokenizer(
            settings.model_name_or_path,
            key=f"{GENERATION_KEY}.model_name_or_path",
            gguf_file=settings.gguf_file,
        )
        return source, tokenizer
    module = getattr(trainer, "lightning_module", None) if trainer is not None else None
    source = getattr(module, "source", None)
    if source is None or not hasattr(source, "name_or_path"):
        raise ConfigError(
            f"{GENERATION_KEY}.model_name_or_path",
            "the run's own model is known only inside a Trainer fitting a CausalLMModule; name the "
            "generator here",
        )
    loader = getattr(module, "load_tokenizer", None)
    return source, (loader() if callable(loader) else run_tokenizer)


class SelfGeneratingMixin:
    """What a datamodule needs to generate for its train sources (once per source and process).

    The host sets `generation` (`SelfGeneration`) and `generation_cache_dir`, and has `tokenizer`
    and (inside a run) `trainer`.
    """

    generation: SelfGeneration
    generation_cache_dir: str
    tokenizer: Any

    def _init_generation(
        self, generation: Any, generation_cache_dir: str, default_prompt: PromptKind
    ) -> None:
        self.generation = as_generation(generation, default_prompt)
        self.generation_cache_dir = str(generation_cache_dir)
        self.generated: dict[str, SelfGenerated] = {}
        """Per train source name: its generations (after `prepare_data` or `setup`)."""

    def self_generated(
        self, spec: SourceSpec, documents: Sequence[str] | None = None
    ) -> SelfGenerated:
        """The generations for the documents of the train source `spec` (`read_texts(spec)`
        unless given), generated or read from the cache on first use in this process."""
        name = spec.display_name
        if name not in self.generated:
            source, tokenizer = run_generator(
                self.generation, getattr(self, "trainer", None), self.tokenizer
            )
            result = generate_cached(
                read_texts(spec) if documents is None else documents,
                self.generation,
                source=source,
                tokenizer=tokenizer,
                cache_dir=self.generation_cache_dir,
                name=name,
            )
            if not result.records:
                raise DataError(
                    spec.path,
                    f"every generation is empty or was skipped ({result.stats}); see "
                    f"{GENERATION_KEY}",
                )
            self.generated[name] = result
        return self.generated[name]


def read_texts(spec: SourceSpec, stats: ReadStats | None = None) -> list[str]:
    """The non-empty documents of `spec` in order, stripped (what generation and CD-base read);
    empty ones are counted in `stats`."""
    return [text.strip() for text in read_documents(spec, stats or ReadStats())]


# --------------------------------------------------------------------------------- Rephrase data


class SelfGeneratedDataModule(SelfGeneratingMixin, PretrainingDataModule):
    """Pre-training data whose train documents are replaced by the model's own generations of them
    (Rephrase: CE on the model's rewrites, `generation.prompt: rephrase`).

    In `prepare_data` every train source's documents are generated for (cached, see the module
    docstring); each train source then reads as its generations (`<name>-<prompt>`: a JSONL source,
    tokenized into a store, packed and mixed as `PretrainingDataModule` does), and also as itself
    with `include_originals`. Validation sources are unchanged.

    Args:
        generation: What to generate (`SelfGeneration`); default: sampled rewrites (`prompt:
            rephrase`) by the run's own initial model.
        include_originals: Train on the original documents too (the paper trains on rewrites only).
            A source's `ratio` applies to its generations; it cannot be combined with this.
        generation_cache_dir: Where generations are cached (`<dir>/<prompt>-<fingerprint>/`).
        **kwargs: The `PretrainingDataModule` arguments (or those of a cooperating base: the world's).
    """

    def __init__(
        self,
        generation: SelfGeneration | None = None,
        include_originals: bool = False,
        generation_cache_dir: str = ".cache/adaptlm/generations",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_generation(generation, generation_cache_dir, "rephrase")
        self.include_originals = bool(include_originals)
        if self.include_originals:
            for i, spec in enumerate(self.train_sources):
                if spec.ratio is not None:
                    raise ConfigError(
                        f"{_KEY}.train_sources[{i}].ratio",
                        "with include_originals a source is read twice (itself and its "
                        "generations); remove the ratios or include_originals",
                    )

    def _resolved_sources(self) -> tuple[list[SourceSpec], dict[str, SourceSpec]]:
        """Each train source as its generations (and itself with `include_originals`)."""
        train, val = super()._resolved_sources()
        expanded = []
        for spec in train:
            generated = self.self_generated(spec)
            rewritten = SourceSpec(
                path=str(generated.path),
                name=f"{spec.display_name}-{self.generation.prompt}",
                format="jsonl",
                kind=spec.kind,
                ratio=spec.ratio,
                overlong_policy=spec.overlong_policy,
                loss_weighting=spec.loss_weighting,
            )
            expanded += [spec, rewritten] if self.include_originals else [rewritten]
        return expanded, val


class WorldSelfGeneratedDataModule(SelfGeneratedDataModule, WorldDataModule):
    """`SelfGeneratedDataModule` over the synthetic world: `world:<split>` source paths and the
    world's tokenizer (`WorldDataModule`). Default train source: the new-domain documents, read as
    the model's rewrites of them.

    Args:
        world: Size and shape of the world (see `WorldDataModule`).
        world_cache_dir: Where worlds are materialized.
        qa_format: Format of the evaluation questions, `chat` or `plain`.
        **kwargs: The `SelfGeneratedDataModule` arguments.
    """

    def __init__(
        self,
        world: WorldConfig = DEFAULT_WORLD,
        world_cache_dir: str = ".cache/adaptlm/worlds",
        qa_format: Literal["chat", "plain"] = "chat",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            world=world, world_cache_dir=world_cache_dir, qa_format=qa_format, **kwargs
        )


class FictionalSelfGeneratedDataModule(SelfGeneratedDataModule, FictionalDataModule):
    """`SelfGeneratedDataModule` over the fictional corpus (`datamodules.fictional`): `fictional:<name>`
    source paths, the GGUF model's own tokenizer (whose chat template the `rephrase` prompt goes
    through) and the corpus's evaluation sets (`FictionalDataModule`). Default train source: the 32
    fictional documents, read as the model's rewrites of them.

    Args:
        tokenizer: The directory of the GGUF file (or `pkg:<module>`), or with
            `tokenizer_gguf_file: null` any tokenizer path or hub id.
        tokenizer_gguf_file: The GGUF file to take the tokenizer from.
        tokenizer_cache_dir: Where the exported tokenizer directory is kept.
        **kwargs: The `SelfGeneratedDataModule` arguments.
    """

    def __init__(
        self,
        tokenizer: str | None = DEFAULT_MODEL_DIR,
        tokenizer_gguf_file: str | None = DEFAULT_GGUF_FILE,
        tokenizer_cache_dir: str = ".cache/adaptlm/tokenizers",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            tokenizer_gguf_file=tokenizer_gguf_file,
            tokenizer_cache_dir=tokenizer_cache_dir,
            **kwargs,
        )


__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_PLAIN_TEMPLATE",
    "PROMPT_KINDS",
    "FictionalSelfGeneratedDataModule",
    "GeneratedRecord",
    "GenerationStats",
    "SelfGenerated",
    "SelfGeneratedDataModule",
    "SelfGeneratingMixin",
    "SelfGeneration",
    "WorldSelfGeneratedDataModule",
    "as_generation",
    "encode_prompts",
    "generate",
    "generate_cached",
    "generation_fingerprint",
    "load_generator",
    "model_fingerprint",
    "prompt_text",
    "read_texts",
    "run_generator",
    "stop_token_ids",
    "uses_chat_template",
]
