"""The summary's statistics of a run: the rule's and the knapsack's figures, token-weighted cost, with intervals.

One resample count and one seed (the run's) everywhere, with the resamples of `oracle/bootstrap.py`: every
statistic of one summary sees the same resamples, so comparisons on the same sequences (healed vs
training-free, held-out vs in-sample references) are paired.  Intervals are written as `[low, high]` under
the statistic's key plus `_ci95`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skiporacle.oracle.bootstrap import interval, mean_ci
from skiporacle.oracle.choose import FULL, knapsack, or_full
from skiporacle.oracle.frontier import frontiers, reach
from skiporacle.oracle.schema import SequenceRecord

def token_matrix(records: list[SequenceRecord]) -> np.ndarray:
    """Generated tokens [N, K] of every candidate's output, the full model last (columns as `RunTable`'s)."""
    return np.array([[c.tokens for c in r.columns] for r in records], dtype=float)


def layer_token_percents(chosen: np.ndarray, costs: Sequence[int], tokens: np.ndarray, n_layers: int) -> dict:
    """Token-weighted cost of one candidate column per sequence, chosen [N].

    `percent_layer_tokens`: layer-tokens of the chosen outputs (cost x tokens, summed) over their
    tokens x num_layers, i.e. the mean % of layers per generated token weighted by tokens.
    `percent_of_full_layer_tokens`: the same layer-tokens over the full model's tokens x num_layers,
    i.e. the compute relative to running the full model (longer outputs cost more).  None without tokens.
    """
    rows = np.arange(len(chosen))
    used = tokens[rows, chosen]
    layer_tokens = float((np.asarray(costs, dtype=float)[chosen] * used).sum())
    total, full_total = float(used.sum()), float(tokens[:, FULL].sum())
    return {"percent_layer_tokens": 100 * layer_tokens / (total * n_layers) if total else None,
            "percent_of_full_layer_tokens": 100 * layer_tokens / (full_total * n_layers) if full_total else None}


def rule_stats(choice: np.ndarray, scores: np.ndarray, costs: Sequence[int], n_layers: int, tolerance,
               tokens: np.ndarray | None = None, rows: np.ndarray | None = None) -> dict:
    """Mean layers, % and score of a per-sequence choice [N] (-1: the full model, the last column).

    With `tokens` the token-weighted cost is added; with `rows` (resamples) the intervals.
    `mean_percent_layers_per_sequence` repeats `mean_percent_layers` under the name that sets it
    apart from the token-weighted figure.
    """
    chosen = or_full(choice, costs)
    layers = np.asarray(costs, dtype=float)[chosen]
    picked = scores[np.arange(len(chosen)), chosen]
    stats = {
        "tolerance": tolerance,
        "mean_layers": float(layers.mean()),
        "mean_percent_layers": float(100 * layers.mean() / n_layers),
        "mean_score": float(picked.mean()),
        "skipping_sequences": int((layers < n_layers).sum()),
    }
    if tokens is None:
        return stats
    stats["mean_percent_layers_per_sequence"] = stats["mean_percent_layers"]
    stats.update(layer_token_percents(chosen, costs, tokens, n_layers))
    if rows is not None:
        stats["mean_layers_ci95"] = mean_ci(layers, rows)
        stats["mean_percent_layers_ci95"] = mean_ci(100 * layers / n_layers, rows)
        stats["mean_score_ci95"] = mean_ci(picked, rows)
        used = tokens[np.arange(len(chosen)), chosen]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = 100 * (layers * used)[rows].sum(axis=1) / (used[rows].sum(axis=1) * n_layers)
        stats["percent_layer_tokens_ci95"] = interval(ratio) if np.isfinite(ratio).all() else None
    return stats


def reach_samples(scores: np.ndarray, costs: Sequence[int], rows: np.ndarray, n_layers: int) -> np.ndarray:
    """Knapsack layers at full quality (mean layers per sequence) on each resample [R].

    Each resample has its own target, the mean of its full-model scores (the last column, never -inf),
    which the knapsack always reaches: choosing the full model everywhere does.
    """
    fr = frontiers(scores, costs)
    samples = []
    for r in rows:
        target = float(scores[r, -1].sum())
        hit = reach(fr, r, target)
        samples.append((hit if hit is not None else reach(fr, r, target, use_bound=False)) / len(r))
    return np.array(samples, dtype=float)


def knapsack_stats(scores: np.ndarray, costs: Sequence[int], rows: np.ndarray, n_layers: int) -> tuple[dict, np.ndarray]:
    """(block, per-resample % of layers at full quality) of the knapsack on scores [N, K] (full model last).

    The block has `layers_at_full_quality`, `percent_layers_at_full_quality` with `_ci95`, and
    `gain_at_full_compute`: the knapsack's mean with every layer allowed minus the full model's mean
    (each sequence's best candidate; >= 0 in-sample by construction), with its interval.
    """
    curve = knapsack(scores, costs)
    point = curve.layers_to_reach(float(scores[:, FULL].mean()))
    samples = reach_samples(scores, costs, rows, n_layers)
    percents = 100 * samples / n_layers
    gain = np.max(scores, axis=1) - scores[:, FULL]
    return {
        "layers_at_full_quality": point,
        "percent_layers_at_full_quality": None if point is None else 100 * point / n_layers,
        "layers_at_full_quality_ci95": interval(samples),
        "percent_layers_at_full_quality_ci95": interval(percents),
        "gain_at_full_compute": float(gain.mean()),
        "gain_at_full_compute_ci95": mean_ci(gain, rows),
    }, percents
