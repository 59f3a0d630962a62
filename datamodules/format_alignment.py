"""Mix-CPT stage 2's data: the few instruction and preference samples chosen by a format-alignment
score computed with the stage-1 model.

    python -m datamodules.format_alignment --config experiments/configs/format_alignment/world.yaml \
        [--model runs/.../export] [--output_dir DIR] [--count_sft 64] [--force]

Mix-CPT (arXiv 2407.10804, ../shared/docs/methods.md) aligns the format after knowledge-mixture
CPT with SFT and then DPO on "a small set of general instruction and preference samples chosen by
a format-alignment score computed with the stage-1 model". The score is not public; it is a knob
(`score`), and every choice is an *assumption*. Lower is better aligned, always:

- `response_ppl` (default): the mean NLL per target token of the response given the templated
  (chat) prompt, i.e. log-perplexity (`exp(score)` is the perplexity; the ranking is the same). The
  stage-1 model already finds such a response easy, so only the format is new to it. For a
  preference pair, of the `chosen` response.
- `template_ratio`: `NLL(response | templated prompt) / NLL(response | plain prompt)` (both means
  per target token), the plain prompt being the format-free rendering `plain_template` (default
  `"{instruction}\\n"`, Mix-CPT stage 1's instruction format). Low: the chat template costs the
  model little over the format it was trained on.
- `random`: seeded uniform scores (the ablation "random instead of score-based selection"); the
  model's weights are not loaded, but the same candidates are eligible (same tokenization and
  length rule), so both selections draw from one pool.

Scoring. Each candidate is tokenized as `prompt + response` without special tokens, with the
tokenizer's EOS appended unless the text already ends with it (`append_eos`, the rule of the
tokenized store); a token is a target iff its end offset lies beyond the prompt
(`datamodules.store.completion_mask`: a token straddling the boundary is a response token) or it
is the appended EOS. Sequences are scored in batches (`batch_size`, longest first), right-padded
(labels -100, `attention_mask` 0, `position_ids` restarting at the padding as the collator makes
them), under `torch.inference_mode()` with the model in eval mode, through
`lightning_modules.forward.CausalLMWithLoss(..., per_row=True)`: the fused LM-head CE, never the
`[B, L, V]` logits; the row's CE sum divided by its target count `(labels[:, 1:] != -100).sum(1)`.
A sequence longer than `max_length` (default: the model's `max_position_embeddings`) is skipped
(`overlong_policy: skip`, the default) or cut to its first `max_length` tokens (`truncate`); a
sequence left with no target is skipped too. Skipped candidates get a null score, are never
selected, and are counted in the manifest and the log.

Selection. The `count_sft` lowest-scoring SFT candidates and the `count_preference` lowest-scoring
preference pairs, ties broken by input index (so it is deterministic). The two selections are
independent: a pair may share its instruction with a selected SFT sample, or not; nothing couples
them. A count of 0 selects nothing (its source may then be `path: null`); a count above the
scorable candidates is an error naming the count's key.

Inputs. `model`: the stage-1 model, a local `save_pretrained` directory (or a hub id in the local
cache, or the directory of `gguf_file`); the library also takes any
`lightning_modules.modeling.ModelSource`. It is built by
`lightning_modules.modeling.build_causal_lm` (imported only when scoring: with
`datamodules.self_generated`, the data side's place that runs a model). The tokenizer is
`tokenizer` or the model's (`common.load_tokenizer`), and must be fast (offsets). Candidates
(`sft_source`, `preference_source`): JSONL, Parquet, an HF dataset (`save_to_disk` directory or a
cached dataset name), or `world:<split>`, a split of the synthetic world `world` (materialized
under `world_cache_dir` as `WorldDataModule` does). Field names are knobs (`prompt_field`,
`instruction_field`, `response_field`; `required_fields` must be strings too, e.g. a pair's
`rejected`). A record without a field is one `DataError` line naming file:line (JSONL) or the
0-based record (Parquet, HF) and the field.

Outputs, in `output_dir` (which this command owns: it is replaced as a whole, atomically, with
`common.atomic.atomic_directory`):

- `selected_sft.jsonl`, `selected_preference.jsonl`: the selected original records, lowest score
  first, each with `score` and `index` (0-based position among the candidates) added.
- `scores_sft.jsonl`, `scores_preference.jsonl`: every candidate's `{"index", "score", "nll",
  "targets"}` (`template_ratio` adds `nll_plain` and `targets_plain`; `random` has `index` and
  `score` only; a skipped one has `"score": null` and `"skipped": "overlong" | "no_targets"`).
- `manifest.json`: the settings, the model's identity, counts, score statistics, the output files'
  hashes, and the `fingerprint`.

The fingerprint covers the model's files (paths, sizes, content hashes; size and modification
time above 256 MiB, as `sources.source_fingerprint`; not for `random`), the tokenizer, the
candidates' content, every setting that changes a score or the selection, and the torch and
transformers versions; not `output_dir`, `batch_size` or `device` (they change scores by round-off
only). A run whose `output_dir` holds complete outputs of the same fingerprint (every file's hash
checked) does nothing (a resumable pipeline step; logged); `--force` recomputes.

Bad input (a missing model directory, a missing field, a count above the candidates, an unknown
option) is one logged line and exit status 2. The command line (`main`) reads YAML with the CLI's
`!include` (`experiments.include`) and names unknown keys as the CLI does
(`experiments.config_errors`): command glue, imported by `main` only; the library needs neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import string
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from common import IGNORE_INDEX, ConfigError, DataError
from common.atomic import atomic_directory
from common.jsonl import read_jsonl
from common.paths import is_local_path, resolve_path
from common.summary import finite_summary
from datamodules.sources import SourceSpec, detect_format, resolve_files, source_fingerprint
from datamodules.store import completion_mask, tokenize_with_offsets, tokenizer_fingerprint
from datamodules.world.config import WorldConfig

if TYPE_CHECKING:
    from lightning_modules.forward import CausalLMWithLoss
    from lightning_modules.modeling import ModelSource

log = logging.getLogger("datamodules.format_alignment")  # also when run as __main__

VERSION = 1
"""Version of the outputs' layout and scoring rules (part of the fingerprint)."""

ScoreKind = Literal["response_ppl", "template_ratio", "random"]
SCORES: tuple[str, ...] = ("response_ppl", "template_ratio", "random")
SETS: tuple[str, ...] = ("sft", "preference")
WORLD_SCHEME = "world:"

MANIFEST = "manifest.json"
SELECTED = {name: f"selected_{name}.jsonl" for name in SETS}
SCORE_FILES = {name: f"scores_{name}.jsonl" for name in SETS}
OUTPUT_FILES: tuple[str, ...] = (*SELECTED.values(), *SCORE_FILES.values())

_MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ----------------------------------------------------------------------------------- settings


@dataclass
class CandidateSource:
    """One candidate set: where it is and which fields hold what.

    Args:
        path: A JSONL/Parquet file, a directory or glob of them, an HF dataset (a `save_to_disk`
            directory, or a dataset name already in the local cache with `format: hf`), or
            `world:<split>` (a split of the synthetic world `world`). null: no candidates (the
            set's count must then be 0).
        format: `auto` (from the suffixes), `jsonl`, `parquet` or `hf`.
        split: Split of an HF dataset.
        prompt_field: Field with the templated (chat) prompt; the response follows it directly.
        instruction_field: Field with the plain question, read by `template_ratio` only (its
            format-free prompt is `plain_template` of it).
        response_field: Field with the scored response (a preference pair's `chosen`).
        required_fields: Further fields every record must have as strings (not scored), e.g. a
            pair's `rejected`, so that stage 2 cannot fail on them later.
    """

    path: str | None = None
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    split: str = "train"
    prompt_field: str = "prompt"
    instruction_field: str = "instruction"
    response_field: str = "response"
    required_fields: list[str] = field(default_factory=list)


def _default_sft() -> CandidateSource:
    return CandidateSource(path=f"{WORLD_SCHEME}instructions")


def _default_preference() -> CandidateSource:
    return CandidateSource(
        path=f"{WORLD_SCHEME}preference_pairs",
        response_field="chosen",
        required_fields=["rejected"],
    )


@dataclass
class FormatAlignmentConfig:
    """Settings of the format-alignment selection (Mix-CPT stage 2's data).

    The few SFT samples and preference pairs with the lowest format-alignment score under the
    stage-1 model (lower is better aligned) are selected.

    Args:
        model: The stage-1 model: a `save_pretrained` directory (e.g. a run's `export/`), the
            directory holding `gguf_file`, a hub id in the local cache, or `pkg:<module>[/path]`.
            `random` reads only its config (context length) and, by default, its tokenizer.
        output_dir: Where the outputs go. This command owns the directory: it is replaced as a whole
            (atomically) and must not hold anything else.
        tokenizer: Tokenizer directory or hub id; default: the model's (saved beside the weights).
        gguf_file: A GGUF file inside `model` to load the weights (and tokenizer) from.
        sft_source: The candidate SFT samples (`prompt` + `response`, `instruction`).
        preference_source: The candidate preference pairs (`prompt` + `chosen`, `instruction`,
            `rejected`).
        count_sft: How many SFT samples to select (the lowest scores); 0: none.
        count_preference: How many preference pairs to select (the lowest scores), independently
            of the SFT selection; 0: none.
        score: `response_ppl` (mean NLL per token of the response given the templated prompt),
            `template_ratio` (that NLL over the NLL given the plain prompt) or `random` (seeded).
        plain_template: The format-free prompt of `template_ratio`, a Python format string with the
            one field `{instruction}` (literal braces doubled).
        append_eos: Append the tokenizer's EOS (a target) unless the text already ends with it.
        max_length: The longest scored sequence in tokens; default: the model's
            `max_position_embeddings`.
        overlong_policy: A longer sequence is `skip`ped (null score, never selected) or cut to its
            first `max_length` tokens (`truncate`).
        batch_size: Sequences per forward pass.
        device: Torch device of the scoring, e.g. `cpu`, `cuda`, `cuda:1`.
        dtype: Dtype to load the weights in (`bfloat16` on a GPU halves the memory).
        attn_implementation: Attention kernel: `auto` (flash-attention 2 when installed on CUDA,
            else sdpa), `sdpa`, `eager` or `flash_attention_2`.
        seed: Seed of the `random` score (the SFT and preference sets draw separate streams).
        stratify_field: A record field (e.g. `source`: general QA or a skill) whose values each
            get their share of a count, in proportion to their candidates, filled with their
            lowest scores; null: the globally lowest. *Assumption* (the paper's selection is not
            public): the lowest scores alone can leave out a whole task whose answers are harder.
        world: The synthetic world of `world:<split>` paths (built and cached on first use).
        world_cache_dir: Where worlds are materialized (`<dir>/world-<fingerprint>/`).
    """

    model: str | None = None
    output_dir: str = "runs/format_alignment"
    tokenizer: str | None = None
    gguf_file: str | None = None
    sft_source: CandidateSource = field(default_factory=_default_sft)
    preference_source: CandidateSource = field(default_factory=_default_preference)
    count_sft: int = 64
    count_preference: int = 64
    score: ScoreKind = "response_ppl"
    plain_template: str = "{instruction}\n"
    append_eos: bool = True
    max_length: int | None = None
    overlong_policy: Literal["skip", "truncate"] = "skip"
    batch_size: int = 16
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    seed: int = 0
    stratify_field: str | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    world_cache_dir: str = ".cache/adaptlm/worlds"

    def source(self, name: str) -> CandidateSource:
        """The candidate source of set `name` (`sft` or `preference`)."""
        return self.sft_source if name == "sft" else self.preference_source

    def count(self, name: str) -> int:
        """The count of set `name`."""
        return self.count_sft if name == "sft" else self.count_preference

    def validate(self, *, has_source: bool = False) -> None:
        """Check every value without reading data or loading the model; `ConfigError` naming the key.

        `has_source`: the model comes as a `ModelSource` (so `model` may be unset).
        """
        if self.score not in SCORES:
            raise ConfigError("score", f"must be one of {list(SCORES)}, got {self.score!r}")
        if not has_source and not self.model:
            raise ConfigError(
                "model", "is required: the stage-1 model directory (save_pretrained output)"
            )
        if not str(self.output_dir):
            raise ConfigError("output_dir", "must not be empty")
        for name in SETS:
            key = f"count_{name}"
            count = self.count(name)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ConfigError(key, f"must be an integer >= 0, got {count!r}")
            source = self.source(name)
            prefix = f"{name}_source"
            if source.path is None:
                if count > 0:
                    raise ConfigError(
                        f"{prefix}.path", f"is null (no candidates) but {key} is {count}"
                    )
                continue
            if not str(source.path):
                raise ConfigError(f"{prefix}.path", "must not be empty (null: no candidates)")
            if source.format not in ("auto", "jsonl", "parquet", "hf"):
                raise ConfigError(
                    f"{prefix}.format",
                    f"must be one of auto, jsonl, parquet, hf, got {source.format!r}",
                )
            for attr in ("prompt_field", "instruction_field", "response_field"):
                value = getattr(source, attr)
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{prefix}.{attr}", "must be a non-empty string")
            if source.prompt_field == source.response_field:
                raise ConfigError(
                    f"{prefix}.response_field",
                    f"must differ from prompt_field {source.prompt_field!r}",
                )
            for i, value in enumerate(source.required_fields):
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{prefix}.required_fields[{i}]", "must be a field name")
        if self.score == "template_ratio":
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(self.plain_template) if f}
            except ValueError as error:
                raise ConfigError("plain_template", f"is not a format string: {error}") from None
            if names != {"instruction"}:
                raise ConfigError(
                    "plain_template",
                    f"must use exactly the field {{instruction}}, got {sorted(names) or 'none'} "
                    "(double literal braces)",
                )
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise ConfigError(
                "max_length", f"must be an integer >= 2 or null, got {self.max_length!r}"
            )
        if self.overlong_policy not in ("skip", "truncate"):
            raise ConfigError(
                "overlong_policy", f"must be 'skip' or 'truncate', got {self.overlong_policy!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("batch_size", f"must be an integer >= 1, got {self.batch_size!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ConfigError("device", f"not a torch device: {error}") from None
        if device.type == "cuda" and not torch.cuda.is_available() and self.score != "random":
            raise ConfigError("device", f"is {self.device!r} but CUDA is not available here")
        self.world.validate("world")


# ----------------------------------------------------------------------------------- reading


@dataclass
class Candidate:
    """One candidate record and where it came from."""

    index: int
    record: dict[str, Any]
    prompt: str
    response: str
    instruction: str | None
    where: str


@dataclass
class CandidateSet:
    """The candidates of one set, read and validated."""

    name: str
    path: str
    """The source path as configured (`world:<split>` kept)."""
    spec: SourceSpec
    """The resolved source (files on disk)."""
    candidates: list[Candidate]


WorldSplit = Callable[[str], Path]
"""`split name -> JSONL path` of a materialized world (`world_splits`)."""


def world_splits(world: WorldConfig, cache_dir: str | Path) -> WorldSplit:
    """`split -> path` of the world of `world`, materialized (or reused) on the first call only."""
    artifacts: list[Any] = []

    def split_path(split: str) -> Path:
        if not artifacts:
            from datamodules.world.materialize import materialize_world

            artifacts.append(materialize_world(world, cache_dir, key_prefix="world"))
        return artifacts[0].split_path(split)

    return split_path


def resolve_candidate_source(
    source: CandidateSource, *, key: str, world_split: WorldSplit | None = None
) -> SourceSpec:
    """The source as a `SourceSpec` of files: `world:<split>` names the split's JSONL file through
    `world_split` (`DataError` for an unknown split); other paths pass through."""
    path = str(source.path)
    if path.startswith(WORLD_SCHEME):
        if world_split is None:
            raise ConfigError(f"{key}.path", f"{path!r} names a world split, but no world is given")
        split_path = world_split(path[len(WORLD_SCHEME) :])
        return SourceSpec(path=str(split_path), format="jsonl", name=path)
    if not path.strip():
        raise ConfigError(f"{key}.path", "must not be empty")
    return SourceSpec(path=path, format=source.format, split=source.split, name=path)


def _string_field(
    record: dict[str, Any], name: str, setting: str, source: str, line: int | None, prefix: str
) -> str:
    if name not in record:
        present = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise DataError(
            source,
            f"{prefix}record has no field {name!r} (fields present: {present}); set `{setting}`",
            line,
        )
    value = record[name]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise DataError(source, f"{prefix}field {name!r} must be a string, got {kind}", line)
    return value


def _raw_records(spec: SourceSpec) -> Iterator[tuple[str, int | None, str, dict[str, Any]]]:
    """`(source, line, prefix, record)` for every record of `spec`, in order: JSONL with its line
    number, Parquet and HF with a `record <i> (0-based): ` prefix."""
    fmt = detect_format(spec)
    if fmt == "text":
        raise DataError(spec.path, "text files have no fields; use jsonl, parquet or hf records")
    if fmt == "jsonl":
        for path in resolve_files(spec, "jsonl"):
            for line, record in read_jsonl(path):
                yield str(path), line, "", record
        return
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path in resolve_files(spec, "parquet"):
            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as error:
                raise DataError(path, f"not a readable Parquet file: {error}") from None
            if table.num_rows == 0:
                raise DataError(path, "empty file: expected at least one row")
            for row, record in enumerate(table.to_pylist()):
                yield str(path), None, f"record {row} (0-based row): ", record
        return
    import datasets

    target = Path(str(spec.path))
    try:
        if target.is_dir() and any(
            (target / m).is_file() for m in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            dataset = datasets.load_from_disk(str(target))
        else:
            dataset = datasets.load_dataset(str(spec.path), split=spec.split)
    except Exception as error:  # library errors become one line naming the source
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
        raise DataError(
            spec.path, f"cannot load HF dataset: {type(error).__name__}: {detail}"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if spec.split not in dataset:
            raise DataError(spec.path, f"no split {spec.split!r} (splits: {list(dataset)})")
        dataset = dataset[spec.split]
    where = f"{spec.path}[{spec.split}]"
    if len(dataset) == 0:
        raise DataError(where, "empty dataset: expected at least one record")
    for row, record in enumerate(dataset):
        yield where, None, f"record {row} (0-based): ", dict(record)


def read_candidates(
    name: str,
    source: CandidateSource,
    *,
    needs_instruction: bool,
    world_split: WorldSplit | None = None,
) -> CandidateSet:
    """Read and validate every record of `source` (`name`: `sft` or `preference`, for the keys).

    Raises:
        DataError: naming file:line (JSONL) or the 0-based record and the field, for a missing or
            non-string prompt, response, instruction (when `needs_instruction`) or required field.
    """
    key = f"{name}_source"
    spec = resolve_candidate_source(source, key=key, world_split=world_split)
    fields = [
        (source.prompt_field, f"{key}.prompt_field"),
        (source.response_field, f"{key}.response_field"),
    ]
    if needs_instruction:
        fields.append((source.instruction_field, f"{key}.instruction_field"))
    fields += [(f, f"{key}.required_fields") for f in source.required_fields]
    candidates = []
    for where, line, prefix, record in _raw_records(spec):
        values = [_string_field(record, f, s, where, line, prefix) for f, s in fields]
        location = f"{where}:{line}" if line is not None else f"{where} {prefix.rstrip(': ')}"
        candidates.append(
            Candidate(
                index=len(candidates),
                record=record,
                prompt=values[0],
                response=values[1],
                instruction=values[2] if needs_instruction else None,
                where=location,
            )
        )
    return CandidateSet(name, str(source.path), spec, candidates)


# ----------------------------------------------------------------------------------- scoring


@dataclass
class Encoded:
    """One tokenized sequence: ids and the labels (`-100` on prompt tokens)."""

    input_ids: list[int]
    labels: list[int]
    skipped: str | None = None
    """`overlong` or `no_targets` when the sequence is not scored, else None."""

    @property
    def targets(self) -> int:
        """Target tokens (`labels[1:] != -100`: the first token is never predicted)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    append_eos: bool = True,
    max_length: int | None = None,
    overlong_policy: str = "skip",
) -> list[Encoded]:
    """Tokenize `prompt + response` (no special tokens added) with EOS appended unless present;
    labels are the ids where `completion_mask` marks a response token (end offset beyond the
    prompt) and on the appended EOS, `-100` on prompt tokens. Longer than `max_length`: `skip`
    (marked `overlong`) or `truncate`; no target left: marked `no_targets`."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            "tokenizer", "needs a fast tokenizer (character offsets find the prompt's end)"
        )
    texts = [p + r for p, r in zip(prompts, responses, strict=True)]
    all_ids, all_offsets = tokenize_with_offsets(tokenizer, texts)
    eos = int(tokenizer.eos_token_id)
    out = []
    for prompt, ids, offsets in zip(prompts, all_ids, all_offsets):
        mask = completion_mask(offsets, len(prompt)).tolist()
        ids = list(ids)
        if append_eos and (not ids or ids[-1] != eos):
            ids.append(eos)
            mask.append(1)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        item = Encoded(ids, labels)
        if max_length is not None and len(ids) > max_length:
            if overlong_policy == "skip":
                item.skipped = "overlong"
            else:
                item = Encoded(ids[:max_length], labels[:max_length])
        if item.skipped is None and item.targets == 0:
            item.skipped = "no_targets"
        out.append(item)
    return out


def _batch(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: padding has labels -100, attention_mask 0, and positions counting up
    from 0 again (the collator's convention), so every real token sees exactly its own row."""
    width = max(len(item.input_ids) for item in items)
    shape = (len(items), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(item.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
        position_ids[row, :n] = torch.arange(n)
        position_ids[row, n:] = torch.arange(width - n)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }


def sequence_losses(
    lm: CausalLMWithLoss,
    items: Sequence[Encoded],
    *,
    pad_id: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    desc: str = "scoring",
) -> tuple[np.ndarray, np.ndarray]:
    """`(nll_sum, targets)` per item (float64, int64; NaN and 0 for skipped items): the summed CE of
    each sequence's target tokens through the fused LM-head loss (`per_row=True`), batched longest
    first under `torch.inference_mode()` with `lm` in eval mode."""
    from tqdm.auto import tqdm

    from losses import LossSpec

    spec = LossSpec()
    sums = np.full(len(items), np.nan, dtype=np.float64)
    counts = np.zeros(len(items), dtype=np.int64)
    todo = [i for i, item in enumerate(items) if item.skipped is None]
    todo.sort(key=lambda i: (-len(items[i].input_ids), i))
    lm.eval()
    device = torch.device(device)
    progress = tqdm(
        total=len(todo), desc=desc, unit="seq", disable=not sys.stderr.isatty(), leave=False
    )
    with torch.inference_mode(), progress:
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            batch = {k: v.to(device) for k, v in _batch([items[i] for i in rows], pad_id).items()}
            out = lm(
                batch["input_ids"],
                batch["labels"],
                spec,
                position_ids=batch["position_ids"],
                attention_mask=batch["attention_mask"],
                per_row=True,
            )
            row_ce = out["row_ce"].detach().to(torch.float64).cpu().numpy()
            targets = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).cpu().numpy()
            sums[rows] = row_ce
            counts[rows] = targets
            progress.update(len(rows))
    return sums, counts


@dataclass
class Scores:
    """The scores of one candidate set (`score` NaN where `skipped` is set)."""

    score: np.ndarray
    nll: np.ndarray
    targets: np.ndarray
    skipped: list[str | None]
    nll_plain: np.ndarray | None = None
    targets_plain: np.ndarray | None = None

    def rows(self) -> Iterator[dict[str, Any]]:
        """The `scores_<set>.jsonl` records."""
        for i, skipped in enumerate(self.skipped):
            row: dict[str, Any] = {"index": i}
            if skipped is not None:
                row.update(score=None, skipped=skipped)
                yield row
                continue
            row["score"] = float(self.score[i])
            if not math.isnan(self.nll[i]):
                row.update(nll=float(self.nll[i]), targets=int(self.targets[i]))
            if self.nll_plain is not None and self.targets_plain is not None:
                row.update(
                    nll_plain=float(self.nll_plain[i]), targets_plain=int(self.targets_plain[i])
                )
            yield row


def random_scores(n: int, seed: int, set_name: str) -> np.ndarray:
    """Seeded uniform scores in [0, 1), one stream per (seed, set)."""
    return np.random.default_rng([seed, SETS.index(set_name)]).random(n)


def score_candidates(
    candidates: CandidateSet,
    *,
    score: str,
    tokenizer: Any,
    lm: CausalLMWithLoss | None,
    max_length: int | None,
    overlong_policy: str = "skip",
    append_eos: bool = True,
    plain_template: str = "{instruction}\n",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Scores:
    """Score every candidate of the set (lower: better aligned; see the module docstring)."""
    items = candidates.candidates
    prompts = [c.prompt for c in items]
    responses = [c.response for c in items]
    encode = dict(append_eos=append_eos, max_length=max_length, overlong_policy=overlong_policy)
    templated = encode_pairs(tokenizer, prompts, responses, **encode)
    skipped = [e.skipped for e in templated]
    n = len(items)
    if score == "random":
        values = random_scores(n, seed, candidates.name)
        values[[i for i, s in enumerate(skipped) if s is not None]] = np.nan
        return Scores(values, np.full(n, np.nan), np.zeros(n, dtype=np.int64), skipped)
    if lm is None:
        raise ValueError(f"score {score!r} needs the model")
    if score not in ("response_ppl", "template_ratio"):
        raise ValueError(f"unknown score {score!r}")
    plain = None
    if score == "template_ratio":
        plain_prompts = [plain_template.format(instruction=c.instruction) for c in items]
        plain = encode_pairs(tokenizer, plain_prompts, responses, **encode)
        for i, (first, second) in enumerate(zip(templated, plain)):
            reason = first.skipped or second.skipped  # score neither sequence of a skipped one
            skipped[i] = first.skipped = second.skipped = reason
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    run = dict(pad_id=int(pad_id), batch_size=batch_size, device=device)
    sums, counts = sequence_losses(lm, templated, desc=f"{candidates.name}: templated", **run)
    nll = sums / np.maximum(counts, 1)
    if plain is None:
        result = Scores(nll.copy(), nll, counts, skipped)
    else:
        plain_sums, plain_counts = sequence_losses(
            lm, plain, desc=f"{candidates.name}: plain", **run
        )
        nll_plain = plain_sums / np.maximum(plain_counts, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(nll_plain > 0, nll / nll_plain, np.inf)
        values[np.isnan(nll) | np.isnan(nll_plain)] = np.nan
        result = Scores(values, nll, counts, skipped, nll_plain, plain_counts)
    bad = [i for i, reason in enumerate(skipped) if reason is None and math.isnan(result.score[i])]
    if bad:
        raise RuntimeError(
            f"{candidates.name}: {len(bad)} candidates got a NaN score (first: "
            f"{items[bad[0]].where}); the model's outputs are not finite (try dtype: float32)"
        )
    return result


def select_lowest(
    scores: Sequence[float] | np.ndarray, count: int, groups: Sequence[str] | None = None
) -> list[int]:
    """The indices of the `count` lowest scores, lowest first, ties broken by index; NaN (skipped)
    is never selected. `count` above the scored candidates is a `ValueError`.

    With `groups` (one label per candidate), each group gets its share of `count` in proportion
    to its scored candidates (largest remainders, ties to the earlier-seen group), filled with its
    lowest scores; a group too small for its share gives the rest to the others in the same way.
    """
    eligible = [i for i, s in enumerate(scores) if not math.isnan(float(s))]
    if count > len(eligible):
        raise ValueError(f"asks for {count} but only {len(eligible)} candidates have a score")
    ranked = sorted(eligible, key=lambda i: (float(scores[i]), i))
    if groups is None:
        return ranked[:count]
    members: dict[str, list[int]] = {}
    for i in ranked:
        members.setdefault(str(groups[i]), []).append(i)
    quotas = dict.fromkeys(members, 0)
    left = count
    while left > 0:
        open_groups = [g for g in members if len(members[g]) > quotas[g]]
        total = sum(len(members[g]) - quotas[g] for g in open_groups)
        shares = {g: left * (len(members[g]) - quotas[g]) / total for g in open_groups}
        given = {g: min(int(shares[g]), len(members[g]) - quotas[g]) for g in open_groups}
        rest = left - sum(given.values())
        order = sorted(open_groups, key=lambda g: -(shares[g] - int(shares[g])))
        for g in order:
            if rest == 0:
                break
            if given[g] < len(members[g]) - quotas[g]:
                given[g] += 1
                rest -= 1
        for g, n in given.items():
            quotas[g] += n
        left = count - sum(quotas.values())
    chosen = [i for g in members for i in members[g][: quotas[g]]]
    return sorted(chosen, key=lambda i: (float(scores[i]), i))


# ----------------------------------------------------------------------------------- model


def model_source(config: FormatAlignmentConfig) -> ModelSource:
    """The `ModelSource` of `config.model` (and `gguf_file`), checked: a missing local directory,
    a directory without weights, or a hub id not in the local cache is a `ConfigError` on `model`."""
    from lightning_modules.modeling import ModelSource

    name = resolve_path(str(config.model), key="model")
    path = Path(name).expanduser()
    if _looks_local(name) or name != config.model:
        if not path.is_dir():
            raise ConfigError(
                "model",
                f"no such model directory: {config.model!r} (the stage-1 model's save_pretrained "
                "output, e.g. its run's export/)",
            )
        if config.gguf_file is not None:
            if not (path / config.gguf_file).is_file():
                raise ConfigError("gguf_file", f"no file {config.gguf_file!r} in {str(path)!r}")
        elif not (path / "config.json").is_file():
            raise ConfigError(
                "model", f"{str(path)!r} has no config.json (expected a save_pretrained directory)"
            )
        elif not any((path / f).is_file() for f in _MODEL_WEIGHT_FILES):
            raise ConfigError(
                "model",
                f"{str(path)!r} has no weights (expected one of {', '.join(_MODEL_WEIGHT_FILES)})",
            )
    return ModelSource(name_or_path=str(config.model), gguf_file=config.gguf_file)


def _looks_local(name: str) -> bool:
    """A local path rather than a hub id (`namespace/name`): it exists, starts like a path, or has
    more than one `/`."""
    return is_local_path(name) or name.strip("/").count("/") > 1 or name.endswith("/")


def model_fingerprint(source: ModelSource) -> dict[str, Any]:
    """What identifies the model's weights without loading them: its files (paths, sizes, content
    hashes; size and mtime above 256 MiB), or its config and init seed for a fresh model."""
    if source.name_or_path is None:
        return {"config": source.config, "init_seed": source.init_seed}
    name = resolve_path(source.name_or_path, key="model")
    path = Path(name).expanduser()
    if not (_looks_local(name) or name != source.name_or_path):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=True))
        except Exception as error:  # offline and not cached: one line naming the key
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(
                "model", f"cannot find {name!r} in the local hub cache: {first}"
            ) from None
    if source.gguf_file is not None:
        return source_fingerprint(SourceSpec(path=str(path / source.gguf_file), format="text"))
    return source_fingerprint(SourceSpec(path=str(path), format="hf"))  # every file of the folder


def _rekeyed(error: ConfigError, key: str) -> ConfigError:
    """`error` with its key's first segment replaced by `key` (`model.model_name_or_path` → `model`)."""
    message = str(error).removeprefix(f"config key '{error.key}': ")
    return ConfigError(key, message)


def load_scorer(
    source: ModelSource,
    tokenizer: Any,
    *,
    dtype: str = "float32",
    attn_implementation: str = "auto",
    device: str | torch.device = "cpu",
) -> CausalLMWithLoss:
    """The model of `source` (`build_causal_lm`) wrapped in `CausalLMWithLoss`, in eval mode on
    `device`."""
    from lightning_modules.forward import CausalLMWithLoss
    from lightning_modules.modeling import build_causal_lm

    try:
        model = build_causal_lm(
            source, tokenizer, dtype=dtype, attn_implementation=attn_implementation, key="model"
        )
    except ConfigError as error:
        if error.key.startswith("model."):
            raise _rekeyed(
                error, "model" if "name_or_path" in error.key else error.key[6:]
            ) from None
        raise
    return CausalLMWithLoss(model).to(torch.device(device)).eval()


def _context_length(source: ModelSource, model: torch.nn.Module | None) -> int | None:
    """The model's `max_position_embeddings` (from the loaded model, else its config file)."""
    if model is not None:
        return getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if source.name_or_path is None:
        return (source.config or {}).get("max_position_embeddings")
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(
            resolve_path(source.name_or_path, key="model"), **kwargs
        )
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            "model", f"cannot read the config of {source.name_or_path!r}: {first}"
        ) from None
    return getattr(config, "max_position_embeddings", None)


# ----------------------------------------------------------------------------------- the step


@dataclass
class FormatAlignmentResult:
    """What a run wrote (or found already written)."""

    output_dir: Path
    fingerprint: str
    manifest: dict[str, Any]
    reused: bool
    """True when complete outputs of the same fingerprint were found and nothing was computed."""

    def path(self, kind: str, name: str) -> Path:
        """`path("selected", "sft")`, `path("scores", "preference")`, ..."""
        files = SELECTED if kind == "selected" else SCORE_FILES
        return self.output_dir / files[name]

    def selected(self, name: str) -> list[dict[str, Any]]:
        """The selected records of set `name`, lowest score first."""
        path = self.path("selected", name)
        if path.stat().st_size == 0:
            return []
        return [record for _, record in read_jsonl(path)]


def _settings_key(config: FormatAlignmentConfig) -> dict[str, Any]:
    """The settings that decide scores and selection (not output_dir, batch_size, device)."""
    settings = asdict(config)
    for name in ("output_dir", "batch_size", "device", "model", "tokenizer", "gguf_file"):
        settings.pop(name)
    settings.pop("world")  # a world split is identified by its content (the source fingerprint)
    settings.pop("world_cache_dir")
    if config.stratify_field is None:
        settings.pop("stratify_field")
    if config.score != "template_ratio":
        settings.pop("plain_template")
    if config.score != "random":
        settings.pop("seed")
    else:
        settings.pop("dtype")
        settings.pop("attn_implementation")
    return settings


def fingerprint_of(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able payload."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _read_complete(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    """The manifest of `directory` when its outputs are complete and of `fingerprint`, else None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint or manifest.get("version") != VERSION:
        return None
    files = manifest.get("files", {})
    for name in OUTPUT_FILES:
        path = directory / name
        if not path.is_file() or files.get(name) != _digest(path):
            return None
    return manifest


def _check_output_dir(directory: Path) -> None:
    """Refuse to replace a directory that is not this command's output (it would be deleted)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError("output_dir", f"{str(directory)!r} exists and is not a directory")
    entries = [p.name for p in directory.iterdir()]
    if entries and MANIFEST not in entries:
        raise ConfigError(
            "output_dir",
            f"{str(directory)!r} holds other files ({', '.join(sorted(entries)[:3])}, ...) and "
            "no manifest.json of this command; it is replaced as a whole, so name a new or "
            "empty directory",
        )


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _load_tokenizer(config: FormatAlignmentConfig, source: ModelSource) -> Any:
    """`config.tokenizer`, else the model's own; it must be fast (offsets)."""
    from common import load_tokenizer

    if source.name_or_path is None and config.tokenizer is None:
        raise ConfigError("tokenizer", "is required for a model built from a config")
    path = config.tokenizer or str(source.name_or_path)
    tokenizer = load_tokenizer(
        path,
        key="tokenizer" if config.tokenizer else "model",
        gguf_file=None if config.tokenizer else source.gguf_file,
    )
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer", f"{path!r} is not a fast tokenizer (needed for the offsets)")
    return tokenizer


def _read_sets(config: FormatAlignmentConfig) -> dict[str, CandidateSet]:
    """The candidate sets with a count above 0; a count above the candidates is a `ConfigError`."""
    world_split = world_splits(config.world, config.world_cache_dir)
    sets: dict[str, CandidateSet] = {}
    for name in SETS:
        count = config.count(name)
        if count == 0:
            continue
        read = read_candidates(
            name,
            config.source(name),
            needs_instruction=config.score == "template_ratio",
            world_split=world_split,
        )
        if count > len(read.candidates):
            raise ConfigError(
                f"count_{name}",
                f"is {count} but {read.path} has only {len(read.candidates)} candidates; lower it "
                "or add candidates",
            )
        sets[name] = read
    return sets


def _model_identity(source: ModelSource, uses_model: bool) -> dict[str, Any]:
    """The model's name, GGUF file (config and seed for a fresh one) and files' fingerprint (not
    for `random`, which reads no weights)."""
    identity: dict[str, Any] = {"name_or_path": source.name_or_path, "gguf_file": source.gguf_file}
    if source.name_or_path is None:
        identity.update(config=source.config, init_seed=source.init_seed)
    identity["files_fingerprint"] = (
        fingerprint_of(model_fingerprint(source)) if uses_model else None
    )
    return identity


def _strata(candidates: CandidateSet, field_name: str | None) -> list[str] | None:
    """Each candidate's `field_name` value (as a string), or None without stratification."""
    if field_name is None:
        return None
    values = []
    for candidate in candidates.candidates:
        if field_name not in candidate.record:
            raise DataError(
                candidate.where,
                f"field {field_name!r} (stratify_field) missing from this {candidates.name} record",
            )
        values.append(str(candidate.record[field_name]))
    return values


def _select_set(
    candidates: CandidateSet,
    scores: Scores,
    count: int,
    max_length: int | None,
    stratify_field: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The selected records (with `score` and `index`) and the set's manifest entry."""
    name, n = candidates.name, len(candidates.candidates)
    skipped = {r: scores.skipped.count(r) for r in ("overlong", "no_targets")}
    strata = _strata(candidates, stratify_field)
    try:
        chosen = select_lowest(scores.score, count, strata)
    except ValueError:
        raise ConfigError(
            f"count_{name}",
            f"is {count} but only {n - sum(skipped.values())} of the {n} candidates of "
            f"{candidates.path} can be scored ({skipped['overlong']} longer than "
            f"max_length={max_length}, {skipped['no_targets']} without a response token); lower "
            "it, raise max_length or use overlong_policy: truncate",
        ) from None
    for reason, skips in skipped.items():
        if skips:
            log.warning(
                "format alignment %s: skipped %d of %d candidates (%s)", name, skips, n, reason
            )
    originals = [candidates.candidates[i].record for i in chosen]
    clashes = sorted({k for record in originals for k in ("score", "index") if k in record})
    if clashes:
        log.warning(
            "format alignment %s: the records' own field(s) %s are replaced in %s",
            name,
            ", ".join(repr(k) for k in clashes),
            SELECTED[name],
        )
    selected = [
        {**record, "score": float(scores.score[i]), "index": i}
        for i, record in zip(chosen, originals)
    ]
    scored = ~np.isnan(scores.score)
    summary = {
        "source": candidates.path,
        "read": True,
        "resolved_path": candidates.spec.path,
        "candidates": n,
        "scored": int(scored.sum()),
        "skipped": skipped,
        "selected": len(chosen),
        "selected_per_stratum": (
            None
            if strata is None
            else {v: sum(strata[i] == v for i in chosen) for v in dict.fromkeys(strata)}
        ),
        "score_stats": finite_summary(scores.score),
        "selected_score_stats": finite_summary(scores.score[chosen] if chosen else np.zeros(0)),
        "target_tokens": int(scores.targets[scored].sum()),
    }
    return selected, summary


def run_format_alignment(
    config: FormatAlignmentConfig, *, source: ModelSource | None = None, force: bool = False
) -> FormatAlignmentResult:
    """Score the candidates with the stage-1 model, select, and write `config.output_dir`; reuse
    complete outputs of the same fingerprint unless `force`.

    Args:
        config: The settings (`FormatAlignmentConfig`).
        source: The stage-1 model as any `ModelSource` (e.g. a config for a fresh model); default:
            `config.model`. A source without `name_or_path` needs `config.tokenizer`.
        force: Recompute even when the outputs are complete and of the same fingerprint.

    Raises:
        ConfigError: a bad setting, a missing model or tokenizer, a count above the candidates.
        DataError: a bad candidate file or record (file:line and field).
    """
    import transformers

    config.validate(has_source=source is not None)
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    _check_output_dir(output_dir)
    source = source if source is not None else model_source(config)
    tokenizer = _load_tokenizer(config, source)
    sets = _read_sets(config)
    uses_model = config.score != "random"
    identity = _model_identity(source, uses_model)
    payload = {
        "version": VERSION,
        "settings": _settings_key(config),
        "model": identity["files_fingerprint"],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "sources": {name: source_fingerprint(s.spec) for name, s in sets.items()},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if not uses_model:  # the context length decides which candidates are eligible
        payload["context"] = config.max_length or _context_length(source, None)
    fingerprint = fingerprint_of(payload)
    manifest = None if force else _read_complete(output_dir, fingerprint)
    if manifest is not None:
        log.info(
            "format alignment: %s already holds the outputs of fingerprint %s; skipping "
            "(--force recomputes)",
            output_dir,
            fingerprint,
        )
        return FormatAlignmentResult(output_dir, fingerprint, manifest, reused=True)
    lm = None
    if uses_model:
        log.info(
            "format alignment: loading the stage-1 model %s", source.name_or_path or "(config)"
        )
        lm = load_scorer(
            source,
            tokenizer,
            dtype=config.dtype,
            attn_implementation=config.attn_implementation,
            device=config.device,
        )
    context = _context_length(source, lm.model if lm is not None else None)
    if config.max_length is not None and context is not None and config.max_length > context:
        raise ConfigError(
            "max_length",
            f"{config.max_length} exceeds the model's maximum sequence length "
            f"(max_position_embeddings={context})",
        )
    max_length = config.max_length or context
    outputs = {file_name: "" for file_name in OUTPUT_FILES}
    per_set: dict[str, dict[str, Any]] = {}
    for name in SETS:
        candidates = sets.get(name)
        if candidates is None:  # count 0: the source is not even read
            per_set[name] = {"source": config.source(name).path, "read": False, "selected": 0}
            log.info("format alignment %s: count_%s is 0, nothing selected", name, name)
            continue
        scores = score_candidates(
            candidates,
            score=config.score,
            tokenizer=tokenizer,
            lm=lm,
            max_length=max_length,
            overlong_policy=config.overlong_policy,
            append_eos=config.append_eos,
            plain_template=config.plain_template,
            batch_size=config.batch_size,
            device=config.device,
            seed=config.seed,
        )
        selected, per_set[name] = _select_set(
            candidates, scores, config.count(name), max_length, config.stratify_field
        )
        outputs[SELECTED[name]] = _jsonl(selected)
        outputs[SCORE_FILES[name]] = _jsonl(list(scores.rows()))
    manifest = {
        "version": VERSION,
        "fingerprint": fingerprint,
        "settings": {**asdict(config), "max_length_used": max_length},
        "model": identity,
        "sets": per_set,
        "files": {},
        "wall_s": None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with atomic_directory(output_dir, overwrite=True) as tmp:
        for file_name, text in outputs.items():
            (tmp / file_name).write_text(text, encoding="utf-8")
            manifest["files"][file_name] = _digest(tmp / file_name)
        manifest["wall_s"] = round(time.perf_counter() - started, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n", "utf-8")
    for name, entry in per_set.items():
        if not entry.get("read", True):
            continue
        log.info(
            "format alignment %s: selected %d of %d candidates of %s by %s (scores %s, selected "
            "up to %s)",
            name,
            entry["selected"],
            entry["candidates"],
            entry["source"],
            config.score,
            _fmt_range(entry.get("score_stats")),
            _fmt(entry.get("selected_score_stats"), "max"),
        )
    log.info(
        "format alignment: wrote %s (fingerprint %s, %.1f s)",
        output_dir,
        fingerprint,
        manifest["wall_s"],
    )
    return FormatAlignmentResult(output_dir, fingerprint, manifest, reused=False)


def _fmt(stats: dict[str, float] | None, key: str) -> str:
    return "n/a" if stats is None else f"{stats[key]:.4g}"


def _fmt_range(stats: dict[str, float] | None) -> str:
    return "n/a" if stats is None else f"{stats['min']:.4g}..{stats['max']:.4g}"


# ----------------------------------------------------------------------------------- command


def build_parser() -> Any:
    """The command's jsonargparse parser: `--config` files (with `!include`), every field of
    `FormatAlignmentConfig` as an option (its docstring is the help), and `--force`."""
    from experiments.config_errors import config_parser

    return config_parser(
        "python -m datamodules.format_alignment",
        "Mix-CPT stage 2's data: select the few SFT samples and preference pairs whose "
        "format-alignment score under the stage-1 model is lowest (see the module docstring "
        "of datamodules/format_alignment.py).",
        FormatAlignmentConfig,
        "recompute even when output_dir holds complete outputs of the same fingerprint",
    )


def parse_config(argv: Sequence[str] | None = None) -> tuple[FormatAlignmentConfig, bool]:
    """`(config, force)` from the command line; an unknown or ill-typed option is a `ConfigError`."""
    from experiments.config_errors import parse_arguments

    init = parse_arguments(build_parser(), argv)
    values = {k: init[k] for k in FormatAlignmentConfig.__dataclass_fields__ if k in init}
    return FormatAlignmentConfig(**values), bool(init.get("force"))


def main(argv: Sequence[str] | None = None) -> FormatAlignmentResult | None:
    """Entry point: user errors (bad data, bad config values) log one line and exit with status 2."""
    from experiments.config_errors import run_main

    def run() -> FormatAlignmentResult | None:
        config, force = parse_config(argv)
        return run_format_alignment(config, force=force)

    return run_main("datamodules.format_alignment", run, log)


__all__ = [
    "SCORES",
    "CandidateSet",
    "CandidateSource",
    "FormatAlignmentConfig",
    "FormatAlignmentResult",
    "build_parser",
    "encode_pairs",
    "main",
    "parse_config",
    "random_scores",
    "read_candidates",
    "run_format_alignment",
    "score_candidates",
    "select_lowest",
    "sequence_losses",
    "world_splits",
]


if __name__ == "__main__":
    main()
