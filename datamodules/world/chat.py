"""The two QA formats of the synthetic world (chat and plain text), and exact-match scoring.

A single-turn chat is `<|user|>{question}<|assistant|>{answer}<|endoftext|>`. The markers are
special tokens of the world tokenizer (one id each), and the end marker is the tokenizer's EOS, so
greedy decoding of `format_prompt(question)` stops by itself once the answer is complete.

Invariant (tested): `format_chat(q, a) == format_prompt(q) + a + END`, so a prompt ends exactly
where the answer starts. The world tokenizer prepends a space to every text segment (also after a
special token), so the answer's first word gets the same token as inside a biography and
`encode(format_chat(q, a)) == encode(format_prompt(q)) + encode(a) + [eos]`.

The plain-text format, `Question: {question}\nAnswer: {answer}`, is what the `pretrained` base
model reads (it never sees the chat markers); a plain QA record is a document of its own, so the
packer's end-of-document token follows the answer and greedy decoding stops there too.
"""

from __future__ import annotations

from common.text import exact_match as _exact_match
from common.text import normalize_answer

__all__ = [
    "ASSISTANT",
    "CHAT_TEMPLATE",
    "END",
    "PAD",
    "SPECIAL_TOKENS",
    "USER",
    "exact_match",
    "format_chat",
    "format_plain_prompt",
    "format_plain_qa",
    "format_prompt",
    "normalize_answer",
]

END = "<|endoftext|>"
"""End of a document and of an assistant turn; the tokenizer's EOS."""
PAD = "<|pad|>"
"""Padding token; never appears in text."""
USER = "<|user|>"
"""Opens the user's turn."""
ASSISTANT = "<|assistant|>"
"""Opens the assistant's turn; the answer follows immediately."""

SPECIAL_TOKENS: tuple[str, ...] = (END, PAD, USER, ASSISTANT)
"""All special tokens, in the order of their ids in the world tokenizer (0, 1, 2, 3)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END + ""
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
"""The same format as a Jinja chat template, saved with the tokenizer for `apply_chat_template`."""


def format_prompt(question: str) -> str:
    """The chat text up to where the assistant's answer starts (the input of greedy decoding)."""
    return f"{USER}{question}{ASSISTANT}"


def format_chat(question: str, answer: str) -> str:
    """A complete single-turn chat: the prompt, the answer and the end marker."""
    return format_prompt(question) + answer + END


def format_plain_prompt(question: str) -> str:
    """The plain-text QA text up to where the answer starts (no trailing space: the tokenizer
    gives the answer's first word its leading space, as in running text)."""
    return f"Question: {question}\nAnswer:"


def format_plain_qa(question: str, answer: str) -> str:
    """A complete plain-text QA document (the packer appends the end-of-document token)."""
    return f"{format_plain_prompt(question)} {answer}"


def exact_match(prediction: str, answer: str) -> bool:
    """Whether a decoded prediction, cut at the end marker, equals the reference answer after
    `common.text.normalize_answer` (the one definition evaluation uses too)."""
    return _exact_match(prediction.split(END, 1)[0], answer)
