"""TRAIT's task-oriented synthetic passages (arXiv 2406.16694, ../shared/docs/methods.md "TRAIT").

Each passage takes several problems from different downstream tasks and holds one
problem-specific paragraph per problem (the problem in the plain evaluation format, its answer,
and the reasoning with the domain knowledge it uses) and a closing *enlightenment* paragraph on
what the problems share and how they differ (`guideline.enlightenment: false`: the ablation).

    python -m datamodules.synthesis --config experiments/configs/synthesis/world.yaml

- `problems`: the tasks' training problems, deduplicated against their test splits, drawn into
  groups by a seeded sampler; every group has a stable id.
- `guideline`: the prompt guideline (configurable templates) rendered per group.
- `backends`: the generators behind one ABC: `world_template` (the embedded default: templates
  on the world's facts, no model), `openai` (any OpenAI-compatible chat-completions endpoint:
  concurrency limit, retries with exponential backoff and jitter, the key from the environment
  only) and `transformers` (a local model, batched `generate`).
- `parse`: validation of a response (every paragraph present, every answer right).
- `runner`: the resumable, idempotent run and its command line (outputs: `passages.jsonl`,
  `rejects.jsonl`, `manifest.json`).

`backends` and `runner` are imported on use (the package itself imports `problems`, `guideline`
and `parse`).
"""

from datamodules.synthesis.guideline import GUIDELINE_VERSION, Guideline
from datamodules.synthesis.parse import ParseResult, Passage, ValidationConfig, parse_passage
from datamodules.synthesis.problems import (
    Fact,
    Problem,
    ProblemGroup,
    SamplerConfig,
    TaskSource,
    default_tasks,
    draw_groups,
    read_task_pools,
)

__all__ = [
    "GUIDELINE_VERSION",
    "Fact",
    "Guideline",
    "ParseResult",
    "Passage",
    "Problem",
    "ProblemGroup",
    "SamplerConfig",
    "TaskSource",
    "ValidationConfig",
    "default_tasks",
    "draw_groups",
    "parse_passage",
    "read_task_pools",
]
