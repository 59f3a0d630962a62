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
from datamodules.world.generator import Group, TemplateSet, World

Record = dict[str, Any]
SplitKind = Literal["text", "qa"]


@dataclass(frozen=True)
class SplitSpec:
    """A registered split.

    Args:
        name: File stem and `world:<name>` source name.
        kind: `text` records are `{"text"}`; `qa` records are
            `{"prompt", "answer", "entity", "attribute", "question"}`.
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
    return record["prompt"] + record["answer"]


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
                text = world.biography(entity, which, rng)
                if text not in seen:
                    break
            seen.add(text)
            records.append({"text": text})
    return records


def _chat_qa(world: World, group: Group, which: TemplateSet) -> list[Record]:
    return [
        {"text": world.chat_text(question, answer)}
        for entity in world.entities_of(group)
        for _attribute, question, answer in world.qa_pairs(entity, which)
    ]


def _qa_eval(world: World, group: Group) -> list[Record]:
    return [
        world.qa_record(entity, attribute, question)
        for entity in world.entities_of(group)
        for attribute, question, _answer in world.qa_pairs(entity, "heldout")
    ]


# --- the splits --------------------------------------------------------------------------------


@register_split("general_documents", "text", "biographies of general entities, training templates")
def general_documents(world: World) -> list[Record]:
    """`train_paraphrases` biographies per general entity."""
    return _documents(
        world, "general_documents", "general", "train", world.config.train_paraphrases
    )


@register_split("general_qa", "text", "chat QA on general entities, training question templates")
def general_qa(world: World) -> list[Record]:
    """One chat per general entity, attribute and training question template."""
    return _chat_qa(world, "general", "train")


@register_split(
    "domain_documents", "text", "biographies of new-domain entities, training templates"
)
def domain_documents(world: World) -> list[Record]:
    """`train_paraphrases` biographies per new-domain entity (the knowledge to adapt to)."""
    return _documents(world, "domain_documents", "domain", "train", world.config.train_paraphrases)


@register_split(
    "heldout_general_documents", "text", "biographies of general entities, held-out templates"
)
def heldout_general_documents(world: World) -> list[Record]:
    """`heldout_paraphrases` held-out-template biographies per general entity (forgetting)."""
    return _documents(
        world, "heldout_general_documents", "general", "heldout", world.config.heldout_paraphrases
    )


@register_split(
    "heldout_domain_documents", "text", "biographies of new-domain entities, held-out templates"
)
def heldout_domain_documents(world: World) -> list[Record]:
    """`heldout_paraphrases` held-out-template biographies per new-domain entity (learning)."""
    return _documents(
        world, "heldout_domain_documents", "domain", "heldout", world.config.heldout_paraphrases
    )


@register_split("qa_eval_general", "qa", "QA on general entities, held-out question templates")
def qa_eval_general(world: World) -> list[Record]:
    """One record per general entity, attribute and held-out question template."""
    return _qa_eval(world, "general")


@register_split("qa_eval_domain", "qa", "QA on new-domain entities, held-out question templates")
def qa_eval_domain(world: World) -> list[Record]:
    """One record per new-domain entity, attribute and held-out question template."""
    return _qa_eval(world, "domain")


@register_split(
    "paraphrased_general_documents",
    "text",
    "biographies of general entities, training templates in new combinations and orders",
)
def paraphrased_general_documents(world: World) -> list[Record]:
    """Fresh paraphrases of general biographies with known wording: perplexity here measures the
    facts (the forgetting signal), not unseen phrasing as the held-out-template splits do."""
    return _documents(
        world, "paraphrased_general_documents", "general", "train", world.config.heldout_paraphrases
    )


@register_split(
    "paraphrased_domain_documents",
    "text",
    "biographies of new-domain entities, training templates in new combinations and orders",
)
def paraphrased_domain_documents(world: World) -> list[Record]:
    """Fresh paraphrases of new-domain biographies with known wording (the learning signal)."""
    return _documents(
        world, "paraphrased_domain_documents", "domain", "train", world.config.heldout_paraphrases
    )
