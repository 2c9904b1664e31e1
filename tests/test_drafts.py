"""Acceptance labels and the per-prompt draft choice: per-row counts add up to the drafts' totals and every
draft gives the full model's output; the controller finds a planted signal and nothing once it is shuffled;
`skiporacle drafts` resumes without losing or duplicating a row and refuses bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import NUM_LAYERS, one_thread
from skiporacle.cli.drafts_command import choice_table
from skiporacle.controller.draft_choice import draft_choice, row_seconds
from skiporacle.data.files import read_appended
from skiporacle.eval.batching import left_pad
from skiporacle.eval.decode import prefill_shared
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.model import num_layers
from skiporacle.eval.speculative import SpeculativeStats, speculative_decode
from skiporacle.oracle.draft_labels import DraftTable, label_batch
from skiporacle.search.allocation import full, parse_spec
from test_cli import assert_bad, run_cli

SPECS = ("0,2,4", "1-5", "5")


def test_labels_are_the_drafts_counts_row_by_row(tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model("llama")
    n = num_layers(model)
    drafts = [parse_spec(s, n) for s in SPECS]
    ids, mask = left_pad(prompt_ids, 0, model.device)
    labelled = label_batch(model, ids, mask, drafts, 2, DecodeProtocol(9, eos=frozenset({ref.EOS_ID})))
    expected = [ref.reference_greedy(model, p, full(n).layers, 9, {ref.EOS_ID}) for p in prompt_ids]
    assert [row[1] for row in labelled] == [len(e) for e in expected]
    for d, draft in enumerate(drafts):
        cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
        stats = SpeculativeStats()
        out = speculative_decode(model, cache, ids[:, -1], mask, draft, 2, 9, frozenset({ref.EOS_ID}), stats)
        assert out == expected
        counts = np.array([row[2][d] for row in labelled])  # [B, 4]
        assert counts.sum(0).tolist() == [stats.rounds, stats.drafted, stats.accepted, stats.near_ties]
        assert all(row[3][d] for row in labelled)  # the same output as plain decoding
        assert (counts[:, 2] <= counts[:, 1]).all() and (counts[:, 0] >= 1).all()
    features = np.array([row[0] for row in labelled])
    assert features.shape[0] == len(prompt_ids) and np.isfinite(features).all()


def _planted_table(n: int = 80, seed: int = 0, shuffle: bool = False) -> DraftTable:
    """Two drafts of equal unit costs; feature 0 decides, linearly, which needs fewer checks for a row."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 6))
    tokens = np.full(n, 40)
    shift = np.clip(np.round(8 * features[:, 0]), -15, 15).astype(int)
    checks = np.stack([20 - shift, 20 + shift], 1) + rng.integers(0, 2, size=(n, 2))
    drafted = checks * 2
    if shuffle:
        features = features[rng.permutation(n)]
    return DraftTable([f"r{i:03d}" for i in range(n)], features, tokens, checks, drafted, drafted - checks,
                      np.zeros((n, 2), dtype=int), np.ones((n, 2), dtype=bool), tokens * 0.01,
                      drafted * 0.004, checks * 0.012)


def test_the_choice_finds_a_planted_signal_and_not_a_shuffled_one():
    found = draft_choice(_planted_table(), ["a", "b"], [10, 20], scalar_columns=6, folds=5)["decisions"]
    assert found["controller (cross-validated)"]["kept"] >= 0.9
    assert found["controller (cross-validated)"]["speed_vs_best_static"]["ci95"][0] > 0
    assert found["oracle (in-sample)"]["kept"] == pytest.approx(1.0)
    shuffled = draft_choice(_planted_table(shuffle=True), ["a", "b"], [10, 20], scalar_columns=6, folds=5)
    assert shuffled["decisions"]["controller (cross-validated)"]["kept"] < 0.3
    printed = choice_table(shuffled).splitlines()
    assert [line.split()[0] for line in printed[3:9]] == ["draft", "draft", "oracle", "best", "best", "controller"]


def test_row_seconds_add_up_to_the_measured_totals():
    table = _planted_table()
    plain, seconds = row_seconds(table)
    assert plain.sum() == pytest.approx(table.plain_seconds.sum())
    assert seconds.sum(0) == pytest.approx(table.draft_seconds.sum(0) + table.check_seconds.sum(0))


def _args(data_args, out, *extra):
    return ["drafts", *data_args, "--limit", 8, "--max-new-tokens", 6, "--draft", "0,2,4", "--draft", "uniform:3",
            "--draft-tokens", 2, "--folds", 2, "--resamples", 20, "--batch-size", 3, "--out", out, *extra]


@pytest.fixture(scope="module")
def data_args(oracle_data, tiny_llm_dir):
    return ["--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text",
            "--reference-field", "summary", "--id-field", "id"]


def test_drafts_command_resumes_a_killed_run(capsys, data_args, tmp_path):
    with one_thread():
        code, out, _ = run_cli(capsys, *_args(data_args, tmp_path / "whole"))
        assert code == 0 and "controller (cross-validated)" in out
        whole = read_appended(tmp_path / "whole" / "drafts.jsonl")
        assert len(whole) == 8 and len({r["id"] for r in whole}) == 8
        # A kill after the first batch, mid-write of the second: a torn last line.
        cut = tmp_path / "cut"
        code, _, _ = run_cli(capsys, *_args(data_args, cut))
        lines = (cut / "drafts.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (cut / "drafts.jsonl").write_text("".join(lines[:3]) + lines[3][:20], encoding="utf-8")
        assert_bad(capsys, *_args(data_args, cut), match="--resume")
        code, out, _ = run_cli(capsys, *_args(data_args, cut, "--resume"))
        assert code == 0
    resumed = read_appended(cut / "drafts.jsonl")
    assert [r["id"] for r in resumed] == [r["id"] for r in whole]
    assert [(r["counts"], r["tokens"], r["same"]) for r in resumed] == [(r["counts"], r["tokens"], r["same"]) for r in whole]
    choice = json.loads((cut / "draft_choice.json").read_text(encoding="utf-8"))
    assert choice["rows"] == 8 and [d["draft"] for d in choice["drafts"]] == ["0,2,4", "uniform:3"]


@pytest.mark.parametrize("extra, match", [
    (["--draft", "importance:x"], "layer count"),
    (["--draft", "0,2,4"], "named twice"),
    (["--draft", f"0-{NUM_LAYERS + 3}"], "layer"),
    (["--folds", "1"], "--folds"),
    (["--draft-tokens", "0"], "--draft-tokens"),
])
def test_drafts_bad_input_gets_one_line(capsys, data_args, tmp_path, extra, match):
    assert_bad(capsys, *_args(data_args, tmp_path / "x"), *extra, match=match)
    assert not (tmp_path / "x").exists()


def test_generate_drafts_with_an_importance_budget(capsys, data_args, tmp_path):
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"drop_order": [3, 4, 2, 5, 1, 0]}), encoding="utf-8")
    base = ["generate", *data_args, "--limit", 2, "--max-new-tokens", 4, "--draft-tokens", 2]
    with one_thread():
        code, out, err = run_cli(capsys, *base, "--draft", "importance:4", "--importance", ranking)
    assert code == 0, err
    assert "draft importance:4 (4 of 6 layers)" in out
    assert "outputs equal to the full model's plain decoding: 2 of 2" in out
    assert_bad(capsys, *base, "--draft", "importance:many", match="layer count")
