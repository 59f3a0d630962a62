"""The world tokenizer: a byte-level BPE trained in-process on the world's own text.

Special tokens (`chat.SPECIAL_TOKENS`) get ids 0-3: `<|endoftext|>` (EOS, also ends an assistant
turn), `<|pad|>`, `<|user|>`, `<|assistant|>`. The pre-tokenizer prepends a space to every text
segment (at the start and after each special token), so a word gets the same token at the start
of a document, inside a sentence, alone, and right after `<|assistant|>`; the decoder removes that
one leading space again, so `decode(encode(text)) == text` for text without special tokens.
Digits are split into single tokens (after the byte-level mapping, so " 47" is `Ġ`, `4`, `7`):
the addition skill then works digit by digit instead of memorizing a token per number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from datamodules.world.chat import CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS

_SPECIAL_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _segments(texts: Iterable[str]) -> Iterator[str]:
    # The BPE trainer does not extract added tokens, so feed it the text between them, exactly
    # as the encoder will see it.
    for text in texts:
        for segment in _SPECIAL_SPLIT.split(text):
            if segment:
                yield segment


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a byte-level BPE (a `tokenizers.Tokenizer`) on `texts`; deterministic for a corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_segments(texts), trainer=trainer)
    return tokenizer


def wrap_tokenizer(tokenizer: Any) -> Any:
    """Wrap a trained `tokenizers.Tokenizer` as a transformers fast tokenizer (EOS, pad, chat
    markers and the chat template set)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END,
        pad_token=PAD,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (END, PAD)],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: Any, directory: str | Path) -> Path:
    """Save a trained `tokenizers.Tokenizer` with `save_pretrained` (for `AutoTokenizer`)."""
    directory = Path(directory)
    wrap_tokenizer(tokenizer).save_pretrained(directory)
    return directory
