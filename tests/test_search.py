"""Per-sequence search (`search/persequence.py`, `oracle/search.py`): the strategies on hand-made verdicts,
and whole search runs on the tiny model against a brute force over every layer subset."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace

import pytest

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.oracle.records import ALLOCATIONS, read_records
from skiporacle.search.allocation import Allocation, full
from skiporacle.search.persequence import (
    Judged, advance, complete, greedy_proposals, named, random_advance, random_proposals, start,
)

from conftest import NUM_LAYERS, ORACLE_MAX_NEW, one_thread
from test_cli import assert_bad


def _judge(allocations, qualifies, key):
    return [Judged(a, qualifies(a.layers), key(a.layers)) for a in allocations]


def _walk(qualifies, key, n=6, floor=1, propose=None):
    path, calls = start(n), 0
    while not path.done:
        proposals = (propose or (lambda p: greedy_proposals(p, (), floor)))(path)
        calls += 1
        path = advance(path, _judge(proposals, qualifies, key), exhausted=True)
    return path, calls


def test_greedy_takes_the_best_qualifying_drop_until_none_qualifies():
    # qualifies: keeps layers 0 and 2 and at least 3 layers; the best is the one keeping the largest layer sum
    path, calls = _walk(lambda ls: {0, 2} <= set(ls) and len(ls) >= 3, lambda ls: (-sum(ls),))
    assert [j.allocation.layers for j in path.accepted] == [(0, 2, 3, 4, 5), (0, 2, 4, 5), (0, 2, 5)]
    assert path.current.layers == (0, 2, 5) and path.done
    assert calls == 4 and path.evaluations == 6 + 5 + 4 + 3


def test_greedy_respects_floor_and_keep():
    path, _ = _walk(lambda ls: True, lambda ls: (0.0,), floor=3)
    assert path.current.cost == 3
    assert [j.allocation.cost for j in path.accepted] == [5, 4, 3]
    kept = greedy_proposals(start(6), keep=(0, 1), floor=1)
    assert all({0, 1} <= set(a.layers) for a in kept) and len(kept) == 4


def test_greedy_equals_brute_force_greedy_over_all_subsets():
    """On random qualification tables over 6 layers, the walk equals a direct simulation over all subsets."""
    rng = random.Random(0)
    for _ in range(50):
        table = {s: (rng.random() < 0.7, rng.random()) for r in range(1, 7) for s in itertools.combinations(range(6), r)}
        path, _ = _walk(lambda ls: table[ls][0], lambda ls: (table[ls][1],))
        current = tuple(range(6))
        while True:
            options = [c for c in itertools.combinations(current, len(current) - 1) if c and table[c][0]]
            if not options:
                break
            current = min(options, key=lambda c: (table[c][1], c))
        assert path.current.layers == current


def test_random_descent_budget_width_and_determinism():
    def walk(seed):
        rng, path, sizes = random.Random(seed), start(8), []
        while not path.done:
            proposals = random_proposals(path, (), 1, 3, 20, rng)
            sizes.append(len(proposals))
            assert all(a.layers not in path.tried for a in proposals)
            path = random_advance(path, _judge(proposals, lambda ls: 5 in ls, lambda ls: (0.0,)), (), 1, 20)
        return path, sizes

    path, sizes = walk(1)
    assert path.evaluations <= 20 and max(sizes) <= 3
    assert 5 in path.current.layers
    assert walk(1)[0] == path


def test_complete_fills_below_the_stop_in_drop_order():
    path = advance(start(6), [Judged(named((0, 1, 2, 3, 5), 6), True, (0.0,))], exhausted=True)
    path = advance(path, [Judged(named((0, 1, 3, 5), 6), False, (0.0,))], exhausted=True)
    columns = complete(path, drop_order=(4, 1, 5, 3, 0, 2), costs=(2, 3, 4, 5))
    assert columns[5].layers == (0, 1, 2, 3, 5)
    assert columns[4].layers == (0, 2, 3, 5) and columns[3].layers == (0, 2, 3) and columns[2].layers == (0, 2)
    with pytest.raises(ValueError):
        complete(path, (4,), costs=(2,))


# --- whole runs on the tiny model -------------------------------------------------------------------------

def _settings(tiny_llm_dir, oracle_data, **change):
    from skiporacle.oracle.oracle_settings import OracleSettings

    settings = OracleSettings(
        model=str(tiny_llm_dir), task="file", data_file=str(oracle_data), input_field="text",
        reference_field="summary", id_field="id", limit=6, offset=0, spaces=("greedy",), budgets=(1,),
        metric="rougeL", max_new_tokens=ORACLE_MAX_NEW, dtype="float32", seed=0, tolerance=0.0, calibration=2)
    return replace(settings, **change)


def _run(settings, folder):
    from skiporacle.oracle.oracle_run import run_oracle

    with one_thread():
        summary = run_oracle(settings, folder, progress=False)
    lines = (folder / ALLOCATIONS).read_text(encoding="utf-8").splitlines()
    typed = read_records(folder)  # the search statistics travel through the typed record unchanged
    assert [json.dumps(r.to_json(), ensure_ascii=False) for r in typed] == lines and typed[0].search is not None
    return summary, [json.loads(x) for x in lines]


def _brute_force(tiny_llm_dir, records):
    """Per record, the greedy output ids of every non-empty layer subset (the per-candidate reference path)."""
    from skiporacle.eval.generate import generate_candidates
    from skiporacle.oracle.workers import load_model_cached

    model, tokenizer = load_model_cached(str(tiny_llm_dir), "float32")
    subsets = [named(s, NUM_LAYERS) for r in range(1, NUM_LAYERS + 1)
               for s in itertools.combinations(range(NUM_LAYERS), r)]
    with one_thread():
        outputs = generate_candidates(model, tokenizer, [r["prompt"] for r in records], subsets, DecodeProtocol(ORACLE_MAX_NEW, decoder="per-candidate"))
    return [{a.layers: g.tokens for a, g in zip(subsets, row)} for row in outputs]


@pytest.fixture(scope="module")
def exact_run(tiny_llm_dir, oracle_data, tmp_path_factory):
    settings = _settings(tiny_llm_dir, oracle_data, search_rule="exact")
    summary, records = _run(settings, tmp_path_factory.mktemp("search") / "exact")
    return settings, summary, records, _brute_force(tiny_llm_dir, records)


def test_exact_greedy_against_brute_force(exact_run):
    """Under the exact rule every path member reproduces the full output when generated, no single drop of
    where the path stopped does, the stop is never cheaper than the brute-force optimum, and the records'
    identical flags are the brute force's."""
    _, summary, records, brute = exact_run
    whole = tuple(range(NUM_LAYERS))
    below_optimum = 0
    for record, outputs in zip(records, brute):
        full_ids = outputs[whole]
        assert tuple(record["full"]["token_ids"]) == full_ids
        identical = {layers for layers, ids in outputs.items() if ids == full_ids}
        layers = [tuple(c["layers"]) for c in record["candidates"]]
        stop = record["search"]["stop_cost"]
        path = [l for l in layers if len(l) >= stop]
        assert all(l in identical for l in path), record["id"]
        last = next((l for l in layers if len(l) == stop), whole)
        assert not any(d in identical for d in itertools.combinations(last, len(last) - 1) if d), record["id"]
        assert min(map(len, identical)) <= stop
        below_optimum += min(map(len, identical)) < stop
        for c in record["candidates"]:
            assert c["identical"] == (tuple(c["layers"]) in identical), (record["id"], c["spec"])
        exact_choice = record["choice"]["exact"]
        assert exact_choice == ("all" if stop == NUM_LAYERS else f"greedy:{stop}")
        assert record["search"]["generated"] == 0 and record["search"]["near_ties"] == 0
    assert summary["search"]["mean_generated_per_sequence"] == 0
    assert summary["search"]["generations_saved_percent"] == 100
    assert summary["rule_exact"]["mean_layers"] == pytest.approx(
        sum(r["search"]["stop_cost"] for r in records) / len(records))
    print(f"greedy stops above the brute-force optimum on {below_optimum} of {len(records)} sequences")


def test_exact_greedy_path_equals_brute_force_greedy(exact_run):
    """Where the path went: at each step some single drop of the current allocation reproduces the full
    output (brute force), and the path took one of those."""
    _, _, records, brute = exact_run
    for record, outputs in zip(records, brute):
        full_ids = outputs[tuple(range(NUM_LAYERS))]
        current = tuple(range(NUM_LAYERS))
        for layer in record["search"]["dropped"]:
            options = {d for d in itertools.combinations(current, len(current) - 1) if d and outputs[d] == full_ids}
            current = tuple(l for l in current if l != layer)
            assert current in options
        assert len(current) == record["search"]["stop_cost"]


def test_score_greedy_outputs_are_real(tiny_llm_dir, oracle_data, tmp_path):
    """Under the score rule each column's output and score are those of generating its layers, and every
    member of the path scores at least the full model's."""
    from skiporacle.eval.generate import generate_candidates
    from skiporacle.eval.metrics import sequence_scores
    from skiporacle.oracle.workers import load_model_cached

    settings = _settings(tiny_llm_dir, oracle_data, search_generate=2)
    summary, records = _run(settings, tmp_path / "score")
    model, tokenizer = load_model_cached(str(tiny_llm_dir), "float32")
    for record in records:
        allocations = [Allocation(tuple(c["layers"]), NUM_LAYERS, c["spec"]) for c in record["candidates"]]
        with one_thread():
            again = generate_candidates(model, tokenizer, [record["prompt"]], allocations, DecodeProtocol(ORACLE_MAX_NEW, decoder="per-candidate"))[0]
        scores = sequence_scores("rougeL", [g.text for g in again], [record["references"]] * len(again))
        for c, g, s in zip(record["candidates"], again, scores):
            assert c["output"] == g.text and c["score"] == pytest.approx(s), (record["id"], c["spec"])
            if c["cost"] >= record["search"]["stop_cost"]:
                assert c["score"] >= record["full"]["score"] - 1e-9
        stats = record["search"]
        assert stats["generated"] <= 2 * (NUM_LAYERS - stats["stop_cost"] + 1)
        assert stats["evaluations"] == stats["verified"] + stats["generated"] + stats["pruned"]
    assert 0 <= summary["search"]["generations_saved_percent"] <= 100


def test_random_search_budget_and_determinism(tiny_llm_dir, oracle_data, tmp_path):
    settings = _settings(tiny_llm_dir, oracle_data, spaces=("random-search",), search_evaluations=7,
                         search_width=3, search_rule="exact")
    _, records = _run(settings, tmp_path / "a")
    assert all(r["search"]["evaluations"] <= 7 for r in records)
    assert [c["spec"] for c in records[0]["candidates"]] == [f"random-search:{b}" for b in range(1, NUM_LAYERS)]
    _run(settings, tmp_path / "b")
    assert (tmp_path / "a" / ALLOCATIONS).read_bytes() == (tmp_path / "b" / ALLOCATIONS).read_bytes()


@pytest.mark.parametrize("extra, match", [
    (["--space", "greedy,uniform"], "cannot be combined"),
    (["--space", "greedy", "--first-token", "full"], "first-token allocation"),
    (["--space", "greedy", "--search-generate", "0"], "at least 1"),
    (["--space", "greedy", "--search-rule", "best"], "search-rule"),
    (["--space", "random-search", "--budgets", "6"], "below the model's 6 layers"),
])
def test_search_bad_input(capsys, tiny_llm_dir, oracle_data, tmp_path, extra, match):
    out = tmp_path / "run"
    assert_bad(capsys, "oracle", "--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text",
               "--reference-field", "summary", "--limit", "2", "--calibration", "2", "--out", out, *extra, match=match)
    assert not (out / ALLOCATIONS).exists()


def test_compare_runs_is_paired(exact_run, tiny_llm_dir, oracle_data, tmp_path, capsys):
    """A run against itself differs by exactly 0; against a run of other sequences it is refused."""
    from skiporacle.oracle.compare import compare_runs
    from test_cli import run_cli

    settings = exact_run[0]
    folder = tmp_path / "exact"
    _run(settings, folder)
    same = compare_runs(folder, folder)
    assert same["rule"]["difference"] == 0 and same["rule"]["difference_ci95"] == [0.0, 0.0]
    assert same["knapsack"]["difference_ci95"] == [0.0, 0.0] and same["full_outputs_differ"] == 0
    code, out, _ = run_cli(capsys, "compare", "--run", folder, "--against", folder)
    assert code == 0 and "knapsack at full quality" in out and (folder / "compare-exact.json").exists()
    fewer = tmp_path / "fewer"
    _run(replace(settings, limit=3), fewer)
    assert_bad(capsys, "compare", "--run", folder, "--against", fewer, match="same finished sequences")


def test_a_search_run_reads_like_any_run(exact_run, tmp_path, capsys):
    """curves, dump, report and the controller read a search run unchanged; commands that re-run candidates
    by their pinned layers refuse it with one line."""
    from test_cli import run_cli

    folder = tmp_path / "exact"
    _run(exact_run[0], folder)
    for argv in (["curves", "--run", folder], ["dump", "--run", folder], ["report", "--run", folder],
                 ["controller", "--run", folder, "--folds", "2", "--resamples", "20"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, (argv, out, err)
    assert (folder / "curves.png").exists() and (folder / "report.html").exists()
    series = {line.split(",")[0] for line in (folder / "curves.csv").read_text(encoding="utf-8").splitlines()[1:]}
    assert "greedy" in series
    assert_bad(capsys, "perplexity", "--run", folder, match="per-sequence search")
