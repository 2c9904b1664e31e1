"""The per-token study (`skiporacle pertoken`): the probe, its statistics, and the command end to end on the
tiny saved Llama (`tiny_llm_dir`) with the 8-row JSONL file (`oracle_data`)."""

from __future__ import annotations

import numpy as np
import pytest

from skiporacle.controller.pertoken_stats import (cheapest_correct, interpolate, oracle_block, paired,
                                                  token_weighted, verdict)
from skiporacle.controller.probe import auc, decide, fit_probe, member_accuracy
from skiporacle.oracle.stats import resample_rows


# --- the probe --------------------------------------------------------------------------------------


def _separable(tokens: int, seed: int):
    """Hidden states [T, 8] whose first coordinate sets how many of 4 cheaper members are correct (nested)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, 8)).astype(np.float32)
    level = np.digitize(x[:, 0], [-0.8, -0.2, 0.3, 0.9])  # 0..4 members beyond the full model correct
    correct = np.zeros((tokens, 5), dtype=bool)
    correct[:, 0] = True
    for m in range(1, 5):
        correct[:, m] = level >= m
    return x, correct, np.arange(tokens) // 10  # ten tokens per sequence


def test_probe_learns_separable_labels():
    x, correct, groups = _separable(600, 0)
    probe = fit_probe(x, correct, groups)
    x_test, truth, _ = _separable(400, 1)
    prob = probe.probabilities(x_test)
    assert prob.shape == (400, 4)
    rows = member_accuracy(prob, truth, [6, 5, 4, 3, 2])
    assert [r["layers"] for r in rows] == [5, 4, 3, 2]
    assert all(r["accuracy"] > 0.95 and r["auc"] > 0.99 for r in rows), rows
    # The decision at 0.5 recovers the number of leading correct members, i.e. the cheapest correct one here.
    assert (probe.decide(x_test, 0.5) == cheapest_correct(truth)).mean() > 0.9


def test_probe_decision_rule_and_monotone_in_tau():
    prob = np.array([[0.9, 0.2, 0.95], [0.6, 0.7, 0.8], [0.3, 0.9, 0.9], [1.0, 1.0, 1.0]])
    assert decide(prob, 0.5).tolist() == [1, 3, 0, 3]  # a low member in the middle stops the run
    assert decide(prob, 0.0).tolist() == [3, 3, 3, 3]  # tau 0: the cheapest member
    assert decide(prob, 1.01).tolist() == [0, 0, 0, 0]  # tau above 1: always the full model
    x, correct, groups = _separable(300, 2)
    probe = fit_probe(x, correct, groups)
    previous = None
    for tau in np.linspace(0, 1, 21):
        chosen = probe.decide(x, float(tau))
        if previous is not None:
            assert (chosen <= previous).all()  # a stricter threshold never decides a cheaper member
        previous = chosen


def test_auc_with_ties_and_one_class():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert auc(np.array([0.2, 0.3]), np.array([1, 1])) is None


# --- statistics -------------------------------------------------------------------------------------


def test_oracle_mean_layers_on_a_hand_made_matrix():
    # Members of 6, 5, 4, 3 layers; sequence 0 has tokens a, b; sequence 1 has token c.
    correct = np.array([[True, True, True, False],    # cheapest correct: member 2 (4 layers)
                        [True, False, False, True],   # member 3 (3 layers): not required to be a run
                        [False, False, False, False]])  # none: member 0 (all 6 layers)
    assert cheapest_correct(correct).tolist() == [2, 3, 0]
    sequence = np.array([0, 0, 1])
    rows = np.array([[0, 1], [0, 0], [1, 1]])
    block = oracle_block(correct, sequence, 2, [6, 5, 4, 3], 6, rows)
    assert block["mean_layers"] == pytest.approx(13 / 3)
    assert block["percent_layers"] == pytest.approx(100 * 13 / 18)
    assert block["tokens_needing_all_layers"] == 1
    # Resamples: {0, 1} -> 13/3; {0, 0} -> 7/2 (token-weighted within the resample); {1, 1} -> 6.
    mean, span = token_weighted(np.array([4.0, 3.0, 6.0]), sequence, 2, rows)
    assert mean == pytest.approx(13 / 3)
    assert span[0] == pytest.approx(np.percentile([13 / 3, 3.5, 6.0], 2.5))
    assert span[1] == pytest.approx(np.percentile([13 / 3, 3.5, 6.0], 97.5))


def test_interpolation_and_paired_interval():
    budgets = [2, 4, 6]
    scores = np.array([[10.0, 0.0], [20.0, 10.0], [30.0, 40.0]])  # [K, S]
    at, bracket = interpolate(budgets, scores, 3.0)
    assert bracket == [2.0, 4.0] and at.tolist() == [15.0, 5.0]
    at, bracket = interpolate(budgets, scores, 5.5)
    assert bracket == [4.0, 6.0] and at == pytest.approx([27.5, 32.5])
    at, bracket = interpolate(budgets, scores, 4.0)
    assert bracket == [4.0] and at.tolist() == [20.0, 10.0]
    assert interpolate(budgets, scores, 1.5) == (None, [])  # below the smallest budget: no extrapolation
    assert interpolate(budgets, scores, 6.2) == (None, [])
    rows = np.array([[0, 1], [0, 0], [1, 1]])
    diff = paired(np.array([16.0, 5.0]), np.array([15.0, 5.0]), rows)  # differences 1 and 0
    assert diff["estimate"] == pytest.approx(0.5)
    assert diff["ci95"] == pytest.approx([np.percentile([0.5, 1, 0], 2.5), np.percentile([0.5, 1, 0], 97.5)])


def test_verdict_reads_the_paired_intervals():
    def point(tau, span):
        return {"tau": tau, "controller_minus_fixed_rate": None if span is None else {"estimate": 0, "ci95": span}}

    assert verdict([point(0.5, None)]).startswith("undecided")
    assert verdict([point(0.5, [-1.0, 0.5]), point(0.9, [-3.0, -0.2])]).startswith("holds")
    line = verdict([point(0.5, [-1.0, 0.5]), point(0.9, [0.1, 2.0])])
    assert line.startswith("does not hold") and "tau 0.9" in line


def test_resamples_are_shared_and_seeded():
    ids = ["b", "a", "c"]
    assert (resample_rows(ids, 0, 5) == resample_rows(ids, 0, 5)).all()
