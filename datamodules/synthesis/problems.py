"""The problems a synthetic passage is written about: read, deduplicated, drawn into groups.

Each downstream task gives a training split (the problems passages are written about) and a test
split (only read, to keep its problems and entities out of every passage):

- **Reading** (`read_task_pools`). A train record needs `question` and `answer` (strings) and may
  carry `facts` (`[{"entity", "attribute", "value"}]`, the facts its answer rests on: required by
  the `world_template` backend, shown to a model in the prompt otherwise) and `entities` (names;
  default: the facts' entities). A test record needs `question` and may name its entities in
  `entity` (`"A"` or `"A | B"`, the world's format) or `entities`. Paths are JSONL files or
  `world:<split>` (a split of the synthetic world). A bad record is one `DataError` naming
  file:line and the field.
- **Deduplication.** A train problem whose normalized question (`normalize_question`: whitespace
  collapsed, case folded, trailing `?`/`.`/`!` dropped) is the question of any test problem (of
  any task) is dropped and counted (`question_in_test`). A train problem naming an entity that a
  test problem names is *leakage*: dropped, counted (`test_entity`) and logged as a warning. A
  question seen earlier in the train splits is dropped too (`duplicate`). The world keeps train
  and test entities disjoint, so on it all three counts are 0 (reported anyway).
- **Sampling** (`draw_groups`). `num_passages` groups of `problems_per_passage` problems, each
  group from different tasks (`distinct_tasks`), each problem used at most `max_uses` times. Each
  task's problems are consumed in `max_uses` rounds of seeded permutations (every problem once
  before any twice); each group takes the tasks with the most problems left (ties broken by the
  seeded RNG), which makes the most groups possible, and shuffles their order in the passage.
  Group `g` depends only on the draws before it, so raising `num_passages` appends groups and
  keeps the earlier ones. When the tasks run out, `on_shortage: fewer` (default) stops and logs
  a warning naming the shortfall; `allow_same_task` fills the group from the same task (counted).
- **Ids.** A group's id is a hash of its problems' `(task, question)` in passage order and of the
  guideline's fingerprint (its version and templates, `Guideline.fingerprint`), so the same
  config gives the same ids in the same order; a repeated group (possible with `max_uses > 1`)
  hashes its occurrence number too, so ids are unique.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError, DataError
from common.jsonl import read_jsonl

log = logging.getLogger("datamodules.synthesis")

WORLD_SCHEME = "world:"
WorldSplit = Callable[[str], Path]
"""`split name -> JSONL path` of a materialized world (`datamodules.format_alignment.world_splits`)."""


def _default_task_names() -> list[str]:
    from datamodules.world.tasks import TASKS

    return list(TASKS)


@dataclass
class TaskSource:
    """One downstream task's problems.

    Args:
        task: The task's name (written in the passages; groups draw from different tasks).
        train: The training problems: a JSONL file or `world:<split>`; records with `question`,
            `answer`, optional `facts` (`[{"entity", "attribute", "value"}]`) and `entities`.
        test: The task's test problems (`question`, optional `entity` as `"A | B"` or
            `entities`), kept out of every passage; null: none.
    """

    task: str
    train: str
    test: str | None = None


def default_tasks() -> list[TaskSource]:
    """The world's downstream tasks: `world:task_<name>_train` / `_test` for every world task."""
    return [
        TaskSource(name, f"{WORLD_SCHEME}task_{name}_train", f"{WORLD_SCHEME}task_{name}_test")
        for name in _default_task_names()
    ]


@dataclass
class SamplerConfig:
    """How the problems are drawn into groups (one group per passage).

    Args:
        num_passages: Groups to draw (passages to write); fewer when the problems run out (see
            `on_shortage`).
        problems_per_passage: Problems per group.
        distinct_tasks: Every problem of a group comes from another task.
        max_uses: How many groups a problem may be in.
        on_shortage: When fewer than `problems_per_passage` tasks have problems left: `fewer`
            stops drawing (logged, in the manifest); `allow_same_task` fills the group with
            problems of the same task (counted).
        seed: Seed of the draw.
    """

    num_passages: int = 150
    problems_per_passage: int = 3
    distinct_tasks: bool = True
    max_uses: int = 1
    on_shortage: Literal["fewer", "allow_same_task"] = "fewer"
    seed: int = 0

    def validate(self, key: str = "sampler") -> None:
        """`ConfigError` naming `key.<field>` for the first bad value."""
        for name, minimum in (("num_passages", 1), ("problems_per_passage", 1), ("max_uses", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(
                    f"{key}.{name}", f"must be an integer >= {minimum}, got {value!r}"
                )
        if self.on_shortage not in ("fewer", "allow_same_task"):
            raise ConfigError(
                f"{key}.on_shortage",
                f"must be 'fewer' or 'allow_same_task', got {self.on_shortage!r}",
            )


# ----------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Fact:
    """One fact a problem's answer rests on."""

    entity: str
    attribute: str
    value: str


@dataclass(frozen=True)
class Problem:
    """One training problem of a downstream task."""

    task: str
    question: str
    answer: str
    entities: tuple[str, ...] = ()
    facts: tuple[Fact, ...] = ()
    where: str = field(default="", compare=False)
    """`file:line` it was read from (messages only)."""

    def record(self) -> dict[str, str]:
        """`{"task", "question", "answer"}`, as written in `passages.jsonl`."""
        return {"task": self.task, "question": self.question, "answer": self.answer}

    def key(self) -> dict[str, Any]:
        """Everything about the problem that a passage depends on (for fingerprints)."""
        return {
            "task": self.task,
            "question": self.question,
            "answer": self.answer,
            "entities": list(self.entities),
            "facts": [[f.entity, f.attribute, f.value] for f in self.facts],
        }


@dataclass(frozen=True)
class ProblemGroup:
    """The problems of one passage, in passage order, and the passage's stable id."""

    index: int
    id: str
    problems: tuple[Problem, ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(p.task for p in self.problems)


@dataclass
class TaskStats:
    """What happened to one task's training problems."""

    read: int = 0
    kept: int = 0
    question_in_test: int = 0
    test_entity: int = 0
    duplicate: int = 0
    used: int = 0
    """Problem uses over all groups (a problem used twice counts twice)."""
    distinct_used: int = 0


@dataclass
class TaskPool:
    """One task's kept training problems and its counts."""

    task: str
    train: str
    test: str | None
    problems: list[Problem]
    stats: TaskStats


def normalize_question(text: str) -> str:
    """A question's form for deduplication: whitespace collapsed, case folded, trailing `?.!` and
    spaces dropped."""
    return " ".join(text.split()).casefold().rstrip("?.! ")


def resolve_path(path: str, *, key: str, world_split: WorldSplit | None) -> Path:
    """A JSONL path, or the file of `world:<split>` through `world_split`."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(key, "must be a JSONL path or world:<split>")
    if path.startswith(WORLD_SCHEME):
        if world_split is None:
            raise ConfigError(key, f"{path!r} names a world split, but no world is given")
        return Path(world_split(path[len(WORLD_SCHEME) :]))
    return Path(path)


def _string(record: dict[str, Any], name: str, source: Path, line: int) -> str:
    if name not in record:
        present = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise DataError(source, f"record has no field {name!r} (fields present: {present})", line)
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        kind = "null" if value is None else type(value).__name__
        raise DataError(source, f"field {name!r} must be a non-empty string, got {kind}", line)
    return value


def _names(value: Any, field_name: str, source: Path, line: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(source, f"field {field_name!r} must be a list of strings", line)
    return tuple(value)


def _facts(value: Any, source: Path, line: int) -> tuple[Fact, ...]:
    if not isinstance(value, list):
        raise DataError(source, "field 'facts' must be a list of {entity, attribute, value}", line)
    facts = []
    for i, fact in enumerate(value):
        if not isinstance(fact, dict) or not all(
            isinstance(fact.get(k), str) and fact.get(k) for k in ("entity", "attribute", "value")
        ):
            raise DataError(
                source,
                f"facts[{i}] must be an object with string fields entity, attribute and value",
                line,
            )
        facts.append(Fact(fact["entity"], fact["attribute"], fact["value"]))
    return tuple(facts)


def read_train_problems(path: Path, task: str) -> list[Problem]:
    """Every training problem of `path` (JSONL), validated; `DataError` naming file:line."""
    problems = []
    for line, record in read_jsonl(path):
        question = _string(record, "question", path, line)
        answer = _string(record, "answer", path, line)
        facts = _facts(record.get("facts", []), path, line)
        if "entities" in record:
            entities = _names(record["entities"], "entities", path, line)
        else:
            entities = tuple(dict.fromkeys(f.entity for f in facts))
        problems.append(
            Problem(task, question.strip(), answer.strip(), entities, facts, f"{path}:{line}")
        )
    return problems


def read_test_problems(path: Path) -> tuple[set[str], set[str]]:
    """`(normalized questions, entity names)` of a test split (JSONL)."""
    questions: set[str] = set()
    entities: set[str] = set()
    for line, record in read_jsonl(path):
        questions.add(normalize_question(_string(record, "question", path, line)))
        if "entities" in record:
            entities.update(_names(record["entities"], "entities", path, line))
        elif isinstance(record.get("entity"), str):
            entities.update(n.strip() for n in record["entity"].split("|") if n.strip())
    return questions, entities


def read_task_pools(
    sources: Sequence[TaskSource], *, world_split: WorldSplit | None = None, key: str = "tasks"
) -> list[TaskPool]:
    """Every task's training problems, deduplicated against all test splits (module docstring)."""
    if not sources:
        raise ConfigError(key, "must name at least one task")
    seen_tasks: set[str] = set()
    for i, source in enumerate(sources):
        if not isinstance(source.task, str) or not source.task:
            raise ConfigError(f"{key}[{i}].task", "must be a non-empty name")
        if source.task in seen_tasks:
            raise ConfigError(f"{key}[{i}].task", f"task {source.task!r} is named twice")
        seen_tasks.add(source.task)
    test_questions: set[str] = set()
    test_entities: set[str] = set()
    for i, source in enumerate(sources):
        if source.test is not None:
            path = resolve_path(source.test, key=f"{key}[{i}].test", world_split=world_split)
            questions, entities = read_test_problems(path)
            test_questions |= questions
            test_entities |= entities
    pools = []
    seen_questions: set[str] = set()
    for i, source in enumerate(sources):
        path = resolve_path(source.train, key=f"{key}[{i}].train", world_split=world_split)
        stats = TaskStats()
        kept = []
        for problem in read_train_problems(path, source.task):
            stats.read += 1
            normalized = normalize_question(problem.question)
            named = set(problem.entities) | {f.entity for f in problem.facts}
            if normalized in test_questions:
                stats.question_in_test += 1
            elif named & test_entities:
                stats.test_entity += 1
            elif normalized in seen_questions:
                stats.duplicate += 1
            else:
                seen_questions.add(normalized)
                kept.append(problem)
        stats.kept = len(kept)
        if stats.question_in_test:
            log.info(
                "task %s: dropped %d training problem(s) whose question is in a test split",
                source.task,
                stats.question_in_test,
            )
        if stats.test_entity:
            log.warning(
                "task %s: LEAKAGE: %d training problem(s) name an entity of a test split; dropped",
                source.task,
                stats.test_entity,
            )
        if stats.duplicate:
            log.info(
                "task %s: dropped %d repeated training question(s)", source.task, stats.duplicate
            )
        if not kept:
            raise DataError(path, f"task {source.task!r} has no training problem left")
        pools.append(TaskPool(source.task, source.train, source.test, kept, stats))
    return pools


# ----------------------------------------------------------------------------------- sampling


def group_id(problems: Sequence[Problem], guideline_key: str, occurrence: int = 0) -> str:
    """The stable id of a passage: 16 hex digits of a hash of its problems' `(task, question)`
    in order and the guideline's fingerprint (and the occurrence of a repeated group)."""
    payload: dict[str, Any] = {
        "guideline": guideline_key,
        "problems": [[p.task, p.question] for p in problems],
    }
    if occurrence:
        payload["occurrence"] = occurrence
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


@dataclass
class Draw:
    """The groups drawn and what fell short."""

    groups: list[ProblemGroup]
    shortage: dict[str, Any] | None = None
    """`{"requested", "planned", "reason"}` when fewer groups than requested could be drawn."""
    same_task_groups: int = 0
    """Groups holding two problems of one task (`allow_same_task`, or `distinct_tasks: false`)."""


def draw_groups(
    pools: Sequence[TaskPool], sampler: SamplerConfig, guideline_key: str, *, key: str = "sampler"
) -> Draw:
    """Draw the groups (see the module docstring); updates each pool's `used` counts."""
    k = sampler.problems_per_passage
    tasks = [pool.task for pool in pools]
    if sampler.distinct_tasks and k > len(tasks) and sampler.on_shortage == "fewer":
        raise ConfigError(
            f"{key}.problems_per_passage",
            f"is {k}, but there are only {len(tasks)} tasks ({', '.join(tasks)}) and "
            "distinct_tasks is true; lower it, add tasks, or set on_shortage: allow_same_task",
        )
    rng = random.Random(f"adaptlm-synthesis-sampler/{sampler.seed}")
    queues: dict[str, deque[Problem]] = {}
    for pool in pools:
        order: list[Problem] = []
        for _ in range(sampler.max_uses):
            permutation = list(pool.problems)
            rng.shuffle(permutation)
            order += permutation
        queues[pool.task] = deque(order)
    allow_same = not sampler.distinct_tasks or sampler.on_shortage == "allow_same_task"
    groups: list[ProblemGroup] = []
    occurrences: dict[tuple[tuple[str, str], ...], int] = {}
    same_task_groups = 0
    shortage = None
    for index in range(sampler.num_passages):
        tiebreak = {task: rng.random() for task in tasks}
        left = {task: len(queues[task]) for task in tasks}
        chosen: list[str] = []
        while len(chosen) < k:
            fresh = [t for t in tasks if left[t] > 0 and t not in chosen]
            pool = fresh or ([t for t in tasks if left[t] > 0] if allow_same else [])
            if not pool:
                break
            task = max(pool, key=lambda t: (left[t], tiebreak[t]))
            chosen.append(task)
            left[task] -= 1
        problems: list[Problem] = []
        if len(chosen) == k:
            for task in chosen:
                queue = queues[task]
                # The same problem twice in one group (a round boundary of max_uses, or two
                # slots of one task): take the next one that is not in the group yet.
                position = next((j for j, p in enumerate(queue) if p not in problems), None)
                if position is None:
                    break
                problems.append(queue[position])
        if len(problems) < k:
            requested = sampler.num_passages
            counts = ", ".join(f"{t}: {len(queues[t])}" for t in tasks)
            reason = (
                f"the tasks ran out after {index} groups of {k} problems"
                f"{' from different tasks' if not allow_same else ''} with max_uses="
                f"{sampler.max_uses} (problems left per task: {counts})"
            )
            shortage = {"requested": requested, "planned": index, "reason": reason}
            log.warning(
                "sampler.num_passages=%d, but %s: drawing %d, %d fewer (raise sampler.max_uses, "
                "add problems, or set sampler.on_shortage: allow_same_task)",
                requested,
                reason,
                index,
                requested - index,
            )
            break
        for task, problem in zip(chosen, problems):
            queues[task].remove(problem)
        order = list(range(k))
        rng.shuffle(order)
        problems = [problems[j] for j in order]
        if len({p.task for p in problems}) < k:
            same_task_groups += 1
        signature = tuple((p.task, p.question) for p in problems)
        occurrence = occurrences.get(signature, 0)
        occurrences[signature] = occurrence + 1
        groups.append(
            ProblemGroup(index, group_id(problems, guideline_key, occurrence), tuple(problems))
        )
    by_task = {pool.task: pool for pool in pools}
    distinct: dict[str, set[str]] = {t: set() for t in tasks}
    for group in groups:
        for problem in group.problems:
            by_task[problem.task].stats.used += 1
            distinct[problem.task].add(problem.question)
    for task in tasks:
        by_task[task].stats.distinct_used = len(distinct[task])
    if same_task_groups:
        log.info("%d group(s) hold two problems of the same task", same_task_groups)
    return Draw(groups, shortage, same_task_groups)


def pools_fingerprint(pools: Sequence[TaskPool]) -> str:
    """A hash of every kept problem of every task (what the passages can depend on)."""
    digest = hashlib.blake2b(digest_size=12)
    for pool in pools:
        digest.update(json.dumps(pool.task).encode())
        for problem in pool.problems:
            digest.update(json.dumps(problem.key(), sort_keys=True).encode())
    return digest.hexdigest()


__all__ = [
    "WORLD_SCHEME",
    "Draw",
    "Fact",
    "Problem",
    "ProblemGroup",
    "SamplerConfig",
    "TaskPool",
    "TaskSource",
    "TaskStats",
    "default_tasks",
    "draw_groups",
    "group_id",
    "normalize_question",
    "pools_fingerprint",
    "read_task_pools",
    "read_test_problems",
    "read_train_problems",
    "resolve_path",
]
