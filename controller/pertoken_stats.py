"""Statistics of the per-token study: the per-token oracle's mean layers, token-weighted means with
bootstrap intervals over sequences, the fixed-rate curve interpolated at equal compute, and paired
differences.

Every interval resamples *sequences* (rows `rows` [R, S] from `oracle.stats.resample_rows`, shared by
every figure of one study, so differences are paired).  A token-weighted mean on a resample is the sum
over its sequences' tokens divided by their token count.

Shapes: T = tokens, M = members of a family, S = sequences, K = fixed-rate budgets, R = resamples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skiporacle.oracle.stats import interval, mean_ci


def cheapest_correct(correct: np.ndarray) -> np.ndarray:
    """Per token [T], the cheapest (largest-index) member whose token is the full model's; 0 when none is
    (members are nested, each dropping one more layer, so a larger index is cheaper)."""
    correct = np.asarray(correct, dtype=bool)
    last = correct.shape[1] - 1 - np.argmax(correct[:, ::-1], axis=1)
    return np.where(correct.any(axis=1), last, 0).astype(np.int64)


def per_sequence_sums(values: np.ndarray, sequence: np.ndarray, sequences: int) -> np.ndarray:
    """Sum of values [T] over each sequence's tokens -> [S]."""
    return np.bincount(np.asarray(sequence), weights=np.asarray(values, dtype=np.float64), minlength=sequences)


def token_weighted(values: np.ndarray, sequence: np.ndarray, sequences: int, rows: np.ndarray) -> tuple[float, list[float]]:
    """(token-weighted mean of values [T], its 95 % interval over the sequence resamples rows [R, S])."""
    sums = per_sequence_sums(values, sequence, sequences)
    counts = np.bincount(np.asarray(sequence), minlength=sequences).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = sums[rows].sum(axis=1) / counts[rows].sum(axis=1)
    return float(sums.sum() / counts.sum()), interval(samples[np.isfinite(samples)])


def oracle_block(correct: np.ndarray, sequence: np.ndarray, sequences: int, costs: Sequence[int],
                 num_layers: int, rows: np.ndarray) -> dict:
    """The per-token oracle of one family: mean layers per token of each token's cheapest correct member
    (member 0, all layers, when nothing cheaper is correct), as layers and % of layers, with intervals."""
    chosen = cheapest_correct(correct)
    layers = np.asarray(costs, dtype=np.float64)[chosen]
    mean, span = token_weighted(layers, sequence, sequences, rows)
    return {"mean_layers": mean, "mean_layers_ci95": span, "percent_layers": 100 * mean / num_layers,
            "percent_layers_ci95": [100 * v / num_layers for v in span], "tokens": int(len(chosen)),
            "tokens_needing_all_layers": int((chosen == 0).sum()),
            "member_layers": [int(c) for c in costs]}


def interpolate(budgets: Sequence[float], scores: np.ndarray, x: float) -> tuple[np.ndarray | None, list]:
    """Per-sequence fixed-rate scores [S] at x layers per token, linear in layers between the two
    bracketing budgets, from scores [K, S] of sorted `budgets` [K]; (None, []) outside [min, max]."""
    b = np.asarray(budgets, dtype=np.float64)
    if x < b[0] - 1e-9 or x > b[-1] + 1e-9:
        return None, []
    hi = int(np.searchsorted(b, x - 1e-9))  # first budget >= x
    if abs(b[hi] - x) <= 1e-9:
        return np.asarray(scores[hi], dtype=np.float64), [float(b[hi])]
    lo = hi - 1
    w = (x - b[lo]) / (b[hi] - b[lo])
    return (1 - w) * np.asarray(scores[lo], dtype=np.float64) + w * np.asarray(scores[hi], dtype=np.float64), \
        [float(b[lo]), float(b[hi])]


def paired(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> dict:
    """Mean of a - b over sequences [S] and its 95 % interval over the same resamples rows [R, S]."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return {"estimate": float(diff.mean()), "ci95": mean_ci(diff, rows)}


def verdict(points: list[dict]) -> str:
    """One line: does the paper's finding (no per-token point above the fixed-rate line) hold here?"""
    compared = [p for p in points if p["controller_minus_fixed_rate"] is not None]
    if not compared:
        return "undecided: no tau point lies within the fixed-rate budgets' range"
    above = [p for p in compared if p["controller_minus_fixed_rate"]["ci95"][0] > 0]
    if above:
        spans = ", ".join(f"tau {p['tau']:g} [{_span(p['controller_minus_fixed_rate']['ci95'])}]" for p in above)
        return (f"does not hold: the per-token controller scores above the fixed-rate line at equal compute "
                f"beyond its paired interval at {spans}")
    below = sum(p["controller_minus_fixed_rate"]["ci95"][1] < 0 for p in compared)
    return (f"holds: no tau point is above the fixed-rate line beyond its paired interval "
            f"({len(compared)} compared, {below} below it beyond the interval)")


def _span(span) -> str:
    return f"{span[0]:+.2f}, {span[1]:+.2f}"
