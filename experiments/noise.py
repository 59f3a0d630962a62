"""Silence the known, harmless messages a first run prints, each matched by its exact text.

| message | why it is noise here |
| --- | --- |
| Lightning's "number of training batches (N) is smaller than the logging interval" | runs are budgeted in optimizer steps across many short epochs: logging is by global step and happens |
| Lightning's "💡 Tip: … litlogger / litmodels" | advertising, not about the run |
| bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" | only 4-bit CPU inference would use that kernel |
| torch's "`isinstance(treespec, LeafSpec)` is deprecated" (from Lightning's `_pytree`) | inside Lightning; nothing to change on our side |

Nothing else is filtered: every other warning still shows.
"""

from __future__ import annotations

import logging
import warnings

_WARNINGS = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
_LOG_MESSAGES = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud",),
    "bitsandbytes.backends.cpu.ops": (
        "Failed to load CPU gemm_4bit_forward from kernels-community",
    ),
}


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_known_noise() -> None:
    """Install the filters (idempotent)."""
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, prefixes in _LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
