"""Model-based quality scores for TRAIT's quality filter (the alternative to a fastText quality
classifier; the paper's "educational value" filter is not public, so both are *assumptions*).

- `PerplexityScorer` (`kind: perplexity`): a small causal LM from a local `save_pretrained`
  directory; a document is tokenized without special tokens, prefixed with the tokenizer's EOS
  (the token a document follows in packed training, so its first token is predicted too) and cut
  to `max_length` tokens; the score is minus the mean NLL per predicted token (higher = more
  fluent text). The NLL goes through the repo's fused LM-head loss
  (`format_alignment.sequence_losses`, `CausalLMWithLoss(per_row=True)`: no `[B, L, V]` logits),
  batched longest first under `torch.inference_mode()`. An empty document has no predicted token
  and scores `-inf`.
- `SequenceClassificationScorer` (`kind: sequence_classification`): an
  `AutoModelForSequenceClassification` from a local directory (an "educational value" classifier);
  texts are right-padded, cut to `max_length` tokens; the score is the softmax probability of class
  `label_index`.

Both load the tokenizer from `tokenizer` (default: the model's directory) with the pad token
defaulting to EOS, and run on `device` in `dtype`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from datamodules.selection.scorers import DocumentScorer, ScorerSpec

log = logging.getLogger(__name__)


def _tokenizer(spec: ScorerSpec, key: str) -> Any:
    from common import load_tokenizer

    if spec.tokenizer is not None:
        return load_tokenizer(spec.tokenizer, key=f"{key}.tokenizer")
    return load_tokenizer(spec.path, key=f"{key}.path")


def _device(spec: ScorerSpec, key: str) -> Any:
    import torch

    try:
        device = torch.device(spec.device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"{key}.device", f"not a torch device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}.device", f"is {spec.device!r} but CUDA is not available here")
    return device


class PerplexityScorer(DocumentScorer):
    """Minus the mean token NLL of each document under a causal LM (module docstring)."""

    def __init__(self, spec: ScorerSpec, *, key: str = "scorer") -> None:
        from datamodules.format_alignment import load_scorer
        from lightning_modules.modeling import ModelSource

        self.spec = spec
        self.name = spec.name or "perplexity"
        self.device = _device(spec, key)
        self.tokenizer = _tokenizer(spec, key)
        source = ModelSource(name_or_path=str(Path(spec.path).expanduser()))
        try:
            self.lm = load_scorer(source, self.tokenizer, dtype=spec.dtype, device=self.device)
        except ConfigError as error:
            message = str(error).removeprefix(f"config key '{error.key}': ")
            raise ConfigError(f"{key}.path", message) from None
        context = getattr(self.lm.model.config, "max_position_embeddings", None)
        self.max_length = spec.max_length if context is None else min(spec.max_length, int(context))

    def encode(self, texts: Sequence[str]) -> list[Any]:
        """`Encoded` items: EOS + the text's tokens, cut to `max_length`; every token but the first
        is a target; an item without a target is marked `no_targets`."""
        from datamodules.format_alignment import Encoded

        eos = int(self.tokenizer.eos_token_id)
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        items = []
        for row in ids:
            seq = [eos, *row][: self.max_length]
            item = Encoded(seq, list(seq))
            if item.targets == 0:
                item.skipped = "no_targets"
            items.append(item)
        return items

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """`-mean NLL` per text (`-inf` for an empty text)."""
        from datamodules.format_alignment import sequence_losses

        if not texts:
            return np.zeros(0, dtype=np.float64)
        items = self.encode(texts)
        pad = self.tokenizer.pad_token_id
        sums, counts = sequence_losses(
            self.lm,
            items,
            pad_id=int(pad if pad is not None else self.tokenizer.eos_token_id),
            batch_size=self.spec.batch_size,
            device=self.device,
            desc="perplexity",
        )
        scores = np.full(len(items), -np.inf, dtype=np.float64)
        scored = counts > 0
        scores[scored] = -(sums[scored] / counts[scored])
        return scores


class SequenceClassificationScorer(DocumentScorer):
    """The softmax probability of class `label_index` under a sequence-classification model."""

    def __init__(self, spec: ScorerSpec, *, key: str = "scorer") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.spec = spec
        self.name = spec.name or "sequence_classification"
        self.device = _device(spec, key)
        self.tokenizer = _tokenizer(spec, key)
        dtype = getattr(torch, spec.dtype)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(Path(spec.path).expanduser()), torch_dtype=dtype
            )
        except (OSError, ValueError, KeyError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(
                f"{key}.path",
                f"cannot load a sequence-classification model from {spec.path!r}: {first}",
            ) from None
        labels = int(model.config.num_labels)
        if spec.label_index >= labels:
            raise ConfigError(
                f"{key}.label_index", f"is {spec.label_index} but the model has {labels} labels"
            )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        context = getattr(model.config, "max_position_embeddings", None)
        self.max_length = spec.max_length if context is None else min(spec.max_length, int(context))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """`softmax(logits)[label_index]` per text."""
        import torch

        out = np.zeros(len(texts), dtype=np.float64)
        self.tokenizer.padding_side = "right"
        with torch.inference_mode():
            for start in range(0, len(texts), self.spec.batch_size):
                chunk = list(texts[start : start + self.spec.batch_size])
                batch = self.tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits.to(torch.float64)
                probs = torch.softmax(logits, dim=-1)[:, self.spec.label_index]
                out[start : start + len(chunk)] = probs.cpu().numpy()
        return out


__all__ = ["PerplexityScorer", "SequenceClassificationScorer"]
