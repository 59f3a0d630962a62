"""`python -m datamodules.fictional`: rewrite the rendered corpus files in the package directory.

Run after editing the tables or templates of `datamodules.fictional.corpus`; a test checks that the
checked-in files equal a fresh rendering. `retention.jsonl` is recorded from the model instead
(`python -m datamodules.fictional.record_baseline`).
"""

import logging

from datamodules.fictional.corpus import write_corpus

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_corpus()
