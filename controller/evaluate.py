"""Honest evaluation of a controller: every sequence is decided by a controller that never saw it.

`cross_validated` trains one controller per fold on the other folds' rows and
predicts the held-out fold.  `evaluate` turns predictions into decision
curves (threshold and budget modes), scores them with the *true* scores of
the run, and puts the oracle and the baselines beside them on the same
sequences, with 95 % bootstrap intervals over sequences (paired where two
figures share sequences).

Units: layers are % of the model's decoder layers per generated token,
averaged over sequences; scores are the run's metric (0-100).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from skiporacle.controller.decide import knapsack_choices, threshold_choices
from skiporacle.controller.classifier import Fitted, fit
from skiporacle.oracle.choose import FULL, knapsack
from skiporacle.oracle.bootstrap import RESAMPLES, bootstrap_rows, interval

TAUS = tuple(np.round(np.linspace(0.0, 1.0, 51), 4))
SHUFFLES = 20  # permutations averaged by the shuffled-oracle baseline
STEP = 0.25  # layers between budget-mode points


@dataclass(frozen=True)
class EvalSettings:
    tolerance: float = 0.0  # a candidate matches if its score >= full - tolerance
    folds: int = 5
    seed: int = 0
    resamples: int = RESAMPLES


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index [N] of each row (rows are sorted by id): a seeded, balanced assignment."""
    return np.random.default_rng(seed).permutation(np.arange(n) % folds)


def cross_validated(features: np.ndarray, match: np.ndarray, delta: np.ndarray, scalar_columns: int,
                    folds: np.ndarray, fit_fn: Callable[..., Fitted] = fit) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions (probability [N, K], delta [N, K]): row i comes from a controller trained without it."""
    prob, pred = np.zeros(match.shape), np.zeros(match.shape)
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        assert not (test & train).any()
        fitted = fit_fn(features[train], match[train], delta[train], scalar_columns)
        prob[test], pred[test] = fitted.predict(features[test])
    return prob, pred


@dataclass(frozen=True)
class Curve:
    """Decisions at several operating points: per point, per sequence, the layers used and the true score."""

    knobs: list[float]  # tau (threshold mode) or target mean layers (budget mode)
    layers: np.ndarray  # [P, N]
    scores: np.ndarray  # [P, N]


def decision_curve(choices: np.ndarray, knobs, costs, scores: np.ndarray) -> Curve:
    """A curve from choices [P, N] (candidate indices)."""
    cost = np.asarray(costs, dtype=float)
    return Curve(list(knobs), cost[choices], np.take_along_axis(scores, choices.T, axis=1).T)


def threshold_curve(prob: np.ndarray, costs, scores: np.ndarray) -> Curve:
    return decision_curve(np.stack([threshold_choices(prob, costs, t) for t in TAUS]), TAUS, costs, scores)


def budget_curve(values: np.ndarray, costs, scores: np.ndarray) -> Curve:
    n = len(values)
    budgets = np.arange(min(costs), max(costs) + 1e-9, STEP)
    return decision_curve(knapsack_choices(values, costs, [int(np.floor(b * n + 1e-9)) for b in budgets]),
                          budgets, costs, scores)


def reach(curve: Curve, full: np.ndarray, rows: np.ndarray | None = None) -> float | None:
    """Smallest mean layers among the curve's points whose mean score >= the full model's (None if none)."""
    rows = np.arange(curve.layers.shape[1]) if rows is None else rows
    layers, scores = curve.layers[:, rows].mean(1), curve.scores[:, rows].mean(1)
    ok = scores >= full[rows].mean() - 1e-9
    return float(layers[ok].min()) if ok.any() else None


def oracle_reach(scores: np.ndarray, costs, rows: np.ndarray | None = None) -> float | None:
    """The knapsack oracle's layers at full quality (in-sample: chosen and scored with the same scores)."""
    sub = scores if rows is None else scores[rows]
    return knapsack(sub, costs).layers_to_reach(float(sub[:, FULL].mean()))


def shuffled_oracle(scores: np.ndarray, costs, seed: int) -> Curve:
    """The in-sample knapsack's choices at each budget, given to permuted sequences; true scores averaged."""
    n = len(scores)
    budgets = np.arange(min(costs), max(costs) + 1e-9, STEP)
    choices = knapsack_choices(scores, costs, [int(np.floor(b * n + 1e-9)) for b in budgets])  # [P, N]
    rng = np.random.default_rng(seed)
    cost = np.asarray(costs, dtype=float)
    layers = np.zeros(choices.shape)
    got = np.zeros(choices.shape)
    for _ in range(SHUFFLES):
        perm = rng.permutation(n)
        moved = choices[:, perm]  # sequence i gets the choice made for sequence perm[i]
        layers += cost[moved]
        got += np.take_along_axis(scores, moved.T, axis=1).T
    return Curve(list(budgets), layers / SHUFFLES, got / SHUFFLES)


def static_reach(scores: np.ndarray, costs, rows: np.ndarray | None = None) -> float:
    """Layers of the cheapest single candidate whose mean score over `rows` reaches the full model's
    (the same candidate for every sequence; chosen in-sample, like the oracle)."""
    sub = scores if rows is None else scores[rows]
    means = sub.mean(0)
    return float(min(c for c, m in zip(costs, means) if m >= means[-1] - 1e-9))


def percent(value: float | None, num_layers: int) -> float | None:
    return None if value is None else 100 * value / num_layers


def evaluate(prob: np.ndarray, pred: np.ndarray, length_prob: np.ndarray, scores: np.ndarray, costs: list[int],
             settings: EvalSettings) -> dict:
    """The controller's figures against the oracle and the baselines, all on `scores` [N, K] (true scores)."""
    n, num_layers = len(scores), costs[FULL]
    full = scores[:, FULL]
    curves = {"threshold": threshold_curve(prob, costs, scores), "budget": budget_curve(pred, costs, scores),
              "prompt_length": threshold_curve(length_prob, costs, scores),
              "shuffled_oracle": shuffled_oracle(scores, costs, settings.seed)}
    oracle = oracle_reach(scores, costs)
    controller = reach(curves["threshold"], full)
    rng = np.random.default_rng(settings.seed)
    boot = {k: [] for k in ("controller", "budget", "oracle", "saving_kept", "difference", "prompt_length",
                                 "static", "controller_minus_static")}
    not_reaching = {"controller": 0, "budget": 0, "prompt_length": 0}
    for _ in range(settings.resamples):
        rows = rng.integers(0, n, n)
        # A resample on which a curve never reaches full quality counts as needing every layer (censored).
        reached = {name: reach(curves["threshold" if name == "controller" else name], full, rows) for name in not_reaching}
        for name, value in reached.items():
            not_reaching[name] += value is None
        c, b, p = (num_layers if reached[k] is None else reached[k] for k in ("controller", "budget", "prompt_length"))
        o, st = oracle_reach(scores, costs, rows), static_reach(scores, costs, rows)
        boot["controller"].append(percent(c, num_layers))
        boot["budget"].append(percent(b, num_layers))
        boot["prompt_length"].append(percent(p, num_layers))
        boot["static"].append(percent(st, num_layers))
        boot["controller_minus_static"].append(100 * (c - st) / num_layers)
        boot["oracle"].append(percent(o, num_layers))
        boot["saving_kept"].append(_kept(c, o, num_layers))
        boot["difference"].append(None if o is None else 100 * (c - o) / num_layers)
    static = [{"candidate": k, "percent_layers": 100 * costs[k] / num_layers, "mean_score": float(scores[:, k].mean())}
              for k in range(len(costs))]
    at = controller if controller is not None else num_layers
    best_static = max((s for s in static if s["percent_layers"] <= 100 * at / num_layers + 1e-9),
                      key=lambda s: s["mean_score"])
    return {
        "sequences": n,
        "full_mean_score": float(full.mean()),
        "layers_at_full_quality_percent": percent(controller, num_layers),
        "oracle_layers_at_full_quality_percent": percent(oracle, num_layers),
        "saving_kept": _kept(controller, oracle, num_layers),
        "intervals": {
            "layers_at_full_quality_percent": interval(boot["controller"]),
            "oracle_layers_at_full_quality_percent": interval(boot["oracle"]),
            "saving_kept": interval(boot["saving_kept"]),
            "controller_minus_oracle_percent_paired": interval(boot["difference"]),
            "resamples_not_reaching": not_reaching,
        },
        "budget_mode": {"layers_at_full_quality_percent": percent(reach(curves["budget"], full), num_layers),
                        "interval": interval(boot["budget"])},
        "baselines": {
            "best_static_at_controller_budget": best_static,
            "static_layers_at_full_quality_percent": percent(static_reach(scores, costs), num_layers),
            "static_interval": interval(boot["static"]),
            "controller_minus_static_percent_paired": interval(boot["controller_minus_static"]),
            "static": static,
            "shuffled_oracle_layers_at_full_quality_percent": percent(reach(curves["shuffled_oracle"], full), num_layers),
            "prompt_length_layers_at_full_quality_percent": percent(reach(curves["prompt_length"], full), num_layers),
            "prompt_length_interval": interval(boot["prompt_length"]),
        },
        "curves": {name: _points(curve, num_layers, settings) for name, curve in curves.items()},
    }


def _kept(controller: float | None, oracle: float | None, num_layers: int) -> float | None:
    """(100 - controller %) / (100 - oracle %): the share of the oracle's saving the controller keeps."""
    if controller is None or oracle is None or oracle >= num_layers - 1e-9:
        return None
    return (num_layers - controller) / (num_layers - oracle)


def _points(curve: Curve, num_layers: int, settings: EvalSettings) -> list[dict]:
    """Distinct operating points with the bootstrap interval of their mean score."""
    n = curve.layers.shape[1]
    rows = bootstrap_rows(n, settings.seed, settings.resamples)
    seen, out = set(), []
    for p, knob in enumerate(curve.knobs):
        layers, score = float(curve.layers[p].mean()), float(curve.scores[p].mean())
        if (round(layers, 9), round(score, 9)) in seen:
            continue
        seen.add((round(layers, 9), round(score, 9)))
        means = curve.scores[p][rows].mean(1)
        low, high = interval(means)
        out.append({"knob": float(knob), "percent_layers": 100 * layers / num_layers, "mean_score": score,
                    "low": low, "high": high})
    return out
