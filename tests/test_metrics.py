"""Tests for skiporacle.eval.metrics: hand-worked values and published figures on real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sacrebleu

from skiporacle.data.errors import BadInput
from skiporacle.eval.metrics import (
    METRICS,
    all_corpus_scores,
    corpus_score,
    gsm8k_number,
    sequence_scores,
    split_sentences,
)

DATA = Path(os.environ.get("SKIPORACLE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def _lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


# ---- hand-made cases -------------------------------------------------------------------

@pytest.mark.parametrize("metric", [m for m in METRICS if m != "exact_match"])
def test_identical_is_100_and_disjoint_is_0(metric):
    text = "The quick brown fox jumps over the lazy dog. It was not amused."
    assert sequence_scores(metric, [text], [[text]]) == [pytest.approx(100.0)]
    assert corpus_score(metric, [text], [[text]]) == pytest.approx(100.0)
    assert sequence_scores(metric, ["big hand jam"], [["xyz too quo"]]) == [0.0]  # no shared character


@pytest.mark.parametrize("metric", METRICS)
def test_empty_prediction_scores_zero(metric):
    assert sequence_scores(metric, [""], [["a cat sat on the mat, 42"]]) == [0.0]


def test_rouge_worked_examples():
    # pred tokens: a cat sat (3); ref: the cat sat on the mat (6); common unigrams: cat, sat.
    # rouge1: P=2/3, R=2/6, F=2PR/(P+R)=4/9.  rouge2: common bigram "cat sat": P=1/2, R=1/5, F=2/7.
    # rougeL: LCS "cat sat" = 2, same as rouge1.
    pred, ref = ["a cat sat"], [["the cat sat on the mat"]]
    assert sequence_scores("rouge1", pred, ref)[0] == pytest.approx(400 / 9)
    assert sequence_scores("rouge2", pred, ref)[0] == pytest.approx(200 / 7)
    assert sequence_scores("rougeL", pred, ref)[0] == pytest.approx(400 / 9)
    # Stemming is on: running/run, dogs/dog.
    assert sequence_scores("rouge1", ["Running dogs"], [["run dog"]]) == [pytest.approx(100.0)]


def test_rougelsum_uses_sentences():
    assert split_sentences("One here. Two there?  Three!\nFour . five") == "One here.\nTwo there?\nThree!\nFour .\nfive"
    # Summary-level LCS: reordered sentences still match fully, plain rougeL does not.
    pred, ref = ["dogs bark loudly. cats sleep quietly."], [["cats sleep quietly. dogs bark loudly."]]
    assert sequence_scores("rougeLsum", pred, ref) == [pytest.approx(100.0)]
    assert sequence_scores("rougeL", pred, ref)[0] == pytest.approx(50.0)


@pytest.mark.parametrize("metric", METRICS)
def test_multi_reference_takes_the_best(metric):
    pred = ["the cat sat on the mat and paid 12 dollars"]
    good, bad = "the cat sat on the mat and paid 12 dollars", "a dog ran off, it cost 7"
    assert sequence_scores(metric, pred, [[bad, good]]) == [pytest.approx(100.0)]
    assert sequence_scores(metric, pred, [[good, bad]]) == [pytest.approx(100.0)]
    assert sequence_scores(metric, pred, [[bad]])[0] < 50.0


def test_sacrebleu_sentence_scores_match_library():
    preds = ["the cat sat on a mat", "a quick fox", ""]
    refs = [["the cat sat on the mat", "a cat is on the mat"], ["the quick brown fox"], ["nothing"]]
    bleu = [sacrebleu.sentence_bleu(p, r).score for p, r in zip(preds, refs)]
    chrf = [sacrebleu.sentence_chrf(p, r).score for p, r in zip(preds, refs)]
    assert sequence_scores("bleu", preds, refs) == pytest.approx(bleu)
    assert sequence_scores("chrf", preds, refs) == pytest.approx(chrf)


def test_corpus_ragged_references_are_padded():
    preds = ["the cat sat on the mat", "a dog barks"]
    refs = [["the cat sat on a mat", "the cat is on the mat"], ["a dog barks loudly"]]
    streams = [["the cat sat on a mat", "a dog barks loudly"], ["the cat is on the mat", None]]
    assert corpus_score("bleu", preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score)
    assert corpus_score("chrf", preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score)
    scores = all_corpus_scores(preds, refs)
    assert list(scores) == [m for m in METRICS if m != "exact_match"]
    for metric, value in scores.items():
        assert value == pytest.approx(corpus_score(metric, preds, refs))
    assert corpus_score("rouge1", preds, refs) == pytest.approx(
        sum(sequence_scores("rouge1", preds, refs)) / 2)


@pytest.mark.parametrize("text,expected", [
    ("She pays 3 + 4 = 7 dollars.\n#### 1,200", "1200"),
    ("The answer is 42.", "42"),
    ("It costs $3.50 each", "3.5"),
    ("so 7.0", "7"),
    ("#### -5", "-5"),
    ("12 then #### 5 and 6", "5"),
    ("first 3, then 1,234,567", "1234567"),
    ("0.50 of it", "0.5"),
    ("no digits here", None),
])
def test_gsm8k_number(text, expected):
    assert gsm8k_number(text) == expected


def test_exact_match():
    preds = ["so the total is 1,200.", "#### 7.0", "I think 5", "", "the answer is 3"]
    refs = [["Work.\n#### 1200"], ["#### 7"], ["#### 6"], ["#### 0"], ["#### 4", "#### 3"]]
    assert sequence_scores("exact_match", preds, refs) == [100.0, 100.0, 0.0, 0.0, 100.0]
    assert corpus_score("exact_match", preds, refs) == pytest.approx(60.0)


def test_bad_arguments():
    with pytest.raises(BadInput) as err:
        sequence_scores("meteor", ["a"], [["a"]])
    assert "\n" not in str(err.value) and all(m in str(err.value) for m in METRICS)
    with pytest.raises(BadInput):
        corpus_score("BLEU", ["a"], [["a"]])
    with pytest.raises(ValueError):
        sequence_scores("bleu", ["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        corpus_score("rouge1", ["a"], [[]])
    with pytest.raises(ValueError):
        all_corpus_scores([], [])


# ---- published figures on real data ----------------------------------------------------

@pytest.mark.parametrize("pair,system,bleu,chrf", [
    ("en-de", "Online-B", 38.37, 64.6),
    ("de-en", "JDExploreAcademy", 33.70, None),
])
def test_wmt22_known_figures(pair, system, bleu, chrf):
    tgt = pair.split("-")[1]
    hyps = _lines(DATA / "wmt22" / "system-outputs" / f"generaltest2022.{pair}.hyp.{system}.{tgt}")
    refs = _lines(DATA / "wmt22" / f"generaltest2022.{pair}.ref.A.{tgt}")
    assert len(hyps) == len(refs) > 1000
    got_bleu = corpus_score("bleu", hyps, [[r] for r in refs])
    print(f"{pair} {system}: BLEU {got_bleu:.4f}")
    assert round(got_bleu, 2) == bleu
    if chrf is not None:
        got_chrf = corpus_score("chrf", hyps, [[r] for r in refs])
        print(f"{pair} {system}: chrF {got_chrf:.4f}")
        assert round(got_chrf, 1) == chrf


def test_xsum_lead1_rouge():
    rows = [json.loads(line) for line in (DATA / "xsum" / "xsum-1000.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1000
    preds = [row["document"].strip().split("\n")[0] for row in rows]
    refs = [[row["summary"]] for row in rows]
    got = all_corpus_scores(preds, refs)
    print("xsum lead-1:", {k: round(v, 3) for k, v in got.items()})
    for metric, expected in (("rouge1", 16.45), ("rouge2", 1.69), ("rougeL", 12.06)):
        assert got[metric] == pytest.approx(expected, abs=0.05)
        assert corpus_score(metric, preds, refs) == pytest.approx(got[metric])
