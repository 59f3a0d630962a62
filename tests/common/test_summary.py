"""`finite_summary`: statistics of the finite scores, with the non-finite ones counted, not hidden."""

from __future__ import annotations

import json

import numpy as np

from common.summary import finite_summary


def test_the_statistics_are_those_of_the_finite_values() -> None:
    assert finite_summary(np.array([3.0, 1.0, 2.0, 10.0])) == {
        "min": 1.0,
        "max": 10.0,
        "mean": 4.0,
        "median": 2.5,
    }


def test_nan_and_infinities_are_counted_and_never_reach_the_json() -> None:
    summary = finite_summary(np.array([1.0, np.nan, np.inf, 3.0, -np.inf]))
    assert summary == {"min": 1.0, "max": 3.0, "mean": 2.0, "median": 2.0, "non_finite": 3}
    assert "Infinity" not in json.dumps(summary) and "NaN" not in json.dumps(summary)


def test_no_finite_value_is_no_summary() -> None:
    assert finite_summary(None) is None
    assert finite_summary(np.zeros(0)) is None
    assert finite_summary(np.array([np.nan, np.inf])) is None
