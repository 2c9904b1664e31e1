"""The summary's statistics (oracle/stats.py) against direct computations on hand-made tables, and the
controller's label arrays (controller/labels.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from skiporacle.controller.labels import Labels, load_labels
from skiporacle.data.errors import BadInput
from skiporacle.oracle.bootstrap import resample_rows
from skiporacle.oracle.stats import knapsack_stats, layer_token_percents, reach_samples, rule_stats

COSTS = [2, 4, 6]  # the full model (6 layers) last
SCORES = np.array([[10.0, 20.0, 20.0], [30.0, 10.0, 25.0], [0.0, 5.0, 40.0], [50.0, 50.0, 50.0]])
TOKENS = np.array([[4, 8, 8], [2, 3, 5], [10, 10, 1], [6, 6, 6]], dtype=float)


def test_token_weighted_cost_by_hand():
    chosen = np.array([1, 0, 2, 0])
    got = layer_token_percents(chosen, COSTS, TOKENS, 6)
    layer_tokens = 4 * 8 + 2 * 2 + 6 * 1 + 2 * 6
    assert got["percent_layer_tokens"] == pytest.approx(100 * layer_tokens / ((8 + 2 + 1 + 6) * 6))
    assert got["percent_of_full_layer_tokens"] == pytest.approx(100 * layer_tokens / ((8 + 5 + 1 + 6) * 6))


def test_rule_stats_read_the_full_model_where_nothing_was_chosen():
    choice = np.array([1, -1, -1, 0])  # -1: the full model
    got = rule_stats(choice, SCORES, COSTS, 6, 0.0, TOKENS, resample_rows(list("abcd"), 0, 50))
    assert got["mean_layers"] == pytest.approx((4 + 6 + 6 + 2) / 4)
    assert got["mean_score"] == pytest.approx((20 + 25 + 40 + 50) / 4)
    assert got["skipping_sequences"] == 2
    low, high = got["mean_score_ci95"]
    assert low <= got["mean_score"] <= high


def _brute_knapsack(scores, costs, rows):
    """Least mean layers over every assignment of one column per sequence that reaches the full model's mean."""
    best = None
    for pick in itertools.product(range(len(costs)), repeat=len(rows)):
        total = sum(scores[r, k] for r, k in zip(rows, pick))
        if total >= scores[rows, -1].sum() - 1e-9:
            layers = sum(costs[k] for k in pick) / len(rows)
            best = layers if best is None else min(best, layers)
    return best


def test_knapsack_at_full_quality_equals_brute_force_on_each_resample():
    rows = resample_rows(list("abcd"), 3, 20)
    samples = reach_samples(SCORES, COSTS, rows, 6)
    assert samples == pytest.approx([_brute_knapsack(SCORES, COSTS, r) for r in rows])
    block, percents = knapsack_stats(SCORES, COSTS, rows, 6)
    assert block["layers_at_full_quality"] == pytest.approx(_brute_knapsack(SCORES, COSTS, np.arange(4)))
    assert percents == pytest.approx(100 * samples / 6)
    assert block["gain_at_full_compute"] == pytest.approx(np.mean([0, 5, 0, 0]))


def _labels(plausible=None) -> Labels:
    return Labels("run", {}, ["a", "b"], ["p", "q"], [["x", [0]], ["all", [0, 1]]], [1, 2],
                  np.array([[9.0, 10.0], [7.0, 10.0]]), np.ones((2, 2)), plausible)


def test_label_matches_under_a_tolerance_and_the_guard():
    labels = _labels()
    assert labels.num_layers == 2 and labels.full.tolist() == [10.0, 10.0]
    assert labels.matches(1.0, guarded=False).tolist() == [[True, True], [False, True]]
    assert labels.matches(0.0, guarded=False).tolist() == [[False, True], [False, True]]
    guarded = _labels(np.array([[False, True], [True, True]]))
    assert guarded.matches(3.0, guarded=True).tolist() == [[False, True], [True, True]]
    assert guarded.matches(3.0, guarded=False).tolist() == [[True, True], [True, True]]


def test_labels_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(BadInput, match="is not a skiporacle run folder"):
        load_labels(tmp_path)
