"""Decisions from predictions: the threshold rule and the budgeted knapsack.

Inputs are arrays over N sequences and K candidates; `costs` [K] are layers
per generated token (integers); the last candidate is the full model, always
allowed, so every sequence has a choice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skiporacle.oracle.choose import FULL


def threshold_choices(prob: np.ndarray, costs: Sequence[int], tau: float) -> np.ndarray:
    """Per sequence, the cheapest candidate with predicted probability >= tau (ties: higher probability).

    The full model (last column) is always allowed.  Returns indices [N].
    """
    allowed = prob >= tau - 1e-12
    allowed[:, FULL] = True
    cost = np.asarray(costs, dtype=float)
    key = np.where(allowed, cost[None, :] - 1e-6 * prob, np.inf)  # cheapest, then most probable
    return key.argmin(1)


def knapsack_choices(values: np.ndarray, costs: Sequence[int], totals: Sequence[int]) -> np.ndarray:
    """One candidate per sequence maximising the summed `values` [N, K] with summed cost <= each total.

    Exact dynamic programme over integer total cost (the oracle's knapsack,
    with the choices kept).  Returns choices [len(totals), N]; a total below
    N * min(cost) gets the cheapest candidate everywhere.
    """
    n, k = values.shape
    costs = [int(c) for c in costs]
    capacity = max(int(max(totals)), 0)
    best = np.zeros(capacity + 1)  # best[c]: best sum so far with cost <= c
    arg = np.zeros((n, capacity + 1), dtype=np.int16)
    for i in range(n):
        new = np.full(capacity + 1, -np.inf)
        for j in range(k):
            c = costs[j]
            if c > capacity:
                continue
            candidate = best[: capacity + 1 - c] + values[i, j]
            better = candidate > new[c:]
            new[c:][better] = candidate[better]
            arg[i, c:][better] = j
        best = new
    cheapest = int(np.argmin(costs))
    out = np.full((len(totals), n), cheapest, dtype=int)
    for t, total in enumerate(totals):
        c = int(total)
        if c < 0 or not np.isfinite(best[min(c, capacity)]):
            continue
        for i in range(n - 1, -1, -1):
            j = int(arg[i, c])
            out[t, i] = j
            c -= costs[j]
    return out
