"""Summary statistics of a score array for manifests (JSON): finite values only, and how many were
left out, so that a manifest never holds `NaN` or `Infinity` and never hides that some did."""

from __future__ import annotations

import numpy as np


def finite_summary(values: np.ndarray | None) -> dict[str, float | int] | None:
    """`{"min", "max", "mean", "median"}` of the finite entries of `values`, plus `"non_finite"`
    (their count) when some are NaN (a skipped item's score) or infinite; None when there is no
    finite entry."""
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    summary: dict[str, float | int] = {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
    }
    if finite.size < values.size:
        summary["non_finite"] = int(values.size - finite.size)
    return summary
