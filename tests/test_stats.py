"""Tests for the honest numbers of summary.json: bootstrap intervals, paired differences, the
split-reference oracle, token-weighted cost, the full model's other metrics, the plausibility
guard and resummarize.  Run folders are written by hand (no model), so these tests are fast.
"""

from __future__ import annotations

import inspect
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from skiporacle.data.errors import BadInput
from skiporacle.oracle.choose import knapsack
from skiporacle.oracle.records import ALLOCATIONS, SETTINGS, SUMMARY
from skiporacle.oracle.schema import SequenceRecord

L = 6  # layers of the hand-made model


def record(i, scores, costs, specs=None, tokens=None, outputs=None, references=None, identical=None):
    """A record in the allocations.jsonl format: scores/costs/tokens/outputs list the candidates, then the full model."""
    k = len(scores)
    specs = specs or [f"exit:{c}" for c in costs[:-1]]
    tokens = tokens or [10] * k
    outputs = outputs or [f"out {i} {j}" for j in range(k - 1)] + [f"out {i} full"]
    identical = identical or [False] * (k - 1)
    return {
        "id": f"s{i:03d}", "prompt": f"p{i}", "references": references or [f"ref {i}"],
        "full": {"output": outputs[-1], "tokens": tokens[-1], "score": float(scores[-1]), "cost": costs[-1],
                 "token_ids": list(range(tokens[-1]))},
        "candidates": [{"spec": s, "layers": list(range(c)), "cost": c, "fraction": c / costs[-1], "output": o,
                        "tokens": t, "score": float(x), "identical": d}
                       for s, c, o, t, x, d in zip(specs, costs, outputs, tokens, scores, identical)],
        "choice": {"tolerance": "all", "exact": "all"},
    }


def typed(records: list[dict]) -> list[SequenceRecord]:
    """The records as the run folder reads them."""
    return [SequenceRecord.from_json(r) for r in records]


def write_run(folder: Path, records: list[dict], metric="rougeL", seed=0, tolerance=0.0, summary=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"model": "hand-made", "task": "xsum", "data_file": None, "metric": metric, "seed": seed,
                "tolerance": tolerance, "dtype": "float32"}
    (folder / SETTINGS).write_text(json.dumps(settings), encoding="utf-8")
    (folder / ALLOCATIONS).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if summary is not None:
        (folder / SUMMARY).write_text(json.dumps(summary), encoding="utf-8")
    return folder


def summarize_run(folder: Path) -> dict:
    from skiporacle.oracle.summary import summarize

    settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
    return summarize(folder, settings, 1.0, {"workers": 1, "resumed_sequences": 0, "machine": {}})


def random_records(n, costs, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 40, size=(n, len(costs)))
    if ties:
        scores = np.round(scores / 5) * 5
    tokens = rng.integers(1, 48, size=(n, len(costs)))
    return [record(i, list(scores[i]), costs, tokens=[int(t) for t in tokens[i]]) for i in range(n)]


# --- one resample count -----------------------------------------------------------------------


def test_one_resample_count_everywhere():
    from skiporacle.oracle import bootstrap as stats, curves

    assert stats.RESAMPLES == 200
    assert inspect.signature(stats.resample_rows).parameters["resamples"].default == stats.RESAMPLES
    assert inspect.signature(curves.curve_rows).parameters["resamples"].default == stats.RESAMPLES
    assert inspect.signature(curves.write_curves).parameters["resamples"].default == stats.RESAMPLES


def test_resample_rows_follow_ids_not_file_order():
    from skiporacle.oracle.bootstrap import resample_rows

    ids = ["c", "a", "b", "d"]
    rows = resample_rows(ids, seed=3)
    assert rows.shape == (200, 4)
    shuffled = ["d", "b", "a", "c"]
    again = resample_rows(shuffled, seed=3)
    assert [[ids[i] for i in r] for r in rows] == [[shuffled[i] for i in r] for r in again]


# --- the fast exact knapsack ------------------------------------------------------------------


@pytest.mark.parametrize("instance", range(40))
def test_frontier_knapsack_equals_select_knapsack(instance):
    from skiporacle.oracle.frontier import best_totals, frontiers, reach

    rng = np.random.default_rng(instance)
    n, k = int(rng.integers(1, 7)), int(rng.integers(1, 6))
    costs = [int(c) for c in rng.integers(1, 8, size=k - 1)] + [8]
    scores = rng.uniform(0, 100, size=(n, k))
    if instance % 2:
        scores = np.round(scores / 25) * 25
    if instance % 3 == 0:  # forbidden candidates, as the guard makes them
        scores[:, :-1][rng.uniform(size=(n, k - 1)) < 0.4] = -np.inf
    fr = frontiers(scores, costs)
    rows = rng.integers(0, n, size=n)
    expected = knapsack(scores[rows], costs)
    np.testing.assert_allclose(best_totals(fr, rows, max(costs)), expected.best_total, atol=1e-9)
    target = float(scores[rows, -1].sum())
    assert reach(fr, rows, target) == pytest.approx(expected.layers_to_reach(target / n) * n)
    assert reach(fr, rows, target, use_bound=False) == reach(fr, rows, target)


@pytest.mark.parametrize("instance", range(20))
def test_chosen_totals_equal_brute_force(instance):
    from skiporacle.oracle.frontier import chosen_totals, frontiers

    rng = np.random.default_rng(100 + instance)
    n, k = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    costs = [int(c) for c in rng.integers(1, 6, size=k - 1)] + [6]
    first, other = rng.uniform(0, 100, size=(n, k)), rng.uniform(0, 100, size=(n, k))  # no ties: one optimum
    base, best, held = chosen_totals(frontiers(first, costs), np.arange(n), other)
    for c in range(len(best)):
        options = [(sum(first[i, j] for i, j in enumerate(ch)), sum(other[i, j] for i, j in enumerate(ch)))
                   for ch in itertools.product(range(k), repeat=n) if sum(costs[j] for j in ch) <= base + c]
        top = max(options)
        assert best[c] == pytest.approx(top[0]) and held[c] == pytest.approx(top[1])


# --- intervals on the headline ----------------------------------------------------------------


def _percent_reach(scores, costs, rows):
    curve = knapsack(scores[rows], costs)
    return 100 * curve.layers_to_reach(float(scores[rows, -1].mean())) / costs[-1]


def test_summary_intervals_recompute_each_resample(tmp_path):
    from skiporacle.oracle.bootstrap import resample_rows
    from skiporacle.oracle.table import RunTable

    costs = [2, 3, 4, 5, L]
    records = random_records(12, costs, seed=4)
    summary = summarize_run(write_run(tmp_path / "run", records, seed=7))
    assert summary["bootstrap"]["resamples"] == 200 and summary["bootstrap"]["seed"] == 7
    table = RunTable.from_records(typed(records))
    scores, full = table.scores, table.full_scores
    rows = resample_rows([r["id"] for r in records], 7)
    knap = summary["knapsack"]
    # Each resample has its own full-model target and its own knapsack.
    percents = [_percent_reach(scores, costs, r) for r in rows]
    assert knap["percent_layers_at_full_quality_ci95"] == pytest.approx(np.percentile(percents, [2.5, 97.5]))
    assert knap["layers_at_full_quality_ci95"] == pytest.approx(np.percentile(percents, [2.5, 97.5]) * L / 100)
    lo, hi = knap["percent_layers_at_full_quality_ci95"]
    assert lo <= knap["percent_layers_at_full_quality"] <= hi
    gain = scores.max(axis=1) - full
    assert knap["gain_at_full_compute"] == pytest.approx(gain.mean())
    assert knap["gain_at_full_compute_ci95"] == pytest.approx(np.percentile(gain[rows].mean(axis=1), [2.5, 97.5]))
    assert summary["full_mean_score_ci95"] == pytest.approx(np.percentile(full[rows].mean(axis=1), [2.5, 97.5]))
    for key in ("rule", "rule_exact"):
        block = summary[key]
        for stat in ("mean_layers", "mean_percent_layers", "mean_score"):
            low, high = block[f"{stat}_ci95"]
            assert low <= block[stat] + 1e-9 and block[stat] <= high + 1e-9
    rule_layers = np.array([costs[[r["spec"] for r in summary["static"]].index(s)] for s in
                            [summary["static"][k]["spec"] for k in
                             _rule_columns(scores, costs)]], dtype=float)
    assert summary["rule"]["mean_layers_ci95"] == pytest.approx(
        np.percentile(rule_layers[rows].mean(axis=1), [2.5, 97.5]))
    for k, static in enumerate(summary["static"]):
        assert static["mean_score_ci95"] == pytest.approx(
            np.percentile(scores[rows, k].mean(axis=1), [2.5, 97.5]))
    # Existing keys are still there, unchanged in meaning.
    assert knap["layers_at_full_quality"] == knapsack(scores, costs).layers_to_reach(float(full.mean()))


def _rule_columns(scores, costs):
    from skiporacle.oracle.choose import cheapest_matching

    choice = cheapest_matching(scores, costs, scores[:, -1], 0.0)
    return np.where(choice >= 0, choice, len(costs) - 1)


def _intervals(value, path=""):
    """Every `*_ci95` and paired interval of a summary, by its path."""
    found = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k.endswith("ci95"):
                found[f"{path}/{k}"] = v
            else:
                found.update(_intervals(v, f"{path}/{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.update(_intervals(v, f"{path}/{i}"))
    return found


def test_intervals_do_not_depend_on_record_order(tmp_path):
    costs = [2, 3, 4, L]
    records = random_records(15, costs, seed=2)
    for i, r in enumerate(records):
        r["references"] = [f"ref {i} a b", f"other {i} c d"]
        r["candidates"][0]["output"] = f"ref {i} a"
    specs = ["exit:2", "healed:h3", "base:h3"]
    for r in records:
        for c, s in zip(r["candidates"], specs):
            c["spec"] = s
    ordered = summarize_run(write_run(tmp_path / "a", records))
    shuffled = summarize_run(write_run(tmp_path / "b", records[7:] + records[:7][::-1]))
    found = _intervals(ordered)
    assert len(found) > 30 and "/split_reference/held_out/knapsack/percent_layers_at_full_quality_ci95" in found
    assert "/training_free/paired_difference/rule_mean_layers/ci95" in found
    assert _intervals(shuffled) == found


def test_training_free_paired_differences(tmp_path):
    from skiporacle.oracle.bootstrap import resample_rows
    from skiporacle.oracle.table import RunTable

    costs = [2, 3, 4, L]
    specs = ["exit:2", "healed:h3", "base:h3"]
    records = random_records(10, costs, seed=9)
    for r in records:
        for c, s in zip(r["candidates"], specs):
            c["spec"] = s
        r["candidates"][0]["score"] = 0.0
        r["candidates"][1]["score"] = r["full"]["score"]  # the healed variant matches the full model everywhere
    summary = summarize_run(write_run(tmp_path / "run", records))
    free = summary["training_free"]
    scores = RunTable.from_records(typed(records)).scores
    keep = [0, 2, 3]
    rows = resample_rows([r["id"] for r in records], 0)
    whole = np.array([_percent_reach(scores, costs, r) for r in rows])
    without = np.array([_percent_reach(scores[:, keep], [costs[k] for k in keep], r) for r in rows])
    diff = free["paired_difference"]["knapsack_percent_layers_at_full_quality"]
    assert diff["estimate"] == pytest.approx(summary["knapsack"]["percent_layers_at_full_quality"]
                                             - free["knapsack_percent_layers_at_full_quality"])
    assert diff["estimate"] < 0  # healed candidates save layers here
    assert diff["ci95"] == pytest.approx(np.percentile(whole - without, [2.5, 97.5]))
    assert free["knapsack_percent_layers_at_full_quality_ci95"] == pytest.approx(np.percentile(without, [2.5, 97.5]))
    layers = np.array([costs[k] for k in _rule_columns(scores, costs)], dtype=float)
    free_cols = _rule_columns(scores[:, keep], [costs[k] for k in keep])
    free_layers = np.array([costs[keep[k]] for k in free_cols], dtype=float)
    rule = free["paired_difference"]["rule_mean_layers"]
    assert rule["estimate"] == pytest.approx((layers - free_layers).mean())
    assert rule["ci95"] == pytest.approx(np.percentile((layers - free_layers)[rows].mean(axis=1), [2.5, 97.5]))
    assert "mean_layers_ci95" in free["rule"]


def test_summary_is_fast_with_intervals(tmp_path):
    """N=300, K=9 and N=50, K=24 with every interval: a few seconds (the plain DP x 200 took far longer)."""
    rng = np.random.default_rng(1)
    for n, costs in ((300, [20, 22, 24, 25, 26, 27, 28, 29, 30]), (50, list(range(8, 30))[:23] + [30])):
        full = rng.uniform(5, 40, n)
        records = [record(i, [max(0.0, round(full[i] * (c / 30) ** 2 + rng.normal(0, 4), 1)) for c in costs[:-1]]
                          + [round(full[i], 1)], costs) for i in range(n)]
        folder = write_run(tmp_path / f"n{n}", records)
        summarize_run(folder)  # imports and caches warm
        start = time.perf_counter()
        summary = summarize_run(folder)
        assert time.perf_counter() - start < 8.0
        assert summary["knapsack"]["percent_layers_at_full_quality_ci95"][0] > 0


def test_oracle_command_prints_intervals():
    from skiporacle.cli.model_commands import _ci

    assert _ci([20.04, 27.5], " %") == " (95 % CI 20.0-27.5 %)"
    assert _ci(None, " %") == ""


# --- token-weighted cost ----------------------------------------------------------------------


def test_token_weighted_cost(tmp_path):
    costs = [3, L]
    records = [record(0, [10.0, 10.0], costs, tokens=[30, 20]), record(1, [0.0, 10.0], costs, tokens=[40, 10])]
    summary = summarize_run(write_run(tmp_path / "run", records))
    rule = summary["rule"]  # picks exit:3 (30 tokens) on sequence 0, the full model (10 tokens) on sequence 1
    assert rule["mean_percent_layers"] == rule["mean_percent_layers_per_sequence"] == 75.0
    assert rule["percent_layer_tokens"] == pytest.approx(100 * (3 * 30 + 6 * 10) / ((30 + 10) * 6))
    assert rule["percent_of_full_layer_tokens"] == pytest.approx(100 * (3 * 30 + 6 * 10) / ((20 + 10) * 6))
    static = summary["static"][0]
    assert static["percent_layer_tokens"] == pytest.approx(50.0)
    assert static["percent_of_full_layer_tokens"] == pytest.approx(100 * 3 * 70 / (30 * 6))
    assert summary["rule_exact"]["percent_layer_tokens"] == 100.0
    assert "percent_layer_tokens_ci95" in rule


# --- the full model's other metrics -----------------------------------------------------------


@pytest.mark.parametrize("metric, names", [("rougeL", ("rouge1", "rouge2", "rougeL", "rougeLsum")),
                                           ("chrf", ("bleu", "chrf")), ("exact_match", ("exact_match",))])
def test_full_metrics(tmp_path, metric, names):
    from skiporacle.eval.metrics import all_corpus_scores, corpus_score, sequence_scores

    texts = ["the cat sat on the mat #### 4", "a dog ran in the park #### 5", "birds fly south #### 7"]
    refs = [["the cat is on the mat #### 4"], ["the dog ran #### 6", "a dog ran in a park #### 5"], ["birds #### 8"]]
    records = [record(i, [1.0, 2.0], [3, L], outputs=["x", t], references=r) for i, (t, r) in enumerate(zip(texts, refs))]
    got = summarize_run(write_run(tmp_path / "run", records, metric=metric))["full_metrics"]
    assert tuple(got["corpus"]) == names and tuple(got["sequence_mean"]) == names
    corpus = all_corpus_scores(texts, refs)
    for name in names:
        assert got["sequence_mean"][name] == pytest.approx(np.mean(sequence_scores(name, texts, refs)))
        expected = corpus_score(name, texts, refs) if name == "exact_match" else corpus[name]
        assert got["corpus"][name] == pytest.approx(expected)


# --- the split-reference oracle ---------------------------------------------------------------

FIRST, OTHER = "alpha beta gamma delta", "one two three four"


def split_records(n=6):
    """exit:2 copies reference 1 (ROUGE-L 100 there, 0 on reference 2); exit:4 and the full model do better on
    reference 2.  Record scores are the run's (best over both references)."""
    outputs = [FIRST, "alpha beta one two", "alpha one two three"]
    return [record(i, [100.0, 50.0, 75.0], [2, 4, L], outputs=outputs, references=[FIRST, OTHER]) for i in range(n)]


def test_split_reference_chooses_with_reference_one_and_judges_with_the_others(tmp_path):
    folder = write_run(tmp_path / "run", split_records())
    summary = summarize_run(folder)
    split = summary["split_reference"]
    assert split["references_per_sequence"] == {"min": 2, "max": 2}
    inside, held = split["in_sample"], split["held_out"]
    # Reference 1: exit:2 scores 100, the full model 25, so both oracles take exit:2.
    assert inside["full_mean_score"] == pytest.approx(25.0)
    assert inside["rule"]["mean_layers"] == 2.0 and inside["rule"]["mean_score"] == pytest.approx(100.0)
    assert inside["knapsack"]["layers_at_full_quality"] == 2.0
    assert inside["knapsack"]["gain_at_full_compute"] == pytest.approx(75.0)
    # Reference 2: exit:2 scores 0, the full model 75, and no budget's choice reaches it.
    assert held["full_mean_score"] == pytest.approx(75.0)
    assert held["rule"]["mean_score"] == 0.0 and held["rule"]["mean_score_minus_full"] == pytest.approx(-75.0)
    knap = held["knapsack"]
    assert knap["layers_at_full_quality"] is None and knap["percent_layers_at_full_quality"] is None
    assert knap["resamples_not_reaching"] == 200 and knap["percent_layers_at_full_quality_ci95"] == [100.0, 100.0]
    assert knap["gain_at_full_compute"] == pytest.approx(-75.0) and knap["gain_at_full_compute_ci95"] == pytest.approx([-75, -75])
    assert all(p["mean_score"] == 0.0 and p["mean_score_first"] == 100.0 for p in knap["curve"])
    assert [p["mean_layers"] for p in knap["curve"]][:2] == [2.0, 2.25]
    paired = split["paired_difference"]
    assert paired["knapsack_percent_layers_at_full_quality"]["ci95"] == pytest.approx([100 - 100 / 3] * 2)
    assert paired["gain_at_full_compute"]["estimate"] == pytest.approx(-150.0)
    # The in-sample headline still uses the records' own scores.
    assert summary["knapsack"]["layers_at_full_quality"] == 2.0 and summary["full_mean_score"] == 75.0
    cache = json.loads((folder / "split_scores.json").read_text(encoding="utf-8"))
    assert cache["sequences"]["s000"]["first"] == [100.0, 50.0, 25.0]
    assert cache["sequences"]["s000"]["others"] == [0.0, 50.0, 75.0]


def test_split_reference_reaches_when_a_cheap_choice_holds_up(tmp_path):
    records = split_records()
    for r in records[:3]:  # the cheap output covers both references, better than the full model's
        r["candidates"][0]["output"], r["full"]["output"] = f"{FIRST} {OTHER}", "alpha one"
    for r in records[3:]:  # here reference 1 and the others agree: the full output is best on both
        r["candidates"][0]["output"], r["full"]["output"] = "zzz", f"{FIRST} {OTHER}"
    split = summarize_run(write_run(tmp_path / "run", records))["split_reference"]
    held = split["held_out"]["knapsack"]
    # Two of the last three sequences must move from exit:2 (0) to exit:4 (50): 16 layers over 6 sequences.
    assert held["layers_at_full_quality"] == pytest.approx(16 / 6)
    assert split["in_sample"]["knapsack"]["layers_at_full_quality"] == pytest.approx(16 / 6)
    assert held["resamples_not_reaching"] == 0
    assert split["paired_difference"]["knapsack_percent_layers_at_full_quality"]["estimate"] == pytest.approx(0.0)


def test_split_reference_only_with_two_references_everywhere(tmp_path):
    records = split_records()
    records[3]["references"] = [FIRST]
    summary = summarize_run(write_run(tmp_path / "run", records))
    assert "split_reference" not in summary and not (tmp_path / "run" / "split_scores.json").exists()


def test_split_scores_cache_is_keyed_by_content(tmp_path):
    from skiporacle.oracle.splitref import split_scores

    records = split_records(2)
    first, others = split_scores(typed(records), "rougeL", tmp_path)
    records[1]["candidates"][0]["output"] = OTHER  # a changed output is scored afresh, not read from the cache
    first2, others2 = split_scores(typed(records), "rougeL", tmp_path)
    assert first2[0].tolist() == first[0].tolist() and others2[1, 0] == 100.0 and first2[1, 0] == 0.0
    (tmp_path / "split_scores.json").write_text("{broken", encoding="utf-8")
    assert split_scores(typed(records), "rougeL", tmp_path)[1].tolist() == others2.tolist()


def test_curves_have_split_reference_series(tmp_path):
    from skiporacle.oracle.curves import curve_rows, write_curves
    from skiporacle.oracle.frontier import best_totals, frontiers
    from skiporacle.oracle.choose import KnapsackCurve
    from skiporacle.oracle.bootstrap import resample_rows
    from skiporacle.oracle.table import RunTable

    records = split_records()
    for r in records[:3]:
        r["candidates"][0]["output"] = f"{FIRST} {OTHER}"
        r["candidates"][0]["score"] = 90.0
    rows = curve_rows(typed(records), 0.0, metric="rougeL", out=tmp_path)
    series = {r["series"] for r in rows}
    assert {"knapsack-first-reference", "knapsack-split-reference", "rule-split-reference",
            "full-split-reference"} <= series
    assert next(r for r in rows if r["series"] == "full-split-reference")["mean_score"] == pytest.approx(75.0)
    # The knapsack band: all RESAMPLES resamples, drawn in id order.
    table = RunTable.from_records(typed(records))
    costs, scores = table.costs, table.scores
    boots = [KnapsackCurve(best_totals(frontiers(scores, costs), r, L), 6) for r in resample_rows(
        [r["id"] for r in records], 0)]
    point = next(r for r in rows if r["series"] == "knapsack" and r["spec"] == "budget:3")
    ys = [b.mean_score_at(3.0) for b in boots]
    assert [point["low"], point["high"]] == pytest.approx(np.percentile(ys, [2.5, 97.5]))
    assert "knapsack-split-reference" not in {r["series"] for r in curve_rows(typed(records), 0.0)}
    folder = write_run(tmp_path / "run", records)
    csv_path, png_path = write_curves(folder, typed(records), json.loads((folder / SETTINGS).read_text()))
    assert "knapsack-split-reference" in csv_path.read_text() and png_path.stat().st_size > 0


# --- tasks with several references ------------------------------------------------------------


def _data_or_skip():
    from skiporacle.data.tasks import data_root

    try:
        data_root()
    except BadInput:
        pytest.skip("no shared datasets folder")


def test_cnndm_keeps_highlights_first_and_adds_the_crowd_references():
    from skiporacle.data.tasks import load_task

    _data_or_skip()
    _, (first, _) = load_task("cnndm", limit=2)
    assert len(first.references) == 11
    assert first.references[0] == (
        "Andros Townsend an 83rd minute sub in Tottenham's draw with Burnley. He was unable to "
        "find a winner as the game ended without a goal. Townsend had clashed with Paul Merson "
        "last week over England call-up.")
    assert first.references[1].startswith("Sports columnist Paul Merson and Andros Townsend are in the midst")
    assert len(set(first.references)) == 11 and not any(" 's" in r or " ." in r for r in first.references)


def test_wmt22_de_en_has_two_references_for_the_split():
    from skiporacle.data.tasks import load_task
    from skiporacle.oracle.splitref import has_split

    _data_or_skip()
    _, examples = load_task("wmt22:de-en", limit=3)
    records = [record(i, [10.0, 20.0], [3, L], outputs=["Hello world.", e.references[0]], references=list(e.references))
               for i, e in enumerate(examples)]
    assert has_split(typed(records))
    from skiporacle.oracle.splitref import split_scores

    first, others = split_scores(typed(records), "chrf")
    assert first[:, -1].tolist() == pytest.approx([100.0] * 3) and (others[:, -1] < 100).all()


# --- the plausibility guard -------------------------------------------------------------------


def guard_records():
    """Four sequences, costs 2, 4, 6: the rule takes exit:2 on sequences 0 and 1, exit:4 on 2, the full model on 3."""
    table = [[50.0, 50.0, 50.0], [40.0, 10.0, 30.0], [0.0, 20.0, 20.0], [0.0, 0.0, 10.0]]
    return [record(i, row, [2, 4, L], specs=["exit:2", "exit:4"], identical=[False, i == 3]) for i, row in enumerate(table)]


def plausibility(margin=2.0):
    nll = {"s000": {"full": 1.0, "candidates": {"exit:2": 3.5, "exit:4": 2.0}},  # exit:2 too far above the full output
           "s001": {"full": 1.0, "candidates": {"exit:2": 3.0, "exit:4": 9.0}},  # exactly at the margin: plausible
           "s002": {"full": 2.0, "candidates": {"exit:2": None, "exit:4": 2.5}},  # null: implausible
           "s003": {"full": None, "candidates": {"exit:2": 1.0, "exit:4": None}}}  # exit:4 is identical to full
    return {"margin": margin, "sequences": nll}


def test_plausible_mask():
    from skiporacle.oracle.guard import plausible_mask

    mask = plausible_mask(typed(guard_records()), plausibility(), 2.0)
    assert mask.dtype == bool and mask.tolist() == [[False, True, True], [True, False, True], [False, True, True],
                                                    [False, True, True]]
    assert plausible_mask(typed(guard_records()), plausibility(), 10.0)[0].tolist() == [True, True, True]
    bad = plausibility()
    del bad["sequences"]["s001"]["candidates"]["exit:4"]
    with pytest.raises(BadInput, match="'s001' has no NLL for 'exit:4'"):
        plausible_mask(typed(guard_records()), bad, 2.0)
    bad = plausibility()
    del bad["sequences"]["s002"]
    with pytest.raises(BadInput, match="sequence 's002'"):
        plausible_mask(typed(guard_records()), bad, 2.0)
    bad = plausibility()
    bad["sequences"]["s000"]["full"] = "low"
    with pytest.raises(BadInput, match="not a number"):
        plausible_mask(typed(guard_records()), bad, 2.0)
    for margin in (-1.0, float("nan"), "2"):
        with pytest.raises(BadInput, match="margin"):
            plausible_mask(typed(guard_records()), plausibility(), margin)


def test_guarded_block(tmp_path):
    folder = write_run(tmp_path / "run", guard_records())
    assert "guarded" not in summarize_run(folder)
    (folder / "plausibility.json").write_text(json.dumps(plausibility()), encoding="utf-8")
    summary = summarize_run(folder)
    guarded = summary["guarded"]
    assert guarded["margin"] == 2.0
    assert guarded["plausible_percent"] == pytest.approx(100 * 4 / 8)
    assert guarded["rule_choices_removed"] == 1  # sequence 0's exit:2
    # Guarded rule: sequence 0 takes exit:4, 1 exit:2, 2 exit:4, 3 the full model.
    assert guarded["rule"]["mean_layers"] == pytest.approx((4 + 2 + 4 + 6) / 4)
    assert summary["rule"]["mean_layers"] == pytest.approx((2 + 2 + 4 + 6) / 4)
    assert guarded["paired_difference"]["rule_mean_layers"]["estimate"] == pytest.approx(0.5)
    knap = guarded["knapsack"]
    assert knap["layers_at_full_quality"] >= summary["knapsack"]["layers_at_full_quality"]
    assert knap["percent_layers_at_full_quality_ci95"][0] <= knap["percent_layers_at_full_quality"]
    diff = guarded["paired_difference"]["knapsack_percent_layers_at_full_quality"]
    assert diff["estimate"] == pytest.approx(knap["percent_layers_at_full_quality"]
                                             - summary["knapsack"]["percent_layers_at_full_quality"])
    assert diff["ci95"][0] >= 0  # the guard can only remove choices
    (folder / "plausibility.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BadInput, match="plausibility.json"):
        summarize_run(folder)
    stale = plausibility()
    del stale["sequences"]["s003"]  # made before the run's last sequence was written
    (folder / "plausibility.json").write_text(json.dumps(stale), encoding="utf-8")
    summary = summarize_run(folder)
    assert "guarded" not in summary and "lacks 1 of the 4 sequences (e.g. 's003')" in summary["guarded_skipped"]


# --- resummarize ------------------------------------------------------------------------------


def test_resummarize_keeps_the_timing_fields(tmp_path):
    from skiporacle.oracle.summary import resummarize

    old = {"wall_seconds": 123.5, "workers": 2, "resumed_sequences": 1, "machine": {"cpus": 2}, "rule": {}}
    folder = write_run(tmp_path / "run", guard_records(), summary=old)
    (folder / "plausibility.json").write_text(json.dumps(plausibility()), encoding="utf-8")
    summary = resummarize(folder)
    assert {k: summary[k] for k in ("wall_seconds", "workers", "resumed_sequences", "machine")} == {
        k: old[k] for k in ("wall_seconds", "workers", "resumed_sequences", "machine")}
    assert "guarded" in summary and "mean_layers_ci95" in summary["rule"]
    assert json.loads((folder / SUMMARY).read_text(encoding="utf-8")) == summary
    fresh = write_run(tmp_path / "fresh", guard_records())
    assert resummarize(fresh)["wall_seconds"] is None
    with pytest.raises(BadInput, match="no finished sequence"):
        resummarize(write_run(tmp_path / "empty", []))
    with pytest.raises(BadInput, match="not a skiporacle run folder"):
        resummarize(tmp_path / "nothing")


def test_full_metrics_use_the_references_a_sequence_is_scored_with():
    """CNN/DM scores against the highlights alone, so its full-model metrics must too (not the best of 11)."""
    from skiporacle.data.tasks import scored_references
    from skiporacle.oracle.summary import full_metrics

    cat = record(0, [1.0, 2.0], [3, L], outputs=["x", "the cat sat on the mat"],
                 references=["a dog ran", "the cat sat on the mat"])
    assert scored_references("cnndm") == 1 and scored_references("xsum") == 0 and scored_references("file") == 0
    assert full_metrics(typed([cat]), "rougeL")["corpus"]["rougeL"] == pytest.approx(100.0)
    assert full_metrics(typed([cat]), "rougeL", scored_references("cnndm"))["corpus"]["rougeL"] == pytest.approx(0.0)
