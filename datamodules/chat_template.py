"""Multi-turn chats rendered to one text, with the character spans of their assistant turns.

A chat is a list of OpenAI-style turns `{"role": ..., "content": ...}` (roles: `ROLES`; `content` a
string; other keys, e.g. `name`, are passed on to the template, null ones dropped as transformers
does). `SourceSpec.chat_template` chooses how it becomes text:

- `tokenizer`: the tokenizer's own Jinja `chat_template`;
- an inline Jinja template (any value containing `{{` or `{%`), or a path to a `.jinja` file
  (`pkg:<module>/...` allowed, see `common.paths`);
- `plain`: format-free flattening (Mix-CPT): the turn contents joined by `"\\n"`, no role markers,
  every token a target.

A Jinja template is rendered exactly as `tokenizer.apply_chat_template(messages, tokenize=False)`
renders it (transformers' `render_jinja_template`, the tokenizer's special tokens as variables).
The loss spans are the assistant turns: turn `i` starts where the rendering of `messages[:i]` with
`add_generation_prompt=True` ends (after the template's assistant header) and ends where the
rendering of `messages[:i + 1]` ends, so the template's end-of-turn text after the content
(`<|im_end|>`, EOS, and whatever else it writes after a final assistant turn, e.g. ChatML's newline)
is in the span and the model learns to stop. Every such rendering must be a prefix of the whole
chat's rendering, else `ChatError` (templates that inject changing text or drop earlier reasoning
cannot be split this way). System, user and tool turns and the role headers get no loss.

Errors are `ChatError`s without a location; the reader (`datamodules.sources`) turns them into a
`DataError` naming the file and line or record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.paths import resolve_path

log = logging.getLogger(__name__)

TOKENIZER = "tokenizer"
"""`chat_template` value: use the tokenizer's own chat template."""
PLAIN = "plain"
"""`chat_template` value: format-free flattening (contents joined by newlines, full loss)."""
PLAIN_SEPARATOR = "\n"
"""What joins the turn contents of a `plain` chat."""
ROLES = ("system", "user", "assistant", "tool")
"""The accepted turn roles; loss goes to `assistant` turns only."""
_JINJA_SUFFIX = ".jinja"


class ChatError(ValueError):
    """A record's chat cannot be rendered; the message says why, the reader adds the location."""


def chat_template_kind(setting: str) -> str:
    """`tokenizer`, `plain`, `inline` or `file` for a `chat_template` setting (`ValueError` if it is
    none of them)."""
    if setting in (TOKENIZER, PLAIN):
        return setting
    if "{{" in setting or "{%" in setting:
        return "inline"
    if setting.strip().endswith(_JINJA_SUFFIX) and "\n" not in setting:
        return "file"
    raise ValueError(
        f"must be {TOKENIZER!r}, {PLAIN!r}, an inline Jinja template (containing '{{{{' or "
        f"'{{%') or a path to a {_JINJA_SUFFIX} file, got {setting[:60]!r}"
    )


def _read_template_file(setting: str, key: str) -> str:
    path = Path(resolve_path(setting.strip(), key=key)).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(key, f"cannot read the chat template file {str(path)!r}: {err}") from None


def _compile(template: str, key: str) -> None:
    """A `ConfigError` naming `key` unless `template` compiles as transformers compiles it."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(
            key, f"not a valid Jinja template: {err.message} (template line {err.lineno})"
        ) from None


def check_chat_template(setting: str, key: str) -> None:
    """Validate a `chat_template` setting without a tokenizer: its kind, and for an inline or file
    template that it can be read and compiles. Raises `ConfigError` naming `key`."""
    if not isinstance(setting, str) or not setting:
        raise ConfigError(key, "must be a non-empty string")
    try:
        kind = chat_template_kind(setting)
    except ValueError as err:
        raise ConfigError(key, str(err)) from None
    if kind == "inline":
        _compile(setting, key)
    elif kind == "file":
        _compile(_read_template_file(setting, key), key)


def load_chat_template(setting: str, tokenizer: Any | None, *, key: str, source: str) -> str | None:
    """The Jinja text a `chat_template` setting names (None for `plain`).

    Raises:
        ConfigError: naming `key` when the tokenizer has no chat template (for `tokenizer`), or a
            file cannot be read.
    """
    kind = chat_template_kind(setting)
    if kind == PLAIN:
        return None
    if kind == "inline":
        return setting
    if kind == "file":
        return _read_template_file(setting, key)
    if tokenizer is None:
        raise ConfigError(
            key,
            f"source {source}: {TOKENIZER!r} renders with the tokenizer's chat template, but this "
            "reader was given no tokenizer; set `chat_template` to an inline Jinja template, a "
            "path to a .jinja file or 'plain'",
        )
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates: the default one
        template = template.get("default")
    if not isinstance(template, str) or not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            key,
            f"source {source}: the tokenizer {name!r} has no chat template (or none named "
            "'default'); set `chat_template` to an inline Jinja template, a path to a .jinja file "
            "or 'plain'",
        )
    return template


def _kind_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_messages(value: Any) -> list[dict[str, Any]]:
    """The turns of one chat as fresh dicts, validated: a non-empty list of objects, each with a
    `role` in `ROLES` and a string `content`. A columnar value (a dict of equal-length lists, as
    `datasets` returns for a `Sequence` of structs) is accepted too. Raises `ChatError`."""
    if isinstance(value, Mapping) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) == 1:
            keys = list(value)
            value = [dict(zip(keys, row)) for row in zip(*value.values())]
    if not isinstance(value, list):
        raise ChatError(
            f"must be a list of {{'role': ..., 'content': ...}} turns, got {_kind_name(value)}"
        )
    if not value:
        raise ChatError("is an empty chat (no turns)")
    turns: list[dict[str, Any]] = []
    for j, turn in enumerate(value):
        if not isinstance(turn, Mapping):
            raise ChatError(
                f"turn {j} must be an object with 'role' and 'content', got {_kind_name(turn)}"
            )
        for name in ("role", "content"):
            if name not in turn:
                present = ", ".join(repr(k) for k in list(turn)[:6]) or "none"
                raise ChatError(
                    f"turn {j} has no {name!r} (keys: {present}); expected OpenAI-style "
                    "{'role': ..., 'content': ...} turns"
                )
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ChatError(f"turn {j} has role {role!r}; expected one of {list(ROLES)}")
        if not isinstance(content, str):
            raise ChatError(
                f"turn {j} ({role}): 'content' must be a string, got {_kind_name(content)}"
            )
        turns.append({k: v for k, v in turn.items() if v is not None})
    return turns


@dataclass(frozen=True)
class RenderedChat:
    """One chat as text.

    Attributes:
        text: The rendered chat.
        loss_spans: Sorted, non-overlapping `[start, end)` character spans of the assistant turns
            (content and end-of-turn text), or None for a `plain` chat (every token has loss).
        assistant_turns: Number of assistant turns.
    """

    text: str
    loss_spans: tuple[tuple[int, int], ...] | None
    assistant_turns: int


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class ChatRenderer:
    """Renders validated chats (see `check_messages`) with one template.

    Attributes:
        template: The Jinja template, or None for `plain` flattening.
        variables: Extra template variables: the tokenizer's special tokens (`bos_token`,
            `eos_token`, ...), as `apply_chat_template` passes them.
    """

    template: str | None
    variables: dict[str, Any] = field(default_factory=dict)
    _checked_generation_prompt: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_setting(
        cls, setting: str, tokenizer: Any | None, *, key: str, source: str
    ) -> ChatRenderer:
        """The renderer of a `chat_template` setting (see `load_chat_template`)."""
        template = load_chat_template(setting, tokenizer, key=key, source=source)
        variables: dict[str, Any] = {}
        if template is not None and tokenizer is not None:
            special = getattr(tokenizer, "special_tokens_map", {}) or {}
            variables = {
                k: [str(t) for t in v] if isinstance(v, (list, tuple)) else str(v)
                for k, v in special.items()
            }
        return cls(template, variables)

    def identity(self) -> dict[str, Any]:
        """What decides the rendered text (for a store fingerprint)."""
        if self.template is None:
            return {"chat_template": PLAIN, "separator": PLAIN_SEPARATOR}
        return {"chat_template": self.template, "variables": self.variables}

    def render_text(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool
    ) -> str:
        """The template's rendering of `messages` (may be empty), as
        `apply_chat_template(..., tokenize=False)` gives it. Raises `ChatError`."""
        if self.template is None:
            return PLAIN_SEPARATOR.join(str(t["content"]) for t in messages)
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _indices = render_jinja_template(
                conversations=[list(messages)],
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                **self.variables,
            )
        except Exception as err:  # jinja errors, `raise_exception` in templates: one line
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ChatError(f"the chat template failed: {type(err).__name__}: {detail}") from None
        return str(rendered[0])

    def __call__(self, messages: Sequence[Mapping[str, Any]]) -> RenderedChat:
        """The chat's text and assistant spans. Raises `ChatError`."""
        n_assistant = sum(t["role"] == "assistant" for t in messages)
        full = self.render_text(messages, add_generation_prompt=False)
        if self.template is None:
            return RenderedChat(full, None, n_assistant)
        spans: list[tuple[int, int]] = []
        for i, turn in enumerate(messages):
            if turn["role"] != "assistant":
                continue
            head = self.render_text(messages[:i], add_generation_prompt=True)
            upto = self.render_text(messages[: i + 1], add_generation_prompt=False)
            for name, part, whole, whole_name in (
                (
                    f"the first {i} turns with the generation prompt",
                    head,
                    upto,
                    f"the first {i + 1} turns",
                ),
                (f"the first {i + 1} turns", upto, full, "the whole chat"),
            ):
                if not whole.startswith(part):
                    at = _first_difference(part, whole)
                    raise ChatError(
                        f"the chat template does not render prefixes consistently: {name} is "
                        f"not a prefix of {whole_name} (they differ at character {at}: "
                        f"{part[at : at + 20]!r} vs {whole[at : at + 20]!r}), so the assistant "
                        "turns cannot be located; use a template that renders a chat's first turns "
                        "as the start of the whole chat (no injected dates, no dropped reasoning), "
                        "or `chat_template: plain`"
                    )
            if not self._checked_generation_prompt:
                self._checked_generation_prompt = True
                if head == self.render_text(messages[:i], add_generation_prompt=False):
                    log.warning(
                        "the chat template ignores add_generation_prompt: an assistant turn's "
                        "header (if it has one) is counted as part of the turn and gets loss"
                    )
            if spans and len(head) < spans[-1][1]:  # cannot happen for prefix-consistent renders
                raise ChatError(f"assistant turn {i} starts before the previous one ends")
            spans.append((len(head), len(upto)))
        return RenderedChat(full, tuple(spans), n_assistant)


__all__ = [
    "PLAIN",
    "PLAIN_SEPARATOR",
    "ROLES",
    "TOKENIZER",
    "ChatError",
    "ChatRenderer",
    "RenderedChat",
    "chat_template_kind",
    "check_chat_template",
    "check_messages",
    "load_chat_template",
]
