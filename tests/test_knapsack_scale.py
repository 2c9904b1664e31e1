"""The knapsack at paper scale: `select.knapsack` (frontier programme over a moving window) must give
bit for bit the numbers of the plain programme (`select._knapsack_reference`), and both those of brute
force over every allocation.  Speed is measured by bench/knapsack_speed.py, never here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from skiporacle.oracle.choose import KnapsackCurve, _knapsack_reference, knapsack

GRID = [8, 12, 16, 20, 24, 26, 28, 29] * 3 + [30]  # the default budgets over three spaces, full model last


def brute_best_totals(scores: np.ndarray, costs: list[int]) -> np.ndarray:
    """best[c] = max total over all allocations with total cost <= c, each total summed in row order."""
    n, k = scores.shape
    best = np.full(n * max(costs) + 1, -np.inf)
    for choice in itertools.product(range(k), repeat=n):
        cost = sum(costs[j] for j in choice)
        total = 0.0
        for i, j in enumerate(choice):
            total += scores[i, j]
        best[cost:] = np.maximum(best[cost:], total)
    return best


def random_instance(rng: np.random.Generator, n: int, k: int, max_cost: int, kind: int):
    """Scores [n, k] and costs [k]: kind 0 plain, 1 ties (a coarse score grid), 2 forbidden (-inf)
    candidates, 3 duplicate costs with ties and forbidden candidates together."""
    costs = [int(c) for c in rng.integers(0 if kind == 3 else 1, max_cost + 1, size=k)]
    if kind == 3:
        costs = [int(c) for c in rng.choice(costs[: max(1, k // 2)], size=k)]  # few distinct costs
    scores = rng.uniform(0, 100, size=(n, k))
    if kind in (1, 3):
        scores = np.round(scores / 25) * 25
    if kind in (2, 3):
        scores[rng.uniform(size=(n, k)) < 0.4] = -np.inf
        rescue = np.isneginf(scores[:, -1]) & (rng.uniform(size=n) < 0.9)  # mostly a feasible full model
        scores[:, -1] = np.where(rescue, rng.uniform(0, 100, size=n), scores[:, -1])
    return scores, costs


def assert_same_curve(got: KnapsackCurve, ref: KnapsackCurve, scores: np.ndarray, max_layers: int):
    """Every public number of the two curves is the same."""
    n = ref.num_sequences
    assert got.num_sequences == n
    assert got.best_total.shape == ref.best_total.shape
    np.testing.assert_array_equal(got.best_total, ref.best_total)  # bit for bit
    assert got.points(max_layers) == ref.points(max_layers)
    assert got.points(max_layers, step=1 / n) == ref.points(max_layers, step=1 / n)
    for c in range(len(ref.best_total)):
        assert got.mean_score_at(c / n) == ref.mean_score_at(c / n)
    finite = ref.best_total[np.isfinite(ref.best_total)]
    targets = [float(scores[:, -1].mean()), float(scores.max(axis=1).mean()), 0.0, 1e9]
    targets += [float(t) / n for t in finite[:: max(1, len(finite) // 20)]]
    targets += [float(t) / n - 1e-7 for t in finite[:5]] + [float(t) / n + 1e-7 for t in finite[:5]]
    for t in targets:
        assert got.layers_to_reach(t) == ref.layers_to_reach(t)


@pytest.mark.parametrize("instance", range(40))
def test_knapsack_equals_brute_force_with_forbidden_ties_and_duplicates(instance):
    rng = np.random.default_rng(7000 + instance)
    n, k = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    scores, costs = random_instance(rng, n, k, 6, instance % 4)
    expected = brute_best_totals(scores, costs)
    for curve in (knapsack(scores, costs), _knapsack_reference(scores, costs)):
        np.testing.assert_array_equal(curve.best_total, expected)


@pytest.mark.parametrize("instance", range(60))
def test_knapsack_equals_reference_dp(instance):
    rng = np.random.default_rng(9000 + instance)
    n, k = int(rng.integers(1, 40)), int(rng.integers(1, 10))
    scores, costs = random_instance(rng, n, k, 9, instance % 4)
    assert_same_curve(knapsack(scores, costs), _knapsack_reference(scores, costs), scores, max(costs))


@pytest.mark.parametrize("kind", range(4))
def test_knapsack_equals_reference_dp_on_the_default_grid(kind):
    rng = np.random.default_rng(31 + kind)
    scores = rng.uniform(0, 100, size=(150, len(GRID)))
    if kind in (1, 3):
        scores = np.round(scores / 10) * 10
    if kind in (2, 3):
        scores[:, :-1][rng.uniform(size=(150, len(GRID) - 1)) < 0.3] = -np.inf
    assert_same_curve(knapsack(scores, GRID), _knapsack_reference(scores, GRID), scores, 30)


def test_float_sums_keep_the_row_order():
    # 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 in floats: the curve must hold the row-order sum.
    scores = np.array([[0.1, 0.0], [0.2, 0.0], [0.3, 0.0], [1e16, 0.0], [1.0, 0.0]])
    costs = [2, 1]
    got, ref = knapsack(scores, costs), _knapsack_reference(scores, costs)
    np.testing.assert_array_equal(got.best_total, ref.best_total)
    assert got.best_total[-1] == (((0.1 + 0.2) + 0.3) + 1e16) + 1.0


def test_a_sequence_with_every_candidate_forbidden_makes_everything_infeasible():
    scores = np.array([[10.0, 20.0], [-np.inf, -np.inf], [5.0, 7.0]])
    got, ref = knapsack(scores, [1, 2]), _knapsack_reference(scores, [1, 2])
    np.testing.assert_array_equal(got.best_total, ref.best_total)
    assert np.isneginf(got.best_total).all() and got.layers_to_reach(0.0) is None and got.points(2) == []


def test_odd_inputs_follow_the_reference():
    # NaN and +inf take the plain programme (which decides how they propagate); zero costs and one
    # sequence, one candidate, take the fast one.
    for scores, costs in ((np.array([[1.0, np.nan], [2.0, 3.0]]), [1, 2]),
                          (np.array([[1.0, np.inf], [-np.inf, 3.0]]), [1, 2]),
                          (np.array([[4.0, 5.0], [2.0, 3.0]]), [0, 0]),
                          (np.array([[4.0, 5.0], [2.0, 3.0]]), [0, 3]),
                          (np.array([[4.0]]), [3])):
        with np.errstate(invalid="ignore"):  # the reference's -inf + inf
            got, ref = knapsack(scores, costs), _knapsack_reference(scores, costs)
        np.testing.assert_array_equal(got.best_total, ref.best_total)
        assert got.num_sequences == ref.num_sequences


def test_integer_scores_and_lists_are_accepted():
    scores = np.array([[1, 5, 6], [0, 0, 8]])
    got, ref = knapsack(scores, np.array([1, 2, 4])), _knapsack_reference(scores, [1, 2, 4])
    np.testing.assert_array_equal(got.best_total, ref.best_total)
