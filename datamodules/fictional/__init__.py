"""A fictional corpus for a real instruct model: invented entities in news items and profiles.

Package data (JSONL, shipped with the package): `documents.jsonl` (32 articles about invented
people, companies, towns and products: the knowledge to adapt to), `qa.jsonl` (2 questions per
article, in SmolLM2-Instruct's chat format, scored by greedy exact match), `paraphrases.jsonl` (the
same facts in other words: held-out perplexity) and `retention.jsonl` (general questions the model
answers today, with its own recorded answers: what continual pre-training must not break).

`corpus` renders the first three deterministically; `record_baseline` records the fourth from the
model; `FictionalDataModule` trains on them (`fictional:<name>` source paths) with the GGUF model's
own tokenizer.
"""

from datamodules.fictional.corpus import (
    PACKAGE_DIR,
    RENDERED_FILES,
    SMOLLM2_SYSTEM,
    build_corpus,
    chat_prompt,
    write_corpus,
)
from datamodules.fictional.datamodule import (
    DEFAULT_GGUF_FILE,
    DEFAULT_MODEL_DIR,
    FICTIONAL_SCHEME,
    FICTIONAL_SETS,
    FictionalDataModule,
    fictional_path,
)
from datamodules.fictional.gguf_tokenizer import export_gguf_tokenizer

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL_DIR",
    "FICTIONAL_SCHEME",
    "FICTIONAL_SETS",
    "PACKAGE_DIR",
    "RENDERED_FILES",
    "SMOLLM2_SYSTEM",
    "FictionalDataModule",
    "build_corpus",
    "chat_prompt",
    "export_gguf_tokenizer",
    "fictional_path",
    "write_corpus",
]
