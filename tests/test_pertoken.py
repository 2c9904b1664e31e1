"""The per-token study (`skiporacle pertoken`): the probe, its statistics, and the command end to end on the
tiny saved Llama (`tiny_llm_dir`) with the 8-row JSONL file (`oracle_data`)."""

from __future__ import annotations

import numpy as np
import pytest

from skiporacle.pertoken.study_stats import cheapest_correct, interpolate, oracle_block, token_weighted, verdict
from skiporacle.pertoken.probe import auc, decide, fit_probe, member_accuracy
from skiporacle.oracle.bootstrap import paired_means as paired, resample_rows


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


def test_probe_member_with_one_class_gets_a_constant_probability():
    x, correct, groups = _separable(200, 3)
    correct[:, 4] = False  # the cheapest member is never right in training
    probe = fit_probe(x, correct, groups)
    prob = probe.probabilities(_separable(50, 4)[0])
    assert np.allclose(prob[:, 3], 0.5 / 201)
    assert (probe.decide(x, 0.5) <= 3).all()


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
    charged = {**point(0.9, [0.1, 2.0]), "controller_minus_fixed_rate_charged": {"estimate": 0, "ci95": [-0.5, 1.0]}}
    assert verdict([charged]).startswith("holds")  # above only while the key/value fill goes uncharged


def test_resamples_are_shared_and_seeded():
    ids = ["b", "a", "c"]
    assert (resample_rows(ids, 0, 5) == resample_rows(ids, 0, 5)).all()


# --- the command --------------------------------------------------------------------------------------

from conftest import NUM_LAYERS, one_thread  # noqa: E402
from test_cli import assert_bad, run_cli  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ranking(tmp_path_factory):
    """An importance.json for the tiny model (no model name: it ranks any model of NUM_LAYERS layers)."""
    import json

    path = tmp_path_factory.mktemp("ranking") / "ranking.json"
    path.write_text(json.dumps({"calibration_ids": [], "drop_order": [4, 2, 5, 3, 1, 0]}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_args(oracle_data, tiny_llm_dir, ranking):
    """Evaluation rows 0-3, training rows 4-7 of the 8-row file; 4 new tokens."""
    return ["pertoken", "--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text",
            "--reference-field", "summary", "--id-field", "id", "--limit", 4, "--train-offset", 4,
            "--train-limit", 4, "--max-new-tokens", 4, "--importance", ranking, "--budgets", "2,3,4,5",
            "--device", "cpu"]


@pytest.mark.parametrize("extra, match", [
    (["--train-offset", 2], r"2 training row\(s\) share their input text with evaluation rows"),
    (["--train-offset", 100], r"training rows \(--train-offset 100\): offset 100 is past the end"),
    (["--importance", "missing/ranking.json"], r"--importance 'missing/ranking.json' not found: run make ranking"),
    (["--taus", "0.5,x"], r"--taus '0.5,x': expected comma-separated numbers"),
    (["--taus", "0.5,-0.1"], r"--taus '0.5,-0.1': -0.1 is not a threshold"),
    (["--taus", "nan"], r"is not a threshold"),
    (["--probe-layer", NUM_LAYERS - 1], rf"--probe-layer {NUM_LAYERS - 1}: the model has {NUM_LAYERS} layers; use 0-{NUM_LAYERS - 2}"),
    (["--probe-layer", -1], r"--probe-layer must be at least 0"),
    (["--train-limit", 0], r"--train-limit must be at least 1"),
    (["--budgets", "1,4"], r"every budget must keep the probe's layers 0-1"),
    (["--budgets", "4,9"], r"budget 9 out of range"),
])
def test_bad_input_one_line(capsys, base_args, tmp_path, extra, match):
    assert_bad(capsys, *base_args, "--out", tmp_path / "out", *extra, match=match)
    assert not (tmp_path / "out" / "pertoken.json").exists()


def test_overlap_by_content_not_id(capsys, base_args, oracle_data, tmp_path):
    """A copy of evaluation rows under other ids (and re-spaced, upper-cased) is still refused."""
    import json

    rows = [json.loads(line) for line in oracle_data.read_text(encoding="utf-8").splitlines()]
    copy = rows[:4] + [{**r, "id": f"copy{i}", "text": "  " + r["text"].upper()} for i, r in enumerate(rows[:2])]
    path = tmp_path / "copy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in copy), encoding="utf-8")
    args = [str(a) for a in base_args]
    args[args.index("--data") + 1] = str(path)
    assert_bad(capsys, *args, "--out", tmp_path / "out", match=r"2 training row\(s\) share their input text")


@pytest.fixture(scope="module")
def study(base_args, tmp_path_factory):
    """(folder, exit code, stdout) of one `skiporacle pertoken` run at tau 0, 0.5 and 1.5."""
    import contextlib
    import io

    from skiporacle.cli.main import main

    out = tmp_path_factory.mktemp("pertoken") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(a) for a in base_args] + ["--taus", "1.5,0,0.5", "--resamples", "50", "--out", str(out)])
    return out, code, stdout.getvalue()


KEYS = {"study", "model", "task", "metric", "num_layers", "settings", "rows", "families", "full_model", "oracle",
        "near_ties", "probe", "tau_points", "fixed_rate", "bootstrap", "cost_note", "verdict", "wall_seconds",
        "machine", "versions", "kv_fill_fraction"}


def test_end_to_end_writes_every_key(study):
    import json

    out, code, stdout = study
    assert code == 0, stdout
    result = json.loads((out / "pertoken.json").read_text(encoding="utf-8"))
    assert set(result) == KEYS
    assert (out / "pertoken.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["num_layers"] == NUM_LAYERS
    rows = result["rows"]
    assert rows["evaluation"]["ids"] == ["ex0", "ex1", "ex2", "ex3"] and rows["training"]["ids"] == ["ex4", "ex5", "ex6", "ex7"]
    assert not set(rows["evaluation"]["content_hashes"]) & set(rows["training"]["content_hashes"])
    assert [len(m) for m in result["families"]["importance"]] == [6, 5, 4, 3, 2]  # layers 0-1 kept
    assert [len(m) for m in result["families"]["early_exit"]] == [6, 5, 4, 3, 2, 1]
    assert [p["layers"] for p in result["fixed_rate"]] == [2, 3, 4, 5, 6]
    for name in ("importance", "early_exit"):
        block = result["oracle"][name]
        assert 1 <= block["mean_layers"] <= NUM_LAYERS
        assert block["mean_layers_ci95"][0] <= block["mean_layers"] + 1e-9 <= block["mean_layers_ci95"][1] + 2e-9
        assert block["tokens"] == result["probe"]["evaluation_tokens"]
    assert result["oracle"]["layerskip_reference"]["percent_layers"] == 73.3
    assert len(result["probe"]["members"]) == 4
    assert [p["tau"] for p in result["tau_points"]] == [0.0, 0.5, 1.5]
    assert result["wall_seconds"].keys() >= {"load_model", "full_outputs", "labels", "probe", "fixed_rate", "controller"}
    assert "verdict (paper: per-token controller no better than fixed rates at equal compute)" in stdout
    assert "per-token oracle, importance family" in stdout and "LayerSkip" in stdout


def test_extreme_taus_equal_the_fixed_allocations(study):
    """tau 0 decides the cheapest member (layers 0-1 only) for every token: the fixed rate importance:2;
    tau above 1 always decides member 0: the full model."""
    import json

    out, _, _ = study
    result = json.loads((out / "pertoken.json").read_text(encoding="utf-8"))
    cheapest, _, always_full = result["tau_points"]
    fixed = {p["layers"]: p for p in result["fixed_rate"]}
    assert cheapest["mean_layers_per_token"] == 2 and cheapest["mean_layers_per_sequence"] == 2
    assert cheapest["mean_score"] == pytest.approx(fixed[2]["mean_score"])
    assert cheapest["fixed_rate_at_equal_compute"]["bracket_layers"] == [2.0]
    assert cheapest["controller_minus_fixed_rate"]["estimate"] == pytest.approx(0.0)
    assert cheapest["token_ids"] == fixed[2]["token_ids"]  # the same greedy tokens, not just the same scores
    assert {m for row in cheapest["members"] for m in row} == {4}
    assert cheapest["teacher_forced"]["mean_layers"] == 2
    assert always_full["mean_layers_per_token"] == NUM_LAYERS
    assert always_full["scores"] == pytest.approx(result["full_model"]["scores"])
    assert always_full["identical_to_full_sequences"] == 4
    assert always_full["token_ids"] == result["full_model"]["token_ids"] == fixed[NUM_LAYERS]["token_ids"]
    assert always_full["controller_minus_fixed_rate"] == {"estimate": 0.0, "ci95": [0.0, 0.0]}
    assert always_full["controller_minus_fixed_rate_charged"] == {"estimate": 0.0, "ci95": [0.0, 0.0]}
    # tiny Llama: input norm 64 + k and v projections 64 x 32 each, of a layer of 64*(64+32+32+64) + 3*64*128 + 2*64
    assert result["kv_fill_fraction"] == pytest.approx((64 + 2 * 64 * 32) / (64 * 192 + 3 * 64 * 128 + 128))
    assert cheapest["mean_layers_per_token_charged"] == pytest.approx(2 + (NUM_LAYERS - 2) * result["kv_fill_fraction"])
    assert always_full["teacher_forced"]["mean_layers"] == NUM_LAYERS


def test_a_point_beyond_the_budgets_is_not_extrapolated():
    from types import SimpleNamespace

    from skiporacle.pertoken.study_stats import tau_point

    gen = SimpleNamespace(tokens=[[7, 8], [9]], members=[[2, 2], [1]], layers_run=[[1, 1], [2]])
    rows = np.array([[0, 1], [1, 1]])
    fixed = ([2.0, 3.0], np.array([[1.0, 2.0], [3.0, 4.0]]))
    point = tau_point(0.5, gen, np.array([5.0, 6.0]), [[7, 8], [1]], fixed, rows, 3, np.array([2, 2, 1]),
                      np.array([[True, False, True], [True, True, True], [True, True, False]]), [3, 2, 1])
    assert point["mean_layers_per_token"] == pytest.approx(4 / 3)  # token-weighted; per sequence: (1 + 2) / 2
    assert point["mean_layers_per_sequence"] == pytest.approx(1.5)
    assert point["fixed_rate_at_equal_compute"] is None and point["controller_minus_fixed_rate"] is None
    assert "outside the fixed-rate budgets 2-3" in point["beyond_budgets"]
    assert point["identical_to_full_sequences"] == 1
    tf = point["teacher_forced"]  # cheapest correct members: 2, 2, 1
    assert tf["agreement_with_cheapest_correct"] == 1.0
    assert tf["decided_correct"] == pytest.approx(1.0)
    assert tf["mean_layers"] == pytest.approx(4 / 3)
