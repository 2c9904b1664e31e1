"""Tests for the oracle: selection rules, exact knapsack, run folder records, allocation
spaces, and a tiny end-to-end oracle run (records, summary, resume, determinism, curves).

The end-to-end runs use `tiny_llm_dir` (a saved 6-layer random Llama with the real
SmolLM2 tokenizer) and `oracle_data` (8 short JSONL rows); torch runs on one thread.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from conftest import NUM_LAYERS, ORACLE_MAX_NEW, one_thread
from skiporacle.data.errors import BadInput
from skiporacle.oracle.records import (
    ALLOCATIONS,
    IMPORTANCE,
    SETTINGS,
    SUMMARY,
    append_records,
    load_run,
    open_run,
    read_records,
)
from skiporacle.oracle.candidate_list import parse_spaces
from skiporacle.oracle.schema import CandidateRecord, FullRecord, SequenceRecord
from skiporacle.oracle.choose import KnapsackCurve, cheapest_identical, cheapest_matching, knapsack
from skiporacle.search.allocation import full, uniform
from skiporacle.search.spaces import (
    early_exit_space,
    file_space,
    importance_space,
    parse_budgets,
    random_space,
    uniform_space,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


# --- knapsack -------------------------------------------------------------------------------


def brute_best_totals(scores: np.ndarray, costs: list[int]) -> np.ndarray:
    """best[c] = max total score over all choices (one candidate per sequence) with total cost <= c."""
    n, k = scores.shape
    best = np.full(n * max(costs) + 1, -np.inf)
    for choice in itertools.product(range(k), repeat=n):
        cost = sum(costs[j] for j in choice)
        total = sum(scores[i, j] for i, j in enumerate(choice))
        best[cost:] = np.maximum(best[cost:], total)
    return best


@pytest.mark.parametrize("instance", range(25))
def test_knapsack_equals_brute_force(instance):
    rng = np.random.default_rng(1000 + instance)
    n, k = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    costs = [int(c) for c in rng.integers(1, 7, size=k)]
    scores = rng.uniform(0, 100, size=(n, k))
    if instance % 3 == 0:  # ties and zeros, as real metrics give
        scores = np.round(scores / 25) * 25
    curve = knapsack(scores, costs)
    expected = brute_best_totals(scores, costs)
    assert curve.num_sequences == n
    assert curve.best_total.shape == expected.shape
    np.testing.assert_allclose(curve.best_total, expected, rtol=0, atol=1e-9)
    for c in range(len(expected)):
        # The summary's grid c / n must land exactly on budget c.
        got = curve.mean_score_at(c / n)
        if np.isfinite(expected[c]):
            assert got == pytest.approx(expected[c] / n, abs=1e-9)
            reach = curve.layers_to_reach(expected[c] / n)
            assert reach is not None and reach <= c / n + 1e-12
        else:
            assert got == -math.inf
    assert curve.layers_to_reach(expected[-1] / n + 1) is None


def test_knapsack_hand_made():
    # Sequence 0: candidates score 10, 50, 60; sequence 1: 0, 0, 80; costs 1, 2, 4 layers.
    scores = np.array([[10.0, 50.0, 60.0], [0.0, 0.0, 80.0]])
    curve = knapsack(scores, [1, 2, 4])
    expected = [-np.inf, -np.inf, 10, 50, 50, 90, 130, 130, 140]
    np.testing.assert_array_equal(curve.best_total, expected)
    assert curve.mean_score_at(0.5) == -math.inf
    assert curve.mean_score_at(1.0) == 5.0
    assert curve.mean_score_at(1.25) == 5.0  # floor: 2.5 total layers -> budget 2
    assert curve.mean_score_at(1.5) == 25.0
    assert curve.mean_score_at(2.9) == 45.0
    assert curve.mean_score_at(3.0) == 65.0
    assert curve.mean_score_at(100.0) == 70.0  # past the end: the largest budget
    assert curve.layers_to_reach(70.0) == 4.0  # the full model's mean needs every layer
    assert curve.layers_to_reach(65.0) == 3.0
    assert curve.layers_to_reach(45.0) == 2.5
    assert curve.layers_to_reach(0.0) == 1.0
    assert curve.layers_to_reach(70.5) is None
    # Floating-point sums: 0.1 + 0.2 reaches a mean of 0.15 although 0.1 + 0.2 != 0.3.
    assert knapsack(np.array([[0.1], [0.2]]), [3]).layers_to_reach((0.1 + 0.2) / 2) == 3.0


def test_knapsack_curve_direct():
    curve = KnapsackCurve(np.array([-np.inf, 3.0, 6.0]), 3)
    assert curve.mean_score_at(1 / 3) == 1.0
    assert curve.mean_score_at(0.0) == -math.inf
    assert curve.layers_to_reach(2.0) == pytest.approx(2 / 3)


# --- rules ----------------------------------------------------------------------------------


def test_cheapest_matching_tolerance_and_ties():
    costs = [2, 4, 4, 6]  # the last column is the full model
    scores = np.array(
        [
            [79.0, 80.0, 85.0, 80.0],  # cost-4 tie: the higher score (index 2)
            [80.0, 90.0, 90.0, 80.0],  # the cheapest matches
            [10.0, 85.0, 85.0, 80.0],  # cost and score tie: the lower index
            [10.0, 20.0, 30.0, 80.0],  # only the full model
        ]
    )
    full_scores = scores[:, -1]
    assert cheapest_matching(scores, costs, full_scores, 0.0).tolist() == [2, 0, 1, 3]
    assert cheapest_matching(scores, costs, full_scores, 1.0).tolist() == [0, 0, 1, 3]
    assert cheapest_matching(scores, costs, full_scores, 70.0).tolist() == [0, 0, 0, 0]
    # Nothing qualifies (the full model misses itself with a negative tolerance).
    assert cheapest_matching(scores, costs, full_scores, -1.0).tolist() == [2, 1, 1, -1]
    assert cheapest_matching(np.array([[10.0, 20.0]]), [1, 2], np.array([50.0]), 0.0).tolist() == [-1]
    # Float noise does not break a match: 0.1 + 0.2 matches 0.3.
    assert cheapest_matching(np.array([[0.1 + 0.2, 0.3]]), [1, 2], np.array([0.3]), 0.0).tolist() == [0]


def test_cheapest_matching_unsorted_costs():
    costs = [4, 2, 4, 2, 6]
    scores = np.array(
        [
            [90.0, 50.0, 95.0, 60.0, 55.0],  # cost 2: only index 3 matches
            [90.0, 60.0, 95.0, 60.0, 55.0],  # cost 2: both match with equal scores -> index 1
            [90.0, 10.0, 95.0, 10.0, 55.0],  # cost 4: index 2 scores higher
            [90.0, 70.0, 95.0, 80.0, 55.0],  # cost 2: index 3 scores higher
        ]
    )
    assert cheapest_matching(scores, costs, scores[:, -1], 0.0).tolist() == [3, 1, 2, 3]


def test_cheapest_identical():
    costs = [2, 4, 4, 6]
    identical = np.array(
        [
            [False, True, True, True],
            [False, False, False, True],
            [True, False, False, True],
            [False, True, True, True],
            [False, False, False, False],
        ]
    )
    scores = np.array(
        [
            [90.0, 40.0, 60.0, 60.0],  # a cheaper, better-scoring candidate is not identical
            [90.0, 90.0, 90.0, 50.0],
            [50.0, 50.0, 50.0, 50.0],
            [50.0, 60.0, 60.0, 60.0],  # tie in cost and score: lower index
            [50.0, 60.0, 60.0, 60.0],  # nothing identical
        ]
    )
    assert cheapest_identical(identical, scores, costs).tolist() == [2, 3, 0, 1, -1]


# --- records --------------------------------------------------------------------------------


def _rec(i: int) -> SequenceRecord:
    text = "ünïcode ✓\u2028line"
    full_model = FullRecord(text, 3, 50.0 + i, 4, (5, 6, 7))
    skipped = CandidateRecord("uniform:2", (0, 3), 2, 0.5, text[:3], 2, 40.0 + i / 3, False)
    return SequenceRecord(f"s{i}", text, (text, "b"), full_model, (skipped,), "all", "uniform:2")


def test_records_round_trip(tmp_path):
    assert read_records(tmp_path) == []
    append_records(tmp_path, [_rec(0), _rec(1)])
    append_records(tmp_path, [])
    append_records(tmp_path, [_rec(2)])
    assert read_records(tmp_path) == [_rec(0), _rec(1), _rec(2)]
    assert (tmp_path / ALLOCATIONS).read_bytes().count(b"\n") == 3


@pytest.mark.parametrize("tail", [b'{"id": "s2", "val', b'{"id": "s2", "value": 2}', b"\n", b"{broken\n"],
                         ids=["partial", "no-newline", "blank", "bad-last-line"])
def test_torn_last_line_is_cut(tmp_path, tail):
    append_records(tmp_path, [_rec(0), _rec(1)])
    good = (tmp_path / ALLOCATIONS).read_bytes()
    with open(tmp_path / ALLOCATIONS, "ab") as f:
        f.write(tail)
    assert read_records(tmp_path) == [_rec(0), _rec(1)]
    assert (tmp_path / ALLOCATIONS).read_bytes() == good + tail  # without repair nothing changes
    assert read_records(tmp_path, repair=True) == [_rec(0), _rec(1)]
    assert (tmp_path / ALLOCATIONS).read_bytes() == good
    append_records(tmp_path, [_rec(2)])
    assert read_records(tmp_path) == [_rec(0), _rec(1), _rec(2)]


def test_torn_only_line(tmp_path):
    (tmp_path / ALLOCATIONS).write_bytes(b'{"id": "s0"')
    assert read_records(tmp_path, repair=True) == []
    assert (tmp_path / ALLOCATIONS).read_bytes() == b""


@pytest.mark.parametrize("middle", [b'{"id": "s1", "val\n', b"\n", b"not json\n", b"\xff\xfe\n"])
def test_corrupt_middle_line_is_refused(tmp_path, middle):
    append_records(tmp_path, [_rec(0)])
    with open(tmp_path / ALLOCATIONS, "ab") as f:
        f.write(middle)
    append_records(tmp_path, [_rec(2)])
    before = (tmp_path / ALLOCATIONS).read_bytes()
    for repair in (False, True):
        with pytest.raises(BadInput, match="line 2 is corrupt"):
            read_records(tmp_path, repair=repair)
    assert (tmp_path / ALLOCATIONS).read_bytes() == before


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_open_run_new_and_resume(tmp_path):
    out = tmp_path / "run"
    settings = {"model": "m", "limit": 3, "spaces": ["uniform"]}
    assert open_run(out, settings, resume=False) == set()
    assert json.loads((out / SETTINGS).read_text()) == settings
    append_records(out, [_rec(0), _rec(1)])
    with open(out / ALLOCATIONS, "ab") as f:
        f.write(b'{"id": "s2"')
    assert open_run(out, settings, resume=True) == {"s0", "s1"}
    assert read_records(out) == [_rec(0), _rec(1)]  # the torn line was cut


def test_open_run_refusals_leave_files_untouched(tmp_path):
    out = tmp_path / "run"
    settings = {"model": "m", "limit": 3, "max_new_tokens": 8, "spaces": ["uniform"]}
    open_run(out, settings, resume=False)
    append_records(out, [_rec(0)])
    with open(out / ALLOCATIONS, "ab") as f:
        f.write(b'{"id": "s1"')  # a torn line must survive a refusal too
    before = _folder_bytes(out)
    with pytest.raises(BadInput, match="already holds a run.*--resume"):
        open_run(out, settings, resume=False)
    assert _folder_bytes(out) == before
    with pytest.raises(BadInput, match=r"different settings \(max_new_tokens: 8 there, 9 now\)"):
        open_run(out, {**settings, "max_new_tokens": 9}, resume=True)
    assert _folder_bytes(out) == before
    with pytest.raises(BadInput, match="different settings.*seed"):
        open_run(out, {**settings, "seed": 1}, resume=True)  # a key only one side has
    assert _folder_bytes(out) == before


def test_open_run_restart_without_records_takes_the_new_settings(tmp_path):
    """A folder whose run stopped before its first record may be reused with other settings
    (open_run accepts it without --resume); its fingerprint must then be the new run's, so
    that resuming the new run works and resuming the old one is refused."""
    out = tmp_path / "run"
    old = {"model": "m", "max_new_tokens": 8}
    new = {"model": "m", "max_new_tokens": 16}
    open_run(out, old, resume=False)  # the old run stops here, before any record
    assert open_run(out, new, resume=False) == set()
    append_records(out, [_rec(0)])  # a record made with the new settings
    assert json.loads((out / SETTINGS).read_text()) == new
    assert open_run(out, new, resume=True) == {"s0"}
    with pytest.raises(BadInput, match="different settings"):
        open_run(out, old, resume=True)


def test_load_run(tmp_path):
    with pytest.raises(BadInput, match="not a skiporacle run folder"):
        load_run(tmp_path)
    open_run(tmp_path, {"a": 1}, resume=False)
    assert load_run(tmp_path) == ({"a": 1}, [], None)
    append_records(tmp_path, [_rec(0)])
    (tmp_path / SUMMARY).write_text('{"n": 1}')
    assert load_run(tmp_path) == ({"a": 1}, [_rec(0)], {"n": 1})


# --- allocation spaces ----------------------------------------------------------------------


def test_uniform_and_early_exit_spaces():
    assert [a.layers for a in uniform_space([2, 4], 6)] == [(0, 3), (0, 1, 3, 4)]
    assert [a.spec for a in uniform_space([2, 4], 6)] == ["uniform:2", "uniform:4"]
    assert [a.layers for a in early_exit_space([1, 3], 6)] == [(0,), (0, 1, 2)]
    assert [a.spec for a in early_exit_space([1, 3], 6)] == ["exit:1", "exit:3"]
    assert uniform_space([6], 6)[0] == uniform(6, 6) and uniform(6, 6).layers == full(6).layers
    for bad in (0, 7):
        with pytest.raises(BadInput, match=f"budget {bad} out of range"):
            uniform_space([bad], 6)
        with pytest.raises(BadInput, match=f"budget {bad} out of range"):
            early_exit_space([bad], 6)


def test_random_space():
    budgets = [1, 2, 5, 12, 30]
    a = random_space(budgets, 30, seed=7)
    assert random_space(budgets, 30, seed=7) == a  # seeded
    assert [x.layers for x in random_space(budgets, 30, seed=8)] != [x.layers for x in a]
    for b, alloc in zip(budgets, a):
        assert alloc.cost == b and alloc.layers[0] == 0 and alloc.num_layers == 30
        assert list(alloc.layers) == sorted(set(alloc.layers))
        assert alloc.spec == "random7:" + ",".join(map(str, alloc.layers))
    assert random_space([30], 30, seed=0)[0].layers == tuple(range(30))
    for bad in (0, 31):
        with pytest.raises(BadInput, match=f"budget {bad} out of range"):
            random_space([bad], 30, seed=0)


def test_importance_space_honours_drop_order():
    order = (3, 1, 5, 0, 2, 4)  # least damaging first
    got = importance_space([1, 2, 4, 6], order)
    assert [a.layers for a in got] == [(4,), (2, 4), (0, 2, 4, 5), (0, 1, 2, 3, 4, 5)]
    assert [a.spec for a in got] == ["importance:1", "importance:2", "importance:4", "importance:6"]
    for bad in (0, 7):
        with pytest.raises(BadInput, match=f"budget {bad} out of range"):
            importance_space([bad], order)


def test_file_space(tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps(["uniform:2", "exit:3", "0-2,5", "all"]))
    assert [a.layers for a in file_space(specs, 6)] == [(0, 3), (0, 1, 2), (0, 1, 2, 5), tuple(range(6))]
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps([[0, 2], [5, 1, 1]]))
    got = file_space(str(lists), 6)
    assert [a.layers for a in got] == [(0, 2), (1, 5)]
    assert [a.spec for a in got] == ["0,2", "1,5"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"[\"uniform:2\"", "not valid JSON"),
        (b"\xff\xfe[]", "not valid JSON"),
        (b"[]", "non-empty JSON list"),
        (b'{"a": [0, 1]}', "non-empty JSON list"),
        (b"[1.5]", "neither a spec nor a list"),
        (b"[[0, \"1\"]]", "neither a spec nor a list"),
        (b"[\"0-9\"]", "out of range"),
        (b"[[0, 6]]", "out of range"),
        (b"[[]]", "spec"),
        (b"[\"bogus:2\"]", "unknown kind"),
    ],
)
def test_file_space_bad_files(tmp_path, content, message):
    path = tmp_path / "alloc.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInput, match=message):
        file_space(path, 6)


def test_file_space_folder_is_bad_input(tmp_path):
    """A folder (or an unreadable file) given as file:PATH is bad input, not a crash."""
    with pytest.raises(BadInput):
        file_space(tmp_path, 6)


def test_parse_budgets():
    assert parse_budgets("4,2,4", 6) == [2, 4]
    assert parse_budgets(" 1 , 6 ,", 6) == [1, 6]
    for text, message in (("0,4", "budget 0 out of range"), ("7", "budget 7 out of range"), ("-1", "out of range"),
                          ("a", "expected comma-separated integers"), ("2.5", "expected comma-separated integers"),
                          ("", "none given"), (" , ", "none given")):
        with pytest.raises(BadInput, match=message):
            parse_budgets(text, 6)


def test_parse_spaces():
    assert parse_spaces("uniform, early-exit,importance") == ["uniform", "early-exit", "importance"]
    assert parse_spaces("random,file:/x/y.json") == ["random", "file:/x/y.json"]
    assert parse_spaces("healed,healed:m/x") == ["healed", "healed:m/x"]
    for text, message in (("bogus", "unknown space 'bogus'"), ("uniform,exit", "unknown space 'exit'"),
                          ("", "no allocation space"), (",", "no allocation space"),
                          ("uniform:3", "only file:PATH and healed"), ("file", "only file:PATH and healed"),
                          ("file:", "only file:PATH and healed")):
        with pytest.raises(BadInput, match=message):
            parse_spaces(text)


# --- end-to-end oracle run ------------------------------------------------------------------

SPACES = ("uniform", "early-exit", "importance", "random")
BUDGETS = (2, 4)
LIMIT = 6


def _settings(tiny_llm_dir, oracle_data):
    from skiporacle.oracle.oracle_settings import OracleSettings

    return OracleSettings(
        model=str(tiny_llm_dir), task="file", data_file=str(oracle_data), input_field="text",
        reference_field="summary", id_field="id", limit=LIMIT, offset=0, spaces=SPACES, budgets=BUDGETS,
        metric="rougeL", max_new_tokens=ORACLE_MAX_NEW, dtype="float32", seed=0, tolerance=0.0, calibration=2,
        prompt_under_allocation=False,
    )


@pytest.fixture(scope="module")
def oracle_run(tiny_llm_dir, oracle_data, tmp_path_factory):
    """(out, settings, summary) of one uninterrupted run."""
    from skiporacle.oracle.oracle_run import run_oracle

    settings = _settings(tiny_llm_dir, oracle_data)
    out = tmp_path_factory.mktemp("oracle") / "run"
    summary = run_oracle(settings, out, progress=False)
    return out, settings, summary


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ALLOCATIONS).read_text(encoding="utf-8").splitlines()]


def test_records_are_typed_and_stored_byte_for_byte(oracle_run):
    """Reading a run's file into SequenceRecords and writing them again gives the same bytes; a record
    written by hand with a missing field is one BadInput line naming the record."""
    out, _, _ = oracle_run
    lines = (out / ALLOCATIONS).read_text(encoding="utf-8").splitlines()
    records = read_records(out)
    assert len(records) == len(lines) == LIMIT
    assert [json.dumps(r.to_json(), ensure_ascii=False) for r in records] == lines
    first = records[0]
    assert first.columns[-1] is first.full and first.full.cost == NUM_LAYERS
    assert first.full.token_ids and len(first.full.token_ids) == first.full.tokens
    stored = json.loads(lines[0])
    del stored["full"]["score"]
    with pytest.raises(BadInput, match=f"record {first.id!r} is not a skiporacle sequence record"):
        SequenceRecord.from_json(stored)


def _expected_candidates(drop_order) -> list:
    allocations = (uniform_space(BUDGETS, NUM_LAYERS) + early_exit_space(BUDGETS, NUM_LAYERS)
                   + importance_space(BUDGETS, drop_order) + random_space(BUDGETS, NUM_LAYERS, 0))
    seen, unique = {full(NUM_LAYERS).layers}, []
    for a in allocations:
        if a.layers not in seen:
            seen.add(a.layers)
            unique.append(a)
    return unique


def test_oracle_records(oracle_run, oracle_data):
    out, settings, _ = oracle_run
    records = _records(out)
    rows = [json.loads(line) for line in oracle_data.read_text(encoding="utf-8").splitlines()]
    # Records are appended batch by batch (longest prompt first), not in file order.
    assert sorted(r["id"] for r in records) == [f"ex{i}" for i in range(LIMIT)]
    by_id = {r["id"]: r for r in records}
    importance = json.loads((out / IMPORTANCE).read_text(encoding="utf-8"))
    expected = _expected_candidates(importance["drop_order"])
    specs = [a.spec for a in expected]
    assert len({a.layers for a in expected}) == len(expected)
    assert specs[:4] == ["uniform:2", "uniform:4", "exit:2", "exit:4"]
    assert any(s.startswith("importance:") for s in specs), "fixture seed should give an importance candidate"
    for row in rows[:LIMIT]:
        record = by_id[row["id"]]
        assert set(record) == {"id", "prompt", "references", "full", "candidates", "choice"}
        assert row["text"] in record["prompt"]
        refs = row["summary"] if isinstance(row["summary"], list) else [row["summary"]]
        assert record["references"] == refs
        fullr = record["full"]
        assert set(fullr) == {"output", "tokens", "score", "cost", "token_ids"}
        assert fullr["cost"] == NUM_LAYERS
        assert fullr["tokens"] == len(fullr["token_ids"]) and 1 <= fullr["tokens"] <= ORACLE_MAX_NEW
        assert [c["spec"] for c in record["candidates"]] == specs
        for c, a in zip(record["candidates"], expected):
            assert set(c) == {"spec", "layers", "cost", "fraction", "output", "tokens", "score", "identical"}
            assert c["layers"] == list(a.layers) and c["cost"] == a.cost
            assert c["fraction"] == pytest.approx(a.cost / NUM_LAYERS)
            assert 0 <= c["score"] <= 100 and 1 <= c["tokens"] <= ORACLE_MAX_NEW
            assert isinstance(c["identical"], bool)
            if c["identical"]:
                assert c["output"] == fullr["output"] and c["tokens"] == fullr["tokens"]
        # The choices follow from the scores and costs.
        scores = np.array([[c["score"] for c in record["candidates"]] + [fullr["score"]]])
        costs = [c["cost"] for c in record["candidates"]] + [fullr["cost"]]
        identical = np.array([[c["identical"] for c in record["candidates"]] + [True]])
        all_specs = specs + ["all"]
        tol = all_specs[cheapest_matching(scores, costs, scores[:, -1], settings.tolerance)[0]]
        exact = all_specs[cheapest_identical(identical, scores, costs)[0]]
        assert record["choice"] == {"tolerance": tol, "exact": exact}
    # Rows whose reference is the full model's own output score 100 (fixture design).
    assert by_id["ex0"]["full"]["score"] == 100.0 and by_id["ex3"]["full"]["score"] == 100.0
    assert len(by_id["ex5"]["references"]) == 2
    assert len({r["choice"]["tolerance"] for r in records}) >= 2, "fixture data should give varied choices"


def test_oracle_importance_file(oracle_run):
    out, _, _ = oracle_run
    importance = json.loads((out / IMPORTANCE).read_text(encoding="utf-8"))
    assert importance["calibration_ids"] == ["ex6", "ex7"]
    evaluated = {r["id"] for r in _records(out)}
    assert not evaluated & set(importance["calibration_ids"])
    assert sorted(importance["drop_order"]) == list(range(NUM_LAYERS))
    assert len(importance["perplexity_without"]) == NUM_LAYERS
    assert importance["tokens"] > 0 and importance["full_perplexity"] > 0
    # Least damaging first.
    ppl = importance["perplexity_without"]
    assert [ppl[i] for i in importance["drop_order"]] == sorted(ppl)


def test_oracle_settings_file(oracle_run):
    out, settings, _ = oracle_run
    stored = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    for key, value in asdict(settings).items():
        assert stored[key] == (list(value) if isinstance(value, tuple) else value)
    record = _records(out)[0]
    assert stored["candidates"] == [[c["spec"], c["layers"]] for c in record["candidates"]] + [
        ["all", list(range(NUM_LAYERS))]]


def test_oracle_summary(oracle_run, oracle_data):
    out, settings, summary = oracle_run
    assert json.loads((out / SUMMARY).read_text(encoding="utf-8")) == summary
    records = _records(out)
    full_scores = [r["full"]["score"] for r in records]
    assert summary["sequences"] == LIMIT and summary["num_layers"] == NUM_LAYERS
    assert summary["full_mean_score"] == pytest.approx(sum(full_scores) / LIMIT, abs=1e-9)
    assert summary["metric"] == "rougeL" and summary["seed"] == 0
    assert summary["model"] == str(settings.model)
    assert summary["task"] == f"file:{oracle_data}"
    assert summary["resumed_sequences"] == 0 and summary["workers"] == 1
    assert summary["wall_seconds"] > 0
    versions = summary["versions"]
    assert {"python", "skiporacle", "torch", "transformers", "numpy"} <= set(versions)
    assert versions["skiporacle"] and versions["torch"]

    specs = [c["spec"] for c in records[0]["candidates"]] + ["all"]
    costs = [c["cost"] for c in records[0]["candidates"]] + [NUM_LAYERS]
    scores = np.array([[c["score"] for c in r["candidates"]] + [r["full"]["score"]] for r in records])
    # Static baselines: one per candidate plus the full model.
    assert [s["spec"] for s in summary["static"]] == specs
    for k, s in enumerate(summary["static"]):
        assert s["cost"] == costs[k]
        assert s["mean_score"] == pytest.approx(scores[:, k].mean(), abs=1e-9)
        assert s["percent_layers"] == pytest.approx(100 * costs[k] / NUM_LAYERS)
        assert s["space"] == {"uniform": "uniform", "exit": "early-exit", "importance": "importance",
                              "all": "full"}.get(s["spec"].split(":")[0], "random")
    assert summary["static"][-1]["identical_percent"] == 100.0
    # The rule oracles agree with the records' choices.
    by_spec = dict(zip(specs, costs))
    for key, field in (("rule", "tolerance"), ("rule_exact", "exact")):
        chosen = [r["choice"][field] for r in records]
        layers = [by_spec[s] for s in chosen]
        assert summary[key]["mean_layers"] == pytest.approx(sum(layers) / LIMIT)
        assert summary[key]["mean_percent_layers"] == pytest.approx(100 * sum(layers) / LIMIT / NUM_LAYERS)
        assert summary[key]["skipping_sequences"] == sum(x < NUM_LAYERS for x in layers)
        mean_score = np.mean([scores[i, specs.index(s)] for i, s in enumerate(chosen)])
        assert summary[key]["mean_score"] == pytest.approx(mean_score, abs=1e-9)
    assert summary["rule"]["tolerance"] == 0.0 and summary["rule"]["mean_score"] >= summary["full_mean_score"] - 1e-9
    # Knapsack: reaches full quality no later than the rule, and its curve matches the DP.
    curve = knapsack(scores, costs)
    reach = summary["knapsack"]["layers_at_full_quality"]
    assert reach == curve.layers_to_reach(float(scores[:, -1].mean()))
    assert reach <= summary["rule"]["mean_layers"] + 1e-9
    assert summary["knapsack"]["percent_layers_at_full_quality"] == pytest.approx(100 * reach / NUM_LAYERS)
    points = summary["knapsack"]["curve"]
    assert points and all(np.isfinite(p["mean_score"]) for p in points)
    for p in points:
        assert p["mean_score"] == pytest.approx(curve.mean_score_at(p["mean_layers"]))
    assert [p["mean_layers"] for p in points] == sorted(p["mean_layers"] for p in points)


def test_oracle_is_deterministic(oracle_run, tmp_path):
    from skiporacle.oracle.oracle_run import run_oracle

    out, settings, _ = oracle_run
    again = tmp_path / "again"
    run_oracle(settings, again, progress=False)
    assert (again / ALLOCATIONS).read_bytes() == (out / ALLOCATIONS).read_bytes()
    assert (again / SETTINGS).read_bytes() == (out / SETTINGS).read_bytes()
    assert (again / IMPORTANCE).read_bytes() == (out / IMPORTANCE).read_bytes()


def test_oracle_resume_after_interruption(oracle_run, tmp_path):
    from skiporacle.oracle.oracle_run import run_oracle

    out, settings, _ = oracle_run
    lines = (out / ALLOCATIONS).read_bytes().splitlines(keepends=True)
    part = tmp_path / "part"
    part.mkdir()
    for name in (SETTINGS, IMPORTANCE):
        shutil.copy(out / name, part / name)
    (part / ALLOCATIONS).write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # one record and a torn one
    with pytest.raises(BadInput, match="already holds a run"):
        run_oracle(settings, part, progress=False)
    summary = run_oracle(settings, part, resume=True, progress=False)
    assert summary["resumed_sequences"] == 1 and summary["sequences"] == LIMIT
    resumed = _records(part)
    ids = [r["id"] for r in resumed]
    assert len(ids) == len(set(ids)) == LIMIT
    assert {r["id"]: r for r in resumed} == {r["id"]: r for r in _records(out)}
    # Resuming a finished run changes nothing.
    before = (part / ALLOCATIONS).read_bytes()
    summary = run_oracle(settings, part, resume=True, progress=False)
    assert summary["resumed_sequences"] == LIMIT
    assert (part / ALLOCATIONS).read_bytes() == before
    # Other settings are refused, naming the key, and nothing changes.
    files = _folder_bytes(part)
    with pytest.raises(BadInput, match="different settings \\(max_new_tokens"):
        run_oracle(replace(settings, max_new_tokens=ORACLE_MAX_NEW + 1), part, resume=True, progress=False)
    assert _folder_bytes(part) == files


def test_oracle_refusal_does_not_write_into_existing_run(oracle_run, tmp_path):
    """A refused run must not add or change files in the folder (here: importance.json of
    a run that did not use the importance space)."""
    from skiporacle.oracle.oracle_run import run_oracle

    out, settings, _ = oracle_run
    plain = replace(settings, spaces=("uniform",))
    folder = tmp_path / "plain"
    run_oracle(plain, folder, progress=False)
    before = _folder_bytes(folder)
    with pytest.raises(BadInput, match="already holds a run"):
        run_oracle(settings, folder, progress=False)
    assert _folder_bytes(folder) == before


def test_build_candidates_errors(oracle_run, tmp_path):
    from skiporacle.oracle.candidate_list import build_candidates
    from skiporacle.oracle.inputs import load_inputs
    from skiporacle.oracle.workers import load_model_cached

    _, settings, _ = oracle_run
    model = load_model_cached(settings.model, settings.dtype)
    inputs = load_inputs(settings, *model)
    with pytest.raises(BadInput, match="budget 7 out of range"):
        build_candidates(replace(settings, budgets=(2, 7)), inputs, tmp_path, *model, progress=False)
    spec_file = tmp_path / "alloc.json"
    spec_file.write_text(json.dumps(["exit:2", [0, 5], "all"]))
    got = build_candidates(replace(settings, spaces=("uniform", f"file:{spec_file}")), inputs, tmp_path, *model, False)
    assert [a.spec for a in got] == ["uniform:2", "uniform:4", "exit:2", "0,5", "all"]  # the file's "all" is the full model
    assert not (tmp_path / IMPORTANCE).exists()
    # Importance without calibration examples left after the evaluated ones.
    no_cal = replace(settings, limit=8)
    with pytest.raises(BadInput, match="calibration"):
        build_candidates(no_cal, load_inputs(no_cal, *model), tmp_path / "x", *model, False)


# --- curves ---------------------------------------------------------------------------------


def test_curves(oracle_run, tmp_path):
    import csv

    from skiporacle.oracle.curves import write_curves

    out, _, _ = oracle_run
    settings, records, _ = load_run(out)
    folder = tmp_path / "curves"
    folder.mkdir()
    csv_path, png_path = write_curves(folder, records, settings, resamples=20)
    assert csv_path == folder / "curves.csv" and png_path == folder / "curves.png"
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    series = {r["series"] for r in rows}
    assert {"uniform", "early-exit", "importance", "random", "knapsack", "rule", "rule-exact", "full"} == series
    for r in rows:
        low, mean, high = float(r["low"]), float(r["mean_score"]), float(r["high"])
        assert 0 <= float(r["percent_layers"]) <= 100
        if r["series"] != "knapsack":
            assert low - 1e-9 <= mean <= high + 1e-9
    full_row = next(r for r in rows if r["series"] == "full")
    assert float(full_row["percent_layers"]) == 100.0
    assert float(full_row["mean_score"]) == pytest.approx(np.mean([r.full.score for r in records]))
    knap = [r for r in rows if r["series"] == "knapsack"]
    assert [float(r["mean_score"]) for r in knap] == sorted(float(r["mean_score"]) for r in knap)
    assert float(knap[-1]["mean_score"]) >= float(full_row["mean_score"]) - 1e-9
    data = png_path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_similarity(oracle_run, tmp_path):
    from skiporacle.eval.similarity import similarity
    from skiporacle.oracle.curves import write_similarity
    from skiporacle.oracle.workers import load_model_cached

    out, settings, _ = oracle_run
    records = _records(out)[:2]
    model, tokenizer = load_model_cached(settings.model, settings.dtype)
    sims = similarity(model, tokenizer, [r["prompt"] for r in records], [r["full"]["token_ids"] for r in records], [2, 4])
    assert set(sims) == {"uniform", "early-exit"}
    assert [c for c, _ in sims["uniform"]] == [2, 4] and [c for c, _ in sims["early-exit"]] == [2, 4]
    for pts in sims.values():
        assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for _, s in pts)
    path = write_similarity(tmp_path, sims, NUM_LAYERS, "tiny")
    assert path == tmp_path / "similarity.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
