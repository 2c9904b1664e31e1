"""The one statistics module (oracle/bootstrap.py): resamples, percentile intervals, paired differences."""

from __future__ import annotations

import numpy as np

from skiporacle.oracle.bootstrap import (RESAMPLES, bootstrap_rows, interval, mean_ci, paired, paired_means,
                                         resample_rows)


def test_rows_are_seeded_draws_with_replacement():
    rows = bootstrap_rows(5, seed=3)
    assert rows.shape == (RESAMPLES, 5) and rows.min() >= 0 and rows.max() <= 4
    assert (rows == bootstrap_rows(5, seed=3)).all() and not (rows == bootstrap_rows(5, seed=4)).all()
    assert (rows == np.random.default_rng(3).integers(0, 5, size=(RESAMPLES, 5))).all()  # numpy's own stream


def test_resamples_pick_the_same_sequences_whatever_the_record_order():
    ids = ["c", "a", "d", "b"]
    rows = resample_rows(ids, seed=1, resamples=50)
    shuffled = ["b", "d", "a", "c"]
    again = resample_rows(shuffled, seed=1, resamples=50)
    assert [[ids[i] for i in r] for r in rows] == [[shuffled[i] for i in r] for r in again]


def test_interval_is_the_percentile_interval_and_leaves_out_missing_samples():
    samples = np.arange(101, dtype=float)
    assert interval(samples) == [2.5, 97.5]
    assert interval([1.0, None, 3.0]) == interval([1.0, 3.0]) == [1.05, 2.95]
    assert interval([None, None]) is None and interval([]) is None


def test_mean_interval_brackets_the_mean_and_paired_differences_share_rows():
    values = np.array([0.0, 10.0, 20.0, 30.0, 100.0])
    rows = bootstrap_rows(len(values), seed=3)
    low, high = mean_ci(values, rows)
    assert 0.0 <= low <= values.mean() <= high <= 100.0
    assert mean_ci(np.array([7.0] * 5), rows) == [7.0, 7.0]
    shifted = values + 2.0
    assert paired_means(shifted, values, rows) == {"estimate": 2.0, "ci95": [2.0, 2.0]}  # paired: no spread
    got = paired(1.5, values[rows].mean(1) + 1.5, values[rows].mean(1))
    assert got["estimate"] == 1.5 and np.allclose(got["ci95"], [1.5, 1.5])
