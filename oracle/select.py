"""Oracles over a score matrix: per-sequence rules and the exact budgeted knapsack.

Inputs are plain arrays: scores [N, K] (0-100), costs [K] (layers per
generated token, integers), and the full model's scores [N].  Candidate K-1 is
conventionally the full model itself, so every sequence has a feasible choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def cheapest_matching(scores: np.ndarray, costs: Sequence[int], full: np.ndarray, tolerance: float) -> np.ndarray:
    """Per sequence, the index of the cheapest candidate with score >= full - tolerance.

    Ties in cost go to the higher score, then the lower index.  Returns -1 for
    a sequence where nothing qualifies.
    """
    ok = scores >= (full[:, None] - tolerance - 1e-9)
    return _cheapest(ok, scores, costs)


def cheapest_identical(identical: np.ndarray, scores: np.ndarray, costs: Sequence[int]) -> np.ndarray:
    """Per sequence, the index of the cheapest candidate whose output equals the full model's (-1 if none)."""
    return _cheapest(identical, scores, costs)


def _cheapest(ok: np.ndarray, scores: np.ndarray, costs: Sequence[int]) -> np.ndarray:
    order = sorted(range(len(costs)), key=lambda k: costs[k])
    choice = np.full(len(ok), -1, dtype=int)
    for i in range(len(ok)):
        best = None
        for k in order:
            if not ok[i, k]:
                continue
            if best is not None and costs[k] > costs[best]:
                break
            if best is None or scores[i, k] > scores[i, best]:
                best = k
        if best is not None:
            choice[i] = best
    return choice


@dataclass(frozen=True)
class KnapsackCurve:
    """Best mean score for every total layer budget.

    `best_total[c]` is the largest total score reachable by choosing one
    candidate per sequence with summed cost <= c, for c in 0..N*max(cost)
    (-inf where infeasible).
    """

    best_total: np.ndarray
    num_sequences: int

    def mean_score_at(self, mean_layers: float) -> float:
        """Best mean score with mean layers per sequence <= mean_layers."""
        c = min(int(np.floor(mean_layers * self.num_sequences + 1e-9)), len(self.best_total) - 1)
        return float(self.best_total[c] / self.num_sequences) if c >= 0 else float("-inf")

    def points(self, max_layers: int, step: float = 0.25) -> list[tuple[float, float]]:
        """(mean layers, best mean score) on a grid of `step` layers, where feasible."""
        grid = (k * step for k in range(int(round(max_layers / step)) + 1))
        return [(m, y) for m in grid if np.isfinite(y := self.mean_score_at(m))]

    def layers_to_reach(self, target_mean: float) -> float | None:
        """Smallest mean layers per sequence whose best mean score >= target_mean (None if never)."""
        hits = np.nonzero(self.best_total >= target_mean * self.num_sequences - 1e-6)[0]
        return float(hits[0] / self.num_sequences) if len(hits) else None


def knapsack(scores: np.ndarray, costs: Sequence[int]) -> KnapsackCurve:
    """Exact multiple-choice knapsack by dynamic programming over integer total cost.

    O(N * K * N * max(cost)) work, vectorised over capacity.
    """
    n, k = scores.shape
    costs = [int(c) for c in costs]
    capacity = n * max(costs)
    dp = np.full(capacity + 1, -np.inf)
    dp[0] = 0.0
    for i in range(n):
        new = np.full_like(dp, -np.inf)
        for j in range(k):
            c = costs[j]
            np.maximum(new[c:], dp[: capacity + 1 - c] + scores[i, j], out=new[c:])
        dp = new
    return KnapsackCurve(np.maximum.accumulate(dp), n)


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of values [N]."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
