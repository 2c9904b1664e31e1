"""The controller's positive control (issue 23): when a prompt feature decides which candidate matches the full
model, the cross-validated controller keeps at least 90 % of the oracle's saving; with that feature shuffled
across sequences it keeps about none.  Without this, "the controller keeps 0 %" could be a broken controller."""

from __future__ import annotations

import numpy as np
import pytest

from skiporacle.controller.evaluate import EvalSettings, cross_validated, evaluate, fold_of

COSTS = [8, 16, 24, 30]  # layers per generated token; the full model last
N = 300


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 9], scores [N, 4]): feature 0 is the planted class c in 0..3; candidate k matches the full
    score exactly when k >= c and is 10 points below it otherwise; features 1..8 are noise."""
    rng = np.random.default_rng(seed)
    planted = rng.integers(0, len(COSTS), N)
    full = 40 + 10 * rng.random(N)
    scores = np.where(np.arange(len(COSTS))[None, :] >= planted[:, None], full[:, None], full[:, None] - 10.0)
    features = np.hstack([planted[:, None].astype(float), rng.normal(size=(N, 8))])
    return features, scores


def _saving_kept(features: np.ndarray, scores: np.ndarray) -> float | None:
    settings = EvalSettings(resamples=2)
    full = scores[:, -1:]
    match, delta = scores >= full - 1e-9, scores - full
    prob, pred = cross_validated(features, match, delta, 1, fold_of(N, settings.folds, settings.seed))
    return evaluate(prob, pred, np.ones_like(prob), scores, COSTS, settings)["saving_kept"]


def test_a_planted_feature_is_found_and_a_shuffled_one_is_not():
    features, scores = _planted()
    assert _saving_kept(features, scores) >= 0.9
    shuffled = features.copy()
    shuffled[:, 0] = np.random.default_rng(1).permutation(shuffled[:, 0])
    kept = _saving_kept(shuffled, scores)
    assert kept is None or kept <= 0.1


@pytest.mark.parametrize("seed", [2, 3])
def test_the_positive_control_holds_on_other_draws(seed):
    features, scores = _planted(seed)
    assert _saving_kept(features, scores) >= 0.9
