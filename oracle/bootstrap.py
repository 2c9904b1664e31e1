"""The package's one statistics module: bootstrap resampling over sequences, 95 % percentile intervals,
paired differences.  Used by the oracle's summary, split-reference and guarded oracles, curves and compare,
by the controller's evaluation and by the per-token study.

A resample draws sequence *positions*; `resample_rows` draws them in id order, so an interval never depends
on the order records were written in, and every statistic that uses the same rows is paired.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 200  # every bootstrap of the package unless a command's --resamples says otherwise
LOW, HIGH = 2.5, 97.5  # the percentile interval's ends


def bootstrap_rows(n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Resamples [resamples, n] of positions 0..n-1, drawn with replacement by numpy's default generator."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resample_rows(ids: Sequence[str], seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Resamples [resamples, N] of row indices into data in the order of `ids` (a record order).

    Positions are drawn in the id-sorted order and mapped back to rows, so a resample picks the same
    sequences, in the same order, whatever order the records were written in.
    """
    order = np.array(sorted(range(len(ids)), key=lambda i: ids[i]), dtype=int)
    return order[bootstrap_rows(len(ids), seed, resamples)]


def interval(samples) -> list[float] | None:
    """The 95 % percentile interval [low, high] of bootstrap samples; None samples (a resample on which the
    statistic does not exist) are left out, and with none left the interval is None."""
    kept = [v for v in samples if v is not None] if not isinstance(samples, np.ndarray) else samples
    if len(kept) == 0:
        return None
    return [float(np.percentile(kept, LOW)), float(np.percentile(kept, HIGH))]


def mean_ci(values: np.ndarray, rows: np.ndarray) -> list[float]:
    """Interval of the mean of values [N] over the resamples rows [R, N]."""
    return interval(values[rows].mean(axis=1))


def paired(estimate: float | None, samples_a: np.ndarray, samples_b: np.ndarray) -> dict:
    """A paired difference a - b: its estimate and the interval of the per-resample differences."""
    return {"estimate": estimate, "ci95": interval(np.asarray(samples_a) - np.asarray(samples_b))}


def paired_means(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> dict:
    """The mean of a - b over sequences [S] and its interval over the resamples rows [R, S] (the same rows
    for both: the difference is paired)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return {"estimate": float(diff.mean()), "ci95": mean_ci(diff, rows)}
