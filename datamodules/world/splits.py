"""The registry of world splits: name -> how to render its records from a `World`.

Adding a split is one decorated function here (later: instruction data, preference pairs,
downstream tasks). Each renderer draws only from RNGs private to its split and entity
(`world.rng(...)`), so a new split never changes the text of the existing ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from common.errors import DataError
from datamodules.world.chat import format_plain_prompt, format_plain_qa, format_prompt
from datamodules.world.generator import Entity, Group, TemplateSet, World

Record = dict[str, Any]
SplitKind = Literal["text", "qa", "preference", "labels"]


@dataclass(frozen=True)
class SplitSpec:
    """A registered split.

    Args:
        name: File stem and `world:<name>` source name.
        kind: `text` records have a `"text"` (plus metadata fields); `qa` records are
            `{"prompt", "answer", "entity", "attribute", "question"}` (evaluation by greedy exact
            match); `preference` records are `{"prompt", "chosen", "rejected", ...}` (a chosen and
            a rejected continuation of the same prompt); `labels` records carry ground truth about
            another split's records (no text of their own, never in the tokenizer corpus).
        description: One line for humans.
        render: Builds the records of the split from a world.
    """

    name: str
    kind: SplitKind
    description: str
    render: Callable[[World], list[Record]]


SPLITS: dict[str, SplitSpec] = {}
"""All splits, in the order they are written."""


def register_split(
    name: str, kind: SplitKind, description: str
) -> Callable[[Callable[[World], list[Record]]], Callable[[World], list[Record]]]:
    """Decorator adding a renderer to `SPLITS` under `name`."""

    def decorator(render: Callable[[World], list[Record]]) -> Callable[[World], list[Record]]:
        if name in SPLITS:
            raise ValueError(f"world split {name!r} is registered twice")
        SPLITS[name] = SplitSpec(name, kind, description, render)
        return render

    return decorator


def render_split(world: World, name: str) -> list[Record]:
    """The records of split `name`; an unknown name raises `DataError` listing the known ones."""
    if name not in SPLITS:
        raise DataError(f"world:{name}", f"unknown world split; available: {', '.join(SPLITS)}")
    return SPLITS[name].render(world)


def text_of(record: Record, kind: SplitKind) -> str:
    """The full text a record contributes to the corpus (what the tokenizer is trained on)."""
    if kind == "text":
        return record["text"]
    if kind == "qa":
        return record["prompt"] + record["answer"]
    if kind == "preference":
        return record["prompt"] + record["chosen"] + "\n" + record["prompt"] + record["rejected"]
    return ""


# --- shared renderers ------------------------------------------------------------------------


def _documents(
    world: World, split: str, group: Group, which: TemplateSet, count: int
) -> list[Record]:
    records = []
    for entity in world.entities_of(group):
        rng = world.rng(split, entity.id)
        seen: set[str] = set()
        for _ in range(count):
            # Redraw a duplicate (rare), a bounded number of times: tiny worlds may run out.
            for _attempt in range(20):
                text = world.document(entity, which, rng)
                if text not in seen:
                    break
            seen.add(text)
            records.append({"text": text})
    return records


QAFormat = Literal["chat", "plain"]


def _qa_texts(world: World, entities: list[Entity], qa_format: QAFormat) -> list[Record]:
    """QA documents with their `prompt` (the text before the answer), for completion-only loss."""
    render = world.chat_text if qa_format == "chat" else format_plain_qa
    prompt_of = format_prompt if qa_format == "chat" else format_plain_prompt
    return [
        {"text": render(question, answer), "prompt": prompt_of(question)}
        for entity in entities
        for _attribute, question, answer in world.qa_pairs(entity, "train")
    ]


def _qa_eval(world: World, entities: list[Entity], qa_format: QAFormat) -> list[Record]:
    prompt_of = format_prompt if qa_format == "chat" else format_plain_prompt
    records = []
    for entity in entities:
        for attribute, question, answer in world.qa_pairs(entity, "heldout"):
            records.append(
                {
                    "prompt": prompt_of(question),
                    "answer": answer,
                    "entity": entity.name,
                    "attribute": attribute,
                    "question": question,
                }
            )
    return records


# --- the splits --------------------------------------------------------------------------------


@register_split("general_documents", "text", "documents about general entities, training templates")
def general_documents(world: World) -> list[Record]:
    """`train_paraphrases` documents per general entity."""
    return _documents(
        world, "general_documents", "general", "train", world.config.train_paraphrases
    )


@register_split(
    "general_qa", "text", "chat QA on QA-trained general entities, training question templates"
)
def general_qa(world: World) -> list[Record]:
    """One chat per QA-trained general entity, attribute and training question template (the
    `chat` model's SFT data)."""
    return _qa_texts(world, world.general_qa_entities, "chat")


@register_split(
    "general_qa_plain",
    "text",
    "plain-text QA on QA-trained general entities, training question templates",
)
def general_qa_plain(world: World) -> list[Record]:
    """`Question: ... Answer: ...` documents for the QA-trained general entities (the `pretrained`
    model's QA data: plain text, never the chat markers)."""
    return _qa_texts(world, world.general_qa_entities, "plain")


@register_split(
    "domain_documents", "text", "documents about new-domain entities, training templates"
)
def domain_documents(world: World) -> list[Record]:
    """`train_paraphrases` documents per new-domain entity (the knowledge to adapt to)."""
    return _documents(world, "domain_documents", "domain", "train", world.config.train_paraphrases)


@register_split(
    "heldout_general_documents", "text", "documents about general entities, held-out templates"
)
def heldout_general_documents(world: World) -> list[Record]:
    """`heldout_paraphrases` held-out-template documents per general entity (forgetting)."""
    return _documents(
        world, "heldout_general_documents", "general", "heldout", world.config.heldout_paraphrases
    )


@register_split(
    "heldout_domain_documents", "text", "documents about new-domain entities, held-out templates"
)
def heldout_domain_documents(world: World) -> list[Record]:
    """`heldout_paraphrases` held-out-template documents per new-domain entity (learning)."""
    return _documents(
        world, "heldout_domain_documents", "domain", "heldout", world.config.heldout_paraphrases
    )


QA_EVAL_SETS: dict[str, tuple[str, str]] = {
    "general": ("general_qa_entities", "QA-trained general entities"),
    "general_bio_only": ("general_bio_only_entities", "general entities seen in documents only"),
    "domain": ("domain_entities", "new-domain entities"),
}
"""The evaluation QA sets: name -> (the `World` property listing their entities, description)."""


def _register_qa_eval(name: str, entities_of: str, who: str, qa_format: QAFormat) -> None:
    suffix, prompts = (
        ("", "chat prompts") if qa_format == "chat" else ("_plain", "plain-text prompts")
    )

    def render(world: World) -> list[Record]:
        """One record per entity, attribute and held-out question template."""
        return _qa_eval(world, getattr(world, entities_of), qa_format)

    register_split(
        f"qa_eval_{name}{suffix}", "qa", f"QA on {who}, held-out question templates, {prompts}"
    )(render)


# qa_eval_{general,general_bio_only,domain} (chat prompts), then the same with `_plain`.
for _format in ("chat", "plain"):
    for _name, (_entities_of, _who) in QA_EVAL_SETS.items():
        _register_qa_eval(_name, _entities_of, _who, _format)


@register_split(
    "paraphrased_general_documents",
    "text",
    "documents about general entities, training templates in new combinations and orders",
)
def paraphrased_general_documents(world: World) -> list[Record]:
    """Fresh paraphrases of general documents with known wording: perplexity here measures the
    facts (the forgetting signal), not unseen phrasing as the held-out-template splits do."""
    return _documents(
        world, "paraphrased_general_documents", "general", "train", world.config.heldout_paraphrases
    )


@register_split(
    "paraphrased_domain_documents",
    "text",
    "documents about new-domain entities, training templates in new combinations and orders",
)
def paraphrased_domain_documents(world: World) -> list[Record]:
    """Fresh paraphrases of new-domain documents with known wording (the learning signal)."""
    return _documents(
        world, "paraphrased_domain_documents", "domain", "train", world.config.heldout_paraphrases
    )
