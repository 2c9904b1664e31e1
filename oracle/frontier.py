"""The exact knapsack again, fast enough to rerun on every bootstrap resample.

`select.knapsack` runs every candidate of every sequence over every total
cost.  Here each sequence keeps only its Pareto frontier (candidates that
score strictly more than every cheaper one: a dominated candidate is never
needed for an optimum), a sequence with a one-point frontier only shifts the
totals, and the dynamic programme runs over *extra* cost above the cheapest
frontier points, capped where the caller knows the answer must lie.  Same
optimum as `select.knapsack` (sums may differ in the last bits; comparisons
keep its 1e-6 slack on totals).

A resample is a list of row indices (repeats allowed); costs are integer
layers per generated token, scores 0-100 with -inf for a forbidden candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from skiporacle.oracle.choose import FULL

SLACK = 1e-6  # on total scores, as KnapsackCurve.layers_to_reach


@dataclass(frozen=True)
class Frontiers:
    """Per sequence i: `columns[i]` (candidate indices, cost ascending, score strictly ascending), their
    `offsets[i]` (cost above the first, ints) and `gains[i]` (score above the first); `base_cost[i]`,
    `base_score[i]` of the first, and `match_cost[i]`, the cost of the cheapest one scoring >= `match[i]`."""

    columns: tuple[np.ndarray, ...]
    offsets: tuple[np.ndarray, ...]
    gains: tuple[np.ndarray, ...]
    base_cost: np.ndarray
    base_score: np.ndarray
    match_cost: np.ndarray


def frontiers(scores: np.ndarray, costs: Sequence[int], match: np.ndarray | None = None) -> Frontiers:
    """The Pareto frontier of every row of scores [N, K] (ties go to the cheaper, then lower-index candidate).

    `match` [N] (default: the last column, the full model) sets `match_cost`; every row needs a finite score.
    """
    costs = np.asarray(costs, dtype=int)
    match = scores[:, FULL] if match is None else match
    cols, offs, gains, base_cost, base_score, match_cost = [], [], [], [], [], []
    for i, row in enumerate(scores):
        order = sorted((k for k in range(len(costs)) if np.isfinite(row[k])), key=lambda k: (costs[k], -row[k], k))
        keep: list[int] = []
        for k in order:
            if not keep or row[k] > row[keep[-1]]:
                keep.append(k)
        if not keep:
            raise ValueError(f"row {i} has no finite score")
        kept = np.array(keep)
        cols.append(kept)
        offs.append(costs[kept] - costs[kept[0]])
        gains.append(row[kept] - row[kept[0]])
        base_cost.append(costs[kept[0]])
        base_score.append(row[kept[0]])
        hit = np.nonzero(row[kept] >= match[i] - 1e-9)[0]
        match_cost.append(costs[kept[hit[0]]] if len(hit) else costs[kept[-1]])
    return Frontiers(tuple(cols), tuple(offs), tuple(gains), np.array(base_cost), np.array(base_score),
                     np.array(match_cost))


def _dp(fr: Frontiers, rows: np.ndarray, cap: int | None, other: np.ndarray | None = None):
    """(best total extra score by extra cost [0..limit], summed `other` scores of each optimum or None).

    With `other` [N, K], the held-out total of the optimum found at each extra cost is carried along
    (a later option replaces an earlier one only when strictly better, so ties keep the cheaper option).
    """
    multi = [int(r) for r in rows if len(fr.offsets[r]) > 1]
    span = int(sum(fr.offsets[r][-1] for r in multi))
    limit = span if cap is None else max(0, min(span, cap))
    dp = np.full(limit + 1, -np.inf)
    dp[0] = 0.0
    new = np.full(limit + 1, -np.inf)  # both buffers stay -inf past the width written so far
    held = held_new = None
    if other is not None:
        held = np.zeros(limit + 1)
        held[0] = float(sum(other[r, fr.columns[r][0]] for r in rows))
        held_new = np.zeros(limit + 1)
    width = 0
    for r in multi:
        offs, gains = fr.offsets[r], fr.gains[r]
        grown = min(width + int(offs[-1]), limit)
        new[: grown + 1] = dp[: grown + 1]
        if held is not None:
            held_new[: grown + 1] = held[: grown + 1]
            extra = other[r, fr.columns[r]] - other[r, fr.columns[r][0]]
        for j in range(1, len(offs)):
            o = int(offs[j])
            if o > grown:
                break
            cand = dp[: grown + 1 - o] + gains[j]
            if held is not None:
                better = cand > new[o : grown + 1]
                np.copyto(held_new[o : grown + 1], held[: grown + 1 - o] + extra[j], where=better)
                np.copyto(new[o : grown + 1], cand, where=better)
            else:
                np.maximum(new[o : grown + 1], cand, out=new[o : grown + 1])
        dp, new = new, dp
        if held is not None:
            held, held_new = held_new, held
        width = grown
    return dp, held


def reach(fr: Frontiers, rows: np.ndarray, target_total: float, use_bound: bool = True) -> int | None:
    """Smallest total cost of `rows` whose best total score >= target_total - SLACK (None if none).

    With `use_bound`, the DP stops at the rows' summed `match_cost`, which is reached by construction
    when target_total is the rows' summed `match` scores (then it never returns None).
    """
    base_cost, base_score = int(fr.base_cost[rows].sum()), float(fr.base_score[rows].sum())
    cap = int(fr.match_cost[rows].sum()) - base_cost if use_bound else None
    dp, _ = _dp(fr, rows, cap)
    hits = np.nonzero(np.maximum.accumulate(dp) + base_score >= target_total - SLACK)[0]
    return base_cost + int(hits[0]) if len(hits) else None


def best_totals(fr: Frontiers, rows: np.ndarray, max_cost: int) -> np.ndarray:
    """best[c] for c in 0..len(rows)*max_cost: the largest total score with total cost <= c (-inf if none),
    as `select.knapsack(scores[rows], costs).best_total`."""
    base_cost, base_score = int(fr.base_cost[rows].sum()), float(fr.base_score[rows].sum())
    dp, _ = _dp(fr, rows, None)
    out = np.full(len(rows) * max_cost + 1, -np.inf)
    end = min(len(out), base_cost + len(dp))
    out[base_cost:end] = dp[: end - base_cost] + base_score
    return np.maximum.accumulate(out)


def chosen_totals(fr: Frontiers, rows: np.ndarray, other: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """For every total cost budget, score under `other` [N, K] of the allocation the knapsack chooses.

    Returns (base cost, best [C], held [C]): at total cost base + c, `best[c]` is the best total score
    with cost <= base + c and `held[c]` the summed `other` scores of that optimum's choices.  Among
    equally good totals the cheapest budget's optimum is kept.
    """
    base_cost, base_score = int(fr.base_cost[rows].sum()), float(fr.base_score[rows].sum())
    dp, held = _dp(fr, rows, None, other)
    best = np.maximum.accumulate(dp)
    improved = dp > np.concatenate(([-np.inf], best[:-1]))
    at = np.maximum.accumulate(np.where(improved, np.arange(len(dp)), 0))  # where each budget's optimum sits
    return base_cost, best + base_score, held[at]
