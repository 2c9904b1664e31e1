"""The controller: decisions, honest cross-validation, exactness against the oracle, the CLI and deployment.

Logic tests use hand-made score matrices; end-to-end tests use the tiny saved
Llama of conftest with a 14-row data file (enough for 5 folds).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import NUM_LAYERS, ORACLE_TEXTS, one_thread
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.controller.decide import knapsack_choices, threshold_choices
from skiporacle.controller.evaluate import (EvalSettings, budget_curve, cross_validated, evaluate, fold_of,
                                            oracle_reach, reach, threshold_curve)
from skiporacle.controller.fixed import nested_choices
from skiporacle.controller.classifier import fit
from skiporacle.oracle.choose import cheapest_matching, knapsack
from skiporacle.cli.main import main

from test_cli import assert_bad, run_cli

ROWS = 14


def _random_problem(n=7, k=4, seed=0):
    rng = np.random.default_rng(seed)
    costs = sorted(rng.choice(np.arange(1, 10), size=k - 1, replace=False).tolist()) + [10]
    scores = rng.integers(0, 20, size=(n, k)).astype(float)
    return scores, costs


# --- decisions -------------------------------------------------------------------------------

def test_threshold_picks_the_cheapest_candidate_above_tau():
    prob = np.array([[0.9, 0.2, 0.0], [0.1, 0.6, 0.0], [0.1, 0.2, 0.0]])
    assert threshold_choices(prob, [1, 2, 3], 0.5).tolist() == [0, 1, 2]
    assert threshold_choices(prob, [1, 2, 3], 0.0).tolist() == [0, 0, 0]
    assert threshold_choices(prob, [1, 2, 3], 1.01).tolist() == [2, 2, 2]  # the full model is always allowed


@pytest.mark.parametrize("seed", range(4))
def test_budget_mode_equals_the_knapsack(seed):
    scores, costs = _random_problem(seed=seed)
    n = len(scores)
    curve = knapsack(scores, costs)
    totals = list(range(n * min(costs), n * max(costs) + 1))
    choices = knapsack_choices(scores, costs, totals)
    for total, choice in zip(totals, choices):
        assert sum(costs[j] for j in choice) <= total
        assert scores[np.arange(n), choice].sum() == pytest.approx(curve.mean_score_at(total / n) * n)


def test_budget_mode_equals_brute_force():
    scores, costs = _random_problem(n=4, k=3, seed=5)
    for total in range(4 * min(costs), 4 * max(costs) + 1):
        best = max(sum(scores[i, j] for i, j in enumerate(c)) for c in itertools.product(range(3), repeat=4)
                   if sum(costs[j] for j in c) <= total)
        (choice,) = knapsack_choices(scores, costs, [total])
        assert scores[np.arange(4), choice].sum() == pytest.approx(best)


def test_true_scores_reproduce_the_oracle_exactly():
    """A controller handed the true labels makes the oracle's choices: the rule and the knapsack."""
    scores, costs = _random_problem(n=9, k=5, seed=3)
    full = scores[:, -1]
    match = scores >= full[:, None]
    rule = cheapest_matching(scores, costs, full, 0.0)
    assert threshold_choices(match.astype(float), costs, 1.0).tolist() == rule.tolist()
    budget = budget_curve(scores - full[:, None], costs, scores)
    assert reach(budget, full) == oracle_reach(scores, costs)
    threshold = threshold_curve(match.astype(float), costs, scores)
    assert threshold.layers[-1].mean() == pytest.approx(np.mean([costs[k] for k in rule]))


# --- honest cross-validation -------------------------------------------------------------------

def test_cross_validation_never_shows_a_sequence_its_own_labels():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 6))
    match = rng.random((20, 3)) > 0.5
    delta = rng.normal(size=(20, 3))
    folds = fold_of(20, 5, seed=1)
    seen = []

    def spy(x, m, d, scalars):
        seen.append({tuple(row) for row in x})
        return fit(x, m, d, scalars)

    prob, _ = cross_validated(features, match, delta, 2, folds, fit_fn=spy)
    assert len(seen) == 5
    for f, trained in zip(np.unique(folds), seen):
        held_out = {tuple(row) for row in features[folds == f]}
        assert not held_out & trained
        assert len(trained) == (folds != f).sum()
    assert prob.shape == (20, 3) and (prob[:, -1] == 1).all()


def test_the_fixed_threshold_is_chosen_without_the_rows_it_decides():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(25, 5))
    scores = rng.integers(0, 20, size=(25, 3)).astype(float)
    folds = fold_of(25, 5, seed=0)
    calls = []

    def spy(x, m, d, scalars):
        calls.append({tuple(row) for row in x})
        return fit(x, m, d, scalars)

    choices = nested_choices(features, scores >= scores[:, -1:], scores - scores[:, -1:], 2, folds, [1, 2, 3], scores,
                             0, fit_fn=spy)
    for f in np.unique(folds):
        held_out = {tuple(row) for row in features[folds == f]}
        decided_by = [c for c in calls if not c & held_out]
        assert decided_by, "every fold has controllers trained without it"
    assert all(any(not c & {tuple(r) for r in features[folds == f]} for f in np.unique(folds)) for c in calls)
    assert choices.shape == (25,) and set(choices) <= {0, 1, 2}


def test_fit_is_deterministic_and_learns_a_separable_rule():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 4))
    match = np.stack([features[:, 0] > 0, np.ones(60, bool)], 1)
    delta = np.stack([features[:, 0], np.zeros(60)], 1)
    a, b = fit(features, match, delta, 4), fit(features, match, delta, 4)
    assert np.array_equal(a.match_weights, b.match_weights)
    prob, pred = a.predict(features)
    assert ((prob[:, 0] > 0.5) == match[:, 0]).mean() > 0.9
    assert np.corrcoef(pred[:, 0], delta[:, 0])[0, 1] > 0.9


def test_evaluate_reports_intervals_and_baselines():
    scores, costs = _random_problem(n=30, k=4, seed=2)
    match = (scores >= scores[:, -1:]).astype(float)
    result = evaluate(match, scores - scores[:, -1:], np.full_like(match, 0.5), scores, costs,
                      EvalSettings(resamples=20))
    assert result["layers_at_full_quality_percent"] is not None
    lo, hi = result["intervals"]["oracle_layers_at_full_quality_percent"]
    assert lo <= result["oracle_layers_at_full_quality_percent"] <= hi
    assert set(result["curves"]) == {"threshold", "budget", "prompt_length", "shuffled_oracle"}


# --- end to end on the tiny model --------------------------------------------------------------

@pytest.fixture(scope="module")
def controller_data(tiny_llm_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("controller_data")
    texts = [f"{t} Day {i}." for i, t in enumerate(ORACLE_TEXTS * 4)][: 2 * ROWS]
    rows = [{"id": f"c{i:02d}", "text": t, "summary": t.split()[0] + " " + t.split()[-1]} for i, t in enumerate(texts)]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ["--model", tiny_llm_dir, "--data", path, "--input-field", "text", "--reference-field", "summary",
            "--id-field", "id"]


def _oracle(data_args, out, offset=0, budgets="2,4,5"):
    with one_thread(), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in ["oracle", *data_args, "--limit", ROWS, "--offset", offset, "--space", "uniform",
                                      "--budgets", budgets, "--max-new-tokens", 4, "--calibration", 0, "--out", out]])
    assert code == 0


@pytest.fixture(scope="module")
def two_runs(controller_data, tmp_path_factory):
    """Two oracle runs on disjoint rows; run `a` also holds a cross-validated controller."""
    base = tmp_path_factory.mktemp("controller_runs")
    _oracle(controller_data, base / "a", offset=0)
    _oracle(controller_data, base / "b", offset=ROWS)
    with one_thread(), contextlib.redirect_stdout(io.StringIO()):
        assert main(["controller", "--run", str(base / "a"), "--resamples", "10"]) == 0
    return base / "a", base / "b"


def test_controller_cli_cross_validates_and_saves(capsys, two_runs):
    run, _ = two_runs
    with one_thread():
        code, out, err = run_cli(capsys, "controller", "--run", run, "--resamples", 10)
    assert code == 0, err
    result = json.loads((run / "controller" / "controller.json").read_text())
    for key in ("layers_at_full_quality_percent", "oracle_layers_at_full_quality_percent", "saving_kept", "intervals",
                "curves", "baselines"):
        assert key in result
    assert result["mode"] == "cross-validation" and result["sequences"] == ROWS
    assert f"full model: mean rougeL {result['full_mean_score']:.2f}\n" in out
    assert f"deployable controller (tau {result['deploy_tau']:.2f}): {run / 'controller' / 'model'}\n" in out
    summary = json.loads((run / "summary.json").read_text())
    assert result["oracle_layers_at_full_quality_percent"] == pytest.approx(
        summary["knapsack"]["percent_layers_at_full_quality"])
    assert (run / "controller" / "controller.png").stat().st_size > 10_000
    assert (run / "controller" / "model" / "weights.npz").exists()
    assert (run / "features.npz").exists()
    assert result["fixed_threshold"]["tau_chosen_on"].startswith("the training rows only")
    assert [p["train_rows"] for p in result["learning_curve"]] == sorted(p["train_rows"] for p in result["learning_curve"])


def test_controller_cli_cross_run_and_deploy(capsys, two_runs, controller_data):
    a, b = two_runs
    with one_thread():
        code, out, err = run_cli(capsys, "controller", "--run", b, "--train", a, "--resamples", 10)
        assert code == 0, err
        assert json.loads((b / f"controller-from-{a.name}" / "controller.json").read_text())["mode"] == "cross-run"
        code, out, err = run_cli(capsys, "generate", *controller_data, "--limit", 4, "--offset", 2 * ROWS - 4,
                                 "--max-new-tokens", 4, "--controller", a / "controller", "--tau", 0.0)
    assert code == 0, err
    assert "speed ratio" in out and "decisions:" in out and "decode batches: " in out


def test_deploy_refusals_come_before_the_model(capsys, two_runs, controller_data, tmp_path, monkeypatch):
    """A --tau outside [0, 1], a --tau without --controller and a controller of another model: one line, exit 2,
    before any model loads."""
    import shutil

    from skiporacle.oracle import inputs as run_inputs

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(run_inputs, "load_model", refuse)
    a, _ = two_runs
    common = [*controller_data, "--limit", 2, "--offset", 2 * ROWS - 2, "--max-new-tokens", 2]
    for tau in (1.5, -0.1):
        assert_bad(capsys, "generate", *common, "--controller", a / "controller", "--tau", tau,
                   match=r"--tau is a probability threshold in \[0, 1\] for --controller")
    assert_bad(capsys, "generate", *common, "--tau", 0.5, match="without --controller")
    assert_bad(capsys, "generate", *common, "--controller", a / "controller", "--plan-window-mb", -1,
               match="--plan-window-mb is the prompt-cache memory held for regrouping, in MB")
    other = tmp_path / "other"
    shutil.copytree(a / "controller" / "model", other)
    stored = json.loads((other / "settings.json").read_text())
    (other / "settings.json").write_text(json.dumps({**stored, "model": "another-model"}))
    assert_bad(capsys, "generate", *common, "--controller", other, match="was trained on model 'another-model'")


def test_deployed_outputs_equal_the_engine_under_each_chosen_allocation(two_runs, tiny_llm_dir):
    """Grouping sequences by allocation and decoding from their rows of the shared cache changes no output."""
    from skiporacle.controller.deploy import generate_with_controller
    from skiporacle.controller.controller_run import load_controller
    from skiporacle.eval.generate import generate
    from skiporacle.oracle.workers import load_model_cached
    from skiporacle.search.allocation import Allocation

    a, _ = two_runs
    stored, fitted = load_controller(a / "controller")
    allocations = [Allocation(tuple(c[1]), NUM_LAYERS, c[0]) for c in stored["candidates"]]
    prompts = [r["prompt"] for r in map(json.loads, (a / "allocations.jsonl").read_text().splitlines())]
    model, tokenizer = load_model_cached(str(tiny_llm_dir), "float32")
    with one_thread():
        for tau, path in itertools.product((0.0, 0.5), ("groups", "lanes")):
            deployed = generate_with_controller(model, tokenizer, prompts, allocations, fitted, tau, DecodeProtocol(4),
                                                path=path)
            assert set(deployed.paths) <= {path, "groups"}  # a batch of one choice decodes as one group
            for k in set(deployed.choices):
                rows = [i for i, c in enumerate(deployed.choices) if c == k]
                expected = generate(model, tokenizer, [prompts[i] for i in rows], allocations[k], DecodeProtocol(4))
                assert [deployed.generations[i].tokens for i in rows] == [g.tokens for g in expected]



def test_a_controllers_stream_resumes_to_the_uninterrupted_one(capsys, two_runs, controller_data, tmp_path):
    """generate --controller --out: one line per sequence with its chosen allocation; a torn stream resumes."""
    a, _ = two_runs
    argv = ["generate", *controller_data, "--limit", 6, "--offset", 2 * ROWS - 6, "--max-new-tokens", 4,
            "--controller", a / "controller", "--tau", 0.5, "--max-batch", 2]
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    with one_thread():
        code, out, err = run_cli(capsys, *argv, "--out", whole)
        assert code == 0, err
        lines = [json.loads(line) for line in whole.read_text().splitlines()]
        assert sorted(r["id"] for r in lines) == [f"c{i:02d}" for i in range(2 * ROWS - 6, 2 * ROWS)]
        stored = json.loads((a / "controller" / "model" / "settings.json").read_text())["candidates"]
        assert all([r["allocation"], r["layers"]] == [c[0], len(c[1])] for r in lines
                   for c in stored if c[0] == r["allocation"])
        assert "speed ratio" not in out and "6 outputs in" in out  # streaming does not run the full model as well
        raw = whole.read_bytes().splitlines(keepends=True)
        cut.write_bytes(b"".join(raw[:3]) + raw[3][:5])
        (tmp_path / "cut.jsonl.settings.json").write_bytes((tmp_path / "whole.jsonl.settings.json").read_bytes())
        code, out, err = run_cli(capsys, *argv, "--out", cut, "--resume")
    assert code == 0, err
    assert "(3 resumed, 3 written now" in out and cut.read_bytes() == whole.read_bytes()


def test_controller_bad_input(capsys, two_runs, controller_data, tmp_path):
    a, b = two_runs
    assert_bad(capsys, "controller", "--run", tmp_path / "missing", match="not a skiporacle run folder")
    assert_bad(capsys, "controller", "--run", a, "--folds", 8, match="needs at least 16")
    assert_bad(capsys, "controller", "--run", a, "--train", a, match="shares 14 prompt")
    _oracle(controller_data, tmp_path / "other", offset=ROWS, budgets="2,3")
    assert_bad(capsys, "controller", "--run", tmp_path / "other", "--train", a, match="other candidates")
    assert_bad(capsys, "generate", *controller_data, "--limit", 2, "--controller", tmp_path, match="not a controller folder")
    assert_bad(capsys, "generate", *controller_data, "--limit", 2, "--controller", a / "controller",
               match="among the controller's training rows")
    stored = a / "controller" / "model" / "settings.json"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.npz").write_bytes((a / "controller" / "model" / "weights.npz").read_bytes())
    (foreign / "settings.json").write_text(json.dumps({**json.loads(stored.read_text()), "num_layers": 30}))
    assert_bad(capsys, "generate", *controller_data, "--limit", 2, "--offset", 2 * ROWS - 2, "--controller", foreign,
               match="model of 30 layers")


def test_plausibility_command_adds_the_guarded_oracle(capsys, two_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_runs[1], run)
    with one_thread():
        code, out, err = run_cli(capsys, "plausibility", "--run", run, "--margin", 1.0)
    assert code == 0, err
    table = json.loads((run / "plausibility.json").read_text())
    assert table["margin"] == 1.0 and len(table["sequences"]) == ROWS
    guard = json.loads((run / "summary.json").read_text())["guarded"]
    assert f"{guard['plausible_percent']:.1f} % of candidate outputs are plausible" in out
    assert_bad(capsys, "plausibility", "--run", run, "--margin", -1, match="--margin must be")
