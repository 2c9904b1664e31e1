"""Statistics of the per-token study: the per-token oracle's mean layers, token-weighted means with
bootstrap intervals over sequences, the fixed-rate curve interpolated at equal compute, and paired
differences.

Every interval resamples *sequences* (rows `rows` [R, S] from `oracle.bootstrap.resample_rows`, shared by
every figure of one study, so differences are paired).  A token-weighted mean on a resample is the sum
over its sequences' tokens divided by their token count.

Shapes: T = tokens, M = members of a family, S = sequences, K = fixed-rate budgets, R = resamples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skiporacle.oracle.bootstrap import interval, mean_ci, paired_means


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


def tau_point(tau: float, gen, scores: np.ndarray, full_tokens: list, fixed: tuple, rows: np.ndarray, n: int,
              decided: np.ndarray, correct: np.ndarray, costs: Sequence[int], kv_fill: float = 0.0) -> dict:
    """One tau point of a generation `gen` (tokens, members, layers_run per sequence) with per-sequence scores [S]:
    cost and score with intervals, the fixed rate at equal compute, interpolated from fixed = (budgets [K],
    scores [K, S]), and the paired difference; and the probe's teacher-forced decisions at this tau,
    decided [T], against the per-token oracle labels correct [T, M] of members costing `costs` [M].
    `kv_fill`: a skipped layer's cost as a fraction of a layer (its key/value fill); the point is also compared
    with the fixed rate at its layers per token charged for that ("..._charged")."""
    fixed_layers, fixed_scores = fixed
    S = len(gen.tokens)
    layers = np.concatenate([np.asarray(r, dtype=np.float64) for r in gen.layers_run])
    sequence = np.concatenate([np.full(len(r), i) for i, r in enumerate(gen.layers_run)]).astype(np.int64)
    mean, span = token_weighted(layers, sequence, S, rows)
    at_equal, bracket = interpolate(fixed_layers, fixed_scores, mean)
    charged = mean + (n - mean) * kv_fill
    at_charged, _ = interpolate(fixed_layers, fixed_scores, charged)
    cheapest = cheapest_correct(correct)
    tf_layers = np.asarray(costs, dtype=np.float64)[decided]
    return {
        "tau": float(tau),
        "mean_layers_per_token": mean, "mean_layers_per_token_ci95": span, "percent_layers": 100 * mean / n,
        "percent_layers_ci95": [100 * v / n for v in span],
        "mean_layers_per_sequence": float(np.mean([np.mean(r) if len(r) else n for r in gen.layers_run])),
        "tokens": int(len(layers)),
        "mean_score": float(scores.mean()), "mean_score_ci95": mean_ci(scores, rows), "scores": scores.tolist(),
        "identical_to_full_sequences": int(sum(list(t) == list(f) for t, f in zip(gen.tokens, full_tokens))),
        "token_ids": [list(map(int, t)) for t in gen.tokens], "members": [list(map(int, m)) for m in gen.members],
        "fixed_rate_at_equal_compute": None if at_equal is None else
        {"mean_score": float(at_equal.mean()), "bracket_layers": bracket},
        "controller_minus_fixed_rate": None if at_equal is None else paired_means(scores, at_equal, rows),
        "mean_layers_per_token_charged": charged, "percent_layers_charged": 100 * charged / n,
        "controller_minus_fixed_rate_charged": None if at_charged is None else paired_means(scores, at_charged, rows),
        "beyond_budgets": None if at_equal is not None else
        f"{mean:.2f} layers per token lies outside the fixed-rate budgets {fixed_layers[0]:g}-{fixed_layers[-1]:g}",
        "teacher_forced": {
            "agreement_with_cheapest_correct": float((decided == cheapest).mean()),
            "decided_correct": float(correct[np.arange(len(decided)), decided].mean()),
            "mean_layers": float(tf_layers.mean()),
        },
    }


def verdict(points: list[dict]) -> str:
    """One line: does the paper's finding (no per-token point above the fixed-rate line) hold here?  A point counts
    as above only if it is above both at its layers per token and at them charged for the key/value fill."""
    compared = [p for p in points if p["controller_minus_fixed_rate"] is not None]
    if not compared:
        return "undecided: no tau point lies within the fixed-rate budgets' range"
    above = [p for p in compared if p["controller_minus_fixed_rate"]["ci95"][0] > 0
             and (p.get("controller_minus_fixed_rate_charged") or p["controller_minus_fixed_rate"])["ci95"][0] > 0]
    if above:
        spans = ", ".join(f"tau {p['tau']:g} [{_span(p['controller_minus_fixed_rate']['ci95'])}]" for p in above)
        return (f"does not hold: the per-token controller scores above the fixed-rate line at equal compute "
                f"beyond its paired interval at {spans}")
    below = sum(p["controller_minus_fixed_rate"]["ci95"][1] < 0 for p in compared)
    return (f"holds: no tau point is above the fixed-rate line beyond its paired interval "
            f"({len(compared)} compared, {below} below it beyond the interval)")


def _span(span) -> str:
    return f"{span[0]:+.2f}, {span[1]:+.2f}"
