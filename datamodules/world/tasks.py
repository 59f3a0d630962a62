"""Downstream tasks on the new-domain entities (TRAIT), in the plain-text QA format.

The new-domain entities are split once into task-train and task-test entities
(`task_entities`); training problems use only the former, test problems only the latter, so no
test problem (nor a test entity) is in any training split. Each task in `TASKS` gives two splits:

- `task_<name>_train` (`text`): `{"text": format_plain_qa(q, a), "question", "answer", "task",
  "entities": [names], "facts": [{"entity", "attribute", "value"}]}`; `facts` are the facts the
  answer rests on (for generating synthetic passages);
- `task_<name>_test` (`qa`): `{"prompt": format_plain_prompt(q), "answer", "entity", "attribute",
  "question", "task"}`, with `entity` the name or `"<A> | <B>"` and `attribute` the task name.

Tasks: `attribute_qa` (one question per entity and attribute; training question templates for
train, held-out ones for test), `comparison` ("Who was born earlier, A or B?" -> the earlier-born's
full name) and `same_value` ("Did A and B study at the same university?" -> "yes"/"no", balanced).
A task whose attributes the world lacks (e.g. `comparison` without `birth_date`) has empty splits.
Adding a task is one entry in `TASKS`. All randomness comes from `world.rng(<split name>, ...)`.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from datamodules.world.chat import format_plain_prompt, format_plain_qa
from datamodules.world.generator import Entity, World
from datamodules.world.splits import Record, register_split
from datamodules.world.templates import MONTHS

logger = logging.getLogger(__name__)

TaskSplit = Literal["train", "test"]
ENUMERATE_LIMIT = 200_000
"""Candidate problems up to which a task enumerates them all (exact sampling without
replacement); above it, it draws at random with bounded redraws."""
MAX_REDRAWS_PER_PROBLEM = 100

COMPARISON_TEMPLATES: tuple[str, ...] = (
    "Who was born earlier, {a} or {b}?",
    "Which of {a} and {b} was born first?",
    "Who is older, {a} or {b}?",
)
"""Comparison questions; the answer is the full name of the earlier-born entity."""

SAME_VALUE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "university": (
        "Did {a} and {b} study at the same university?",
        "Did {a} and {b} attend the same university?",
    ),
    "birth_city": (
        "Were {a} and {b} born in the same city?",
        "Do {a} and {b} come from the same city?",
    ),
    "employer": (
        "Do {a} and {b} work for the same company?",
        "Are {a} and {b} employed by the same company?",
    ),
    "work_city": (
        "Do {a} and {b} work in the same city?",
        "Are {a} and {b} based in the same city for work?",
    ),
    "major": (
        "Did {a} and {b} study the same subject?",
        "Did {a} and {b} have the same major?",
    ),
}
"""Same-value questions per attribute; the answer is `yes` or `no`."""


@dataclass(frozen=True)
class Problem:
    """One task problem before formatting.

    Args:
        question: The question text.
        answer: The exact answer span.
        entities: Entities the question names, in question order.
        facts: `(entity, attribute)` pairs the answer rests on.
    """

    question: str
    answer: str
    entities: tuple[Entity, ...]
    facts: tuple[tuple[Entity, str], ...]


TaskGenerator = Callable[[World, list[Entity], TaskSplit, random.Random], list[Problem]]


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: `generate(world, entities, split, rng)` gives its problems.

    Args:
        name: Used in split names (`task_<name>_train`, `task_<name>_test`) and records.
        description: One line for humans.
        generate: Problems of one split from that split's entities (and its private RNG).
    """

    name: str
    description: str
    generate: TaskGenerator


def task_entities(world: World) -> tuple[list[Entity], list[Entity]]:
    """`(train, test)` new-domain entities: a seeded shuffle, `test_entity_fraction` of them
    (rounded, at least one, at most all but one) for test, the rest for training."""
    domain = world.domain_entities
    if len(domain) < 2:
        raise ValueError(
            "the downstream tasks need at least 2 new-domain entities (train and test entities "
            f"are disjoint); world.num_domain_entities is {len(domain)}"
        )
    order = list(domain)
    world.rng("tasks", "entities").shuffle(order)
    n_test = min(
        max(round(world.config.tasks.test_entity_fraction * len(order)), 1), len(order) - 1
    )
    test_ids = {e.id for e in order[:n_test]}
    # Keep world order within each side (stable, readable files).
    return [e for e in domain if e.id not in test_ids], [e for e in domain if e.id in test_ids]


def _date_key(date: str) -> tuple[int, int, int]:
    """`'Month D, YYYY'` as `(year, month, day)`, for comparing birth dates."""
    month_day, year = date.split(", ")
    month, day = month_day.split(" ")
    return int(year), MONTHS.index(month) + 1, int(day)


def _sample_pairs(
    rng: random.Random,
    n: int,
    count: int,
    accept: Callable[[int, int], bool],
    draw: Callable[[random.Random], tuple[int, int] | None] | None = None,
) -> list[tuple[int, int]]:
    """`count` distinct ordered index pairs `(i, j)`, `i != j`, with `accept(i, j)`.

    Enumerates when there are few candidates; otherwise draws (with `draw`, or uniformly) and
    redraws rejects and repeats a bounded number of times. The caller has checked that at least
    `count` pairs exist.
    """
    if n * (n - 1) <= ENUMERATE_LIMIT:
        units = [(i, j) for i in range(n) for j in range(n) if i != j and accept(i, j)]
        return rng.sample(units, count)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    for _ in range(MAX_REDRAWS_PER_PROBLEM * count):
        unit = draw(rng) if draw else (rng.randrange(n), rng.randrange(n))
        if unit is None or unit[0] == unit[1] or unit in seen or not accept(*unit):
            continue
        seen.add(unit)
        out.append(unit)
        if len(out) == count:
            return out
    raise ValueError(
        f"could not draw {count} distinct pairs in {MAX_REDRAWS_PER_PROBLEM * count} tries"
    )


# --- the tasks ------------------------------------------------------------------------------


def attribute_qa(
    world: World, entities: list[Entity], split: TaskSplit, rng: random.Random
) -> list[Problem]:
    """One question per entity and attribute, phrased with a random training (train) or
    held-out (test) question template."""
    which = "train" if split == "train" else "heldout"
    problems = []
    for entity in entities:
        for attribute in world.attribute_names:
            template = rng.choice(world.question_templates(attribute, which))
            problems.append(
                Problem(
                    world.question(entity, attribute, template),
                    entity.attributes[attribute],
                    (entity,),
                    ((entity, attribute),),
                )
            )
    return problems


def comparison(
    world: World, entities: list[Entity], split: TaskSplit, rng: random.Random
) -> list[Problem]:
    """`comparisons_per_split` "Who was born earlier, A or B?" problems on distinct ordered
    pairs with different birth dates; the answer is the earlier-born's full name."""
    if "birth_date" not in world.attribute_names:
        logger.info("world has no birth_date: the comparison task is empty")
        return []
    count = world.config.tasks.comparisons_per_split
    dates = [_date_key(e.attributes["birth_date"]) for e in entities]
    n = len(entities)
    same_date = sum(k * (k - 1) for k in _group_sizes(dates))
    capacity = n * (n - 1) - same_date
    if count > capacity:
        logger.warning(
            "world.tasks.comparisons_per_split=%d, but the %d task-%s entities give only %d "
            "distinct comparison problems (ordered pairs with different birth dates): writing %d, "
            "%d fewer (raise world.num_domain_entities for more)",
            count, n, split, capacity, capacity, count - capacity,
        )  # fmt: skip
        count = capacity
    pairs = _sample_pairs(rng, n, count, lambda i, j: dates[i] != dates[j])
    problems = []
    for i, j in pairs:
        a, b = entities[i], entities[j]
        earlier = a if dates[i] < dates[j] else b
        question = rng.choice(COMPARISON_TEMPLATES).format(a=a.name, b=b.name)
        problems.append(
            Problem(question, earlier.name, (a, b), ((a, "birth_date"), (b, "birth_date")))
        )
    return problems


def _group_sizes(values: Sequence[object]) -> list[int]:
    counts: dict[object, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return list(counts.values())


def same_value(
    world: World, entities: list[Entity], split: TaskSplit, rng: random.Random
) -> list[Problem]:
    """`same_value_per_split` "Did A and B ... the same ...?" problems, half `yes` (the two
    share the value) and half `no`, over distinct (ordered pair, attribute) combinations."""
    attributes = [a for a in world.attribute_names if a in SAME_VALUE_TEMPLATES]
    if not attributes:
        logger.info(
            "world has none of %s: the same_value task is empty", list(SAME_VALUE_TEMPLATES)
        )
        return []
    count = world.config.tasks.same_value_per_split
    n_yes, n_no = count // 2, count - count // 2
    n = len(entities)
    problems = []
    for answer, wanted in (("yes", n_yes), ("no", n_no)):
        # Split the wanted problems over attributes as evenly as capacities allow.
        capacities = {}
        for attribute in attributes:
            yes = sum(
                k * (k - 1) for k in _group_sizes([e.attributes[attribute] for e in entities])
            )
            capacities[attribute] = yes if answer == "yes" else n * (n - 1) - yes
        total = sum(capacities.values())
        if wanted > total:
            logger.warning(
                "world.tasks.same_value_per_split=%d wants %d '%s' problems, but the %d task-%s "
                "entities give only %d (ordered pairs that %s one of %s): writing %d, %d fewer "
                "(raise world.num_domain_entities for more)",
                count, wanted, answer, n, split, total,
                "share" if answer == "yes" else "differ in", attributes, total, wanted - total,
            )  # fmt: skip
            wanted = total
        quotas = _quotas(rng, wanted, capacities)
        for attribute in attributes:
            if not quotas[attribute]:
                continue
            values = [e.attributes[attribute] for e in entities]
            same = answer == "yes"
            groups: dict[str, list[int]] = defaultdict(list)
            for index, value in enumerate(values):
                groups[value].append(index)

            def draw_yes(
                r: random.Random, values: list[str] = values, groups=groups
            ) -> tuple[int, int]:
                i = r.randrange(n)
                return i, r.choice(groups[values[i]])

            pairs = _sample_pairs(
                rng,
                n,
                quotas[attribute],
                lambda i, j, values=values, same=same: (values[i] == values[j]) == same,
                draw_yes if same else None,
            )
            for i, j in pairs:
                a, b = entities[i], entities[j]
                template = rng.choice(SAME_VALUE_TEMPLATES[attribute])
                problems.append(
                    Problem(
                        template.format(a=a.name, b=b.name),
                        answer,
                        (a, b),
                        ((a, attribute), (b, attribute)),
                    )
                )
    rng.shuffle(problems)
    return problems


def _quotas(rng: random.Random, wanted: int, capacities: dict[str, int]) -> dict[str, int]:
    """Spread `wanted` problems over attributes one at a time, in random order, skipping full
    ones, so attributes are as balanced as their capacities allow."""
    quotas = dict.fromkeys(capacities, 0)
    order = list(capacities)
    rng.shuffle(order)
    while wanted:
        for attribute in order:
            if wanted and quotas[attribute] < capacities[attribute]:
                quotas[attribute] += 1
                wanted -= 1
    return quotas


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("attribute_qa", "one question per new-domain entity and attribute", attribute_qa),
        TaskSpec("comparison", "who was born earlier, A or B", comparison),
        TaskSpec(
            "same_value", "do A and B share a university, city, employer or major", same_value
        ),
    )
}
"""All downstream tasks; each entry registers `task_<name>_train` and `task_<name>_test`."""


def task_problems(world: World, task: str, split: TaskSplit) -> list[Problem]:
    """The problems of one task split, from that split's entities and its private RNG."""
    train, test = task_entities(world)
    entities = train if split == "train" else test
    return TASKS[task].generate(world, entities, split, world.rng(f"task_{task}_{split}"))


def _train_record(task: str, problem: Problem) -> Record:
    return {
        "text": format_plain_qa(problem.question, problem.answer),
        "question": problem.question,
        "answer": problem.answer,
        "task": task,
        "entities": [e.name for e in problem.entities],
        "facts": [
            {"entity": e.name, "attribute": a, "value": e.attributes[a]} for e, a in problem.facts
        ],
    }


def _test_record(task: str, problem: Problem) -> Record:
    return {
        "prompt": format_plain_prompt(problem.question),
        "answer": problem.answer,
        "entity": " | ".join(e.name for e in problem.entities),
        "attribute": task,
        "question": problem.question,
        "task": task,
    }


def _register(task: TaskSpec) -> None:
    @register_split(
        f"task_{task.name}_train", "text", f"{task.description} (task-train entities, plain QA)"
    )
    def render_train(world: World) -> list[Record]:
        return [_train_record(task.name, p) for p in task_problems(world, task.name, "train")]

    @register_split(
        f"task_{task.name}_test", "qa", f"{task.description} (task-test entities, plain QA)"
    )
    def render_test(world: World) -> list[Record]:
        return [_test_record(task.name, p) for p in task_problems(world, task.name, "test")]


for _task in TASKS.values():
    _register(_task)
