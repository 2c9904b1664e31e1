"""Direct tests of small modules that the end-to-end tests reach only through a command: the data readers, the
stored ranking, the healing checkpoint, the search plan, and the per-token study's own settings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from skiporacle.data.errors import BadInput
from skiporacle.data.readers import field, lines, read_jsonl, read_rows
from skiporacle.eval.ranking import read_ranking
from skiporacle.heal.checkpoint import load_checkpoint, restore, rng_state, save_checkpoint, set_rng_state
from skiporacle.oracle.search import SearchPlan, check_search, search_strategy
from skiporacle.pertoken.study_settings import parse_taus, refuse_shared


# --- data/readers -----------------------------------------------------------------------------------------


def test_lines_split_on_newlines_only(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"t": "x\u2028y"}\n\n{"t": "z"}\n', encoding="utf-8")
    assert lines(path) == ['{"t": "x\u2028y"}', "", '{"t": "z"}']  # U+2028 inside a text does not split it
    assert read_jsonl(path) == [{"t": "x\u2028y"}, {"t": "z"}]  # the blank line is skipped


@pytest.mark.parametrize("name, content, match", [
    ("bad.jsonl", '{"a": 1}\n{"a": \n', "line 2 is not valid JSON"),
    ("list.jsonl", '[1, 2]\n', "line 1 is not a JSON object"),
    ("bad.json", '{"a": 1}', "must hold a JSON list of objects"),
    ("bad.txt", "x", "unsupported file type '.txt'"),
])
def test_a_bad_file_is_one_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInput, match=match) as err:
        read_rows(path)
    assert "\n" not in str(err.value)


def test_csv_and_a_missing_field(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,summary\nhello,hi\n", encoding="utf-8")
    rows = read_rows(path)
    assert rows == [{"text": "hello", "summary": "hi"}] and field(rows[0], "text", "row 1") == "hello"
    with pytest.raises(BadInput, match="row 1 has no field 'document'; fields present: text, summary"):
        field(rows[0], "document", "row 1")
    (tmp_path / "latin.jsonl").write_bytes(b'{"a": "\xe9"}\n')
    with pytest.raises(BadInput, match=r"is not valid UTF-8 \(byte 7\)"):
        read_rows(tmp_path / "latin.jsonl")


# --- eval/ranking -----------------------------------------------------------------------------------------


def test_a_stored_ranking_is_checked_against_the_model(tmp_path):
    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"model": "m", "drop_order": [2, 0, 1]}), encoding="utf-8")
    assert read_ranking(path, "m", 3)["drop_order"] == [2, 0, 1]
    with pytest.raises(BadInput, match="does not rank the model's 4 layers"):
        read_ranking(path, "m", 4)
    with pytest.raises(BadInput, match="ranks the layers of 'm', not of 'other'"):
        read_ranking(path, "other", 3)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(BadInput, match="not a readable importance.json"):
        read_ranking(path, "m", 3)


# --- heal/checkpoint --------------------------------------------------------------------------------------


def test_a_checkpoint_restores_weights_optimiser_and_generator(tmp_path):
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.1)
    student(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    settings = {"steps": 10, "lr": 0.1}
    save_checkpoint(tmp_path, settings, student, optimizer, [1.5, 1.2], 3.0, [(0, 2.0), (2, 1.1)])
    after = torch.rand(3)  # what the generator gives next, from the saved state on
    weights = {n: p.detach().clone() for n, p in student.named_parameters()}

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    torch.manual_seed(99)
    state = load_checkpoint(tmp_path, {**settings, "steps": 20})  # more steps than before: a longer resume
    restore(fresh, fresh_optimizer, state)
    assert state["losses"] == [1.5, 1.2] and state["seconds"] == 3.0 and state["curve"] == [[0, 2.0], [2, 1.1]]
    assert all(torch.equal(p, weights[n]) for n, p in fresh.named_parameters())
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), after)
    with pytest.raises(BadInput):
        load_checkpoint(tmp_path, {"steps": 10, "lr": 0.2})  # other settings: refused
    with pytest.raises(BadInput, match="past step 1 already"):
        load_checkpoint(tmp_path, {"steps": 1, "lr": 0.1})
    assert load_checkpoint(tmp_path / "none", settings) is None
    old = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del old["curve"]
    torch.save(old, tmp_path / "checkpoint.pt")
    with pytest.raises(BadInput, match="predates learning curves"):
        load_checkpoint(tmp_path, settings)
    state = rng_state()
    first = torch.rand(2)
    set_rng_state(state)
    assert torch.equal(torch.rand(2), first)


# --- oracle/search ----------------------------------------------------------------------------------------


def test_a_search_stands_alone_and_pins_its_columns():
    assert search_strategy(("uniform", "importance")) is None
    assert search_strategy(("greedy",)) == "greedy"
    with pytest.raises(BadInput, match="--space random-search is a per-sequence search and cannot be combined"):
        search_strategy(("random-search", "uniform"))
    plan = SearchPlan("greedy", (3, 1, 2, 0), (2, 3), 4)
    assert plan.pinned == [["greedy:2", []], ["greedy:3", []], ["all", [0, 1, 2, 3]]]


@pytest.mark.parametrize("changes, match", [
    ({"search_rule": "loose"}, "--search-rule 'loose': choose from score, exact"),
    ({"protocol": SimpleNamespace(first_token="full", prompt_under_allocation=False)}, "supports only --first-token allocation"),
    ({"search_width": 0}, "must be at least 1"),
])
def test_search_settings_it_cannot_honour_are_refused(tiny_model, changes, match):
    settings = SimpleNamespace(search_rule="score", search_generate=4, search_width=5, search_evaluations=50,
                               protocol=SimpleNamespace(first_token="allocation", prompt_under_allocation=False))
    for k, v in changes.items():
        setattr(settings, k, v)
    with pytest.raises(BadInput, match=match):
        check_search(settings, tiny_model("llama"), 32)


def test_a_search_needs_a_layout_the_cross_candidate_decoder_covers(tiny_model):
    settings = SimpleNamespace(search_rule="exact", search_generate=1, search_width=1, search_evaluations=1,
                               protocol=SimpleNamespace(first_token="allocation", prompt_under_allocation=False))
    check_search(settings, tiny_model("llama"), 32)
    with pytest.raises(BadInput, match="needs the cross-candidate decoder, which does not cover"):
        check_search(settings, tiny_model("gpt2"), 32)


# --- pertoken/study_settings ------------------------------------------------------------------------------


def test_taus_are_sorted_distinct_and_checked():
    assert parse_taus("0.9, 0.5,0.9,") == (0.5, 0.9)
    for text, match in (("", "none given"), ("a", "expected comma-separated numbers"), ("-1", "is not a threshold"),
                        ("nan", "is not a threshold")):
        with pytest.raises(BadInput, match=match):
            parse_taus(text)


def test_training_rows_may_not_share_an_evaluation_text():
    refuse_shared(["a", "b"], ["c"], "input text")
    with pytest.raises(BadInput, match="1 training row\\(s\\) share their input text with evaluation rows"):
        refuse_shared(["a", "b"], ["b", "c"], "input text")
