"""Oracles over a score matrix: per-sequence rules and the exact budgeted knapsack.

Inputs are plain arrays: scores [N, K] (0-100), costs [K] (layers per
generated token, integers), and the full model's scores [N].  Column `FULL`
(the last) is the full model itself, so every sequence has a feasible choice:
this module is the one place that says so (`RunTable` builds tables that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


FULL = -1  # the full model's column in every [N, K] table of a run


def or_full(choice: np.ndarray, costs: Sequence[int]) -> np.ndarray:
    """Chosen columns, with the full model's where nothing was chosen (-1)."""
    return np.where(choice >= 0, choice, len(costs) + FULL)


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
    """Exact multiple-choice knapsack: the best total score for every total cost budget.

    Bit for bit the same `best_total` as the plain dynamic programme (`_knapsack_reference`), much faster:

    - Per sequence only its upper-left frontier is kept: for each distinct cost the best candidate, and of
      those only the ones scoring strictly more than every cheaper one.  A dropped candidate is never
      needed, since swapping it for the one that dominates it costs no more and scores no less.
    - The programme runs over "total cost <= c" (a non-decreasing array) instead of "total cost == c", and
      only over the window [sum of cheapest frontier costs, sum of dearest frontier costs] of the rows
      done so far: below it every total is -inf, above it the array is constant.
    - Scores are added sequence by sequence in row order, starting from 0.0, as the plain programme adds
      them.  Rounding to nearest is monotone (a <= b gives a + s <= b + s), so the maximum over
      allocations of these row-order sums is the same float either way.

    Work: N * (summed frontier span) * (frontier size), memory O(N * max cost).  Rows with a NaN score
    (or +inf, or a negative cost) take the plain programme, which decides how those propagate.
    """
    scores = np.asarray(scores, dtype=float)
    n, k = scores.shape
    costs = [int(c) for c in costs]
    if n == 0 or k == 0 or np.isnan(scores).any() or np.isposinf(scores).any() or min(costs) < 0:
        return _knapsack_reference(scores, costs)
    capacity = n * max(costs)
    cost_arr = np.asarray(costs)
    levels = np.unique(cost_arr)  # ascending distinct costs
    best = np.full((n, len(levels)), -np.inf)  # best score per sequence and distinct cost
    for d, c in enumerate(levels):
        best[:, d] = scores[:, cost_arr == c].max(axis=1)
    cheaper = np.concatenate((np.full((n, 1), -np.inf), np.maximum.accumulate(best, axis=1)[:, :-1]), axis=1)
    keep = best > cheaper  # the frontier: strictly better than everything cheaper (never -inf)
    if not keep.any(axis=1).all():  # a sequence with no allowed candidate: nothing is feasible
        return KnapsackCurve(np.full(capacity + 1, -np.inf), n)

    dp, new, tmp = np.empty(capacity + 1), np.empty(capacity + 1), np.empty(capacity + 1)
    dp[0], lo, hi = 0.0, 0, 0  # dp[lo..hi] is the best total with cost <= c; -inf below lo, dp[hi] above hi
    for i in range(n):
        cols = np.flatnonzero(keep[i])
        cs, ss = levels[cols].tolist(), best[i, cols].tolist()
        width = hi - lo + 1
        src, top = dp[lo : hi + 1], dp[hi]
        new_lo, new_hi = lo + cs[0], hi + cs[-1]
        np.add(src, ss[0], out=new[new_lo : new_lo + width])
        new[new_lo + width : new_hi + 1] = top + ss[0]
        for c, s in zip(cs[1:], ss[1:]):
            a = lo + c
            np.maximum(new[a : a + width], np.add(src, s, out=tmp[:width]), out=new[a : a + width])
            if a + width <= new_hi:  # past hi + c the option adds s to the constant top
                np.maximum(new[a + width : new_hi + 1], top + s, out=new[a + width : new_hi + 1])
        dp, new = new, dp
        lo, hi = new_lo, new_hi
    dp[:lo] = -np.inf
    dp[hi + 1 :] = dp[hi]
    return KnapsackCurve(dp, n)


def _knapsack_reference(scores: np.ndarray, costs: Sequence[int]) -> KnapsackCurve:
    """The plain dynamic programme over integer total cost, kept as the reference for `knapsack`.

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
