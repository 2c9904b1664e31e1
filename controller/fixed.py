"""A fixed operating point: the threshold chosen on training rows only, and how it scores.

The headline "layers at full quality" takes the best point of a tau sweep on the evaluated rows,
a mild selection on them.  Its fair counterpart fixes tau before seeing those rows: by
cross-validation inside each fold's training rows (nested), or on the training run.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from skiporacle.controller.decide import threshold_choices
from skiporacle.controller.evaluate import TAUS, EvalSettings, cross_validated, fold_of, reach, threshold_curve
from skiporacle.oracle.bootstrap import bootstrap_rows, interval
from skiporacle.controller.classifier import Fitted, fit
from skiporacle.oracle.choose import FULL


def choose_tau(prob: np.ndarray, costs, scores: np.ndarray) -> float:
    """The smallest tau of TAUS whose threshold decisions reach the full model's mean score on these rows
    at the least mean layers (1.0, full model only, if none does).  Call it on training rows only."""
    curve = threshold_curve(prob, costs, scores)
    best = reach(curve, scores[:, FULL])
    means = curve.layers.mean(1)
    hits = [t for t, m in zip(TAUS, means) if best is not None and abs(m - best) < 1e-9]
    return float(min(hits)) if hits else 1.0


def nested_choices(features: np.ndarray, match: np.ndarray, delta: np.ndarray, scalar_columns: int,
                   folds: np.ndarray, costs, scores: np.ndarray, seed: int, fit_fn: Callable[..., Fitted] = fit) -> np.ndarray:
    """Threshold decisions [N] whose tau is chosen inside each outer fold's training rows (inner
    cross-validation), so neither the controller nor its operating point has seen the row it decides."""
    choices = np.zeros(len(features), dtype=int)
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        inner = fold_of(int(train.sum()), len(np.unique(folds)), seed)
        prob_in, _ = cross_validated(features[train], match[train], delta[train], scalar_columns, inner, fit_fn)
        tau = choose_tau(prob_in, costs, scores[train])
        prob, _ = fit_fn(features[train], match[train], delta[train], scalar_columns).predict(features[test])
        choices[test] = threshold_choices(prob, costs, tau)
    return choices


def fair_point(choices: np.ndarray, costs, scores: np.ndarray, settings: EvalSettings) -> dict:
    """One operating point fixed before looking at the rows it is scored on: mean layers and score, with
    the paired difference to the full model (95 % bootstrap intervals over sequences)."""
    n, num_layers = len(scores), costs[FULL]
    layers = np.asarray(costs, dtype=float)[choices]
    got = scores[np.arange(n), choices]
    lag = got - scores[:, FULL]
    rows = bootstrap_rows(n, settings.seed, settings.resamples)
    return {"percent_layers": float(100 * layers.mean() / num_layers),
            "percent_layers_ci95": interval(100 * layers[rows].mean(1) / num_layers),
            "mean_score": float(got.mean()), "mean_score_minus_full": float(lag.mean()),
            "mean_score_minus_full_ci95": interval(lag[rows].mean(1)),
            "skipping_sequences": int((layers < num_layers).sum())}
