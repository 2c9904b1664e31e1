"""Heal targets from the full model's own answers: they are its greedy outputs, windows end with them,
an interrupted generation resumes to the same answers with none twice, and other settings are refused."""

from __future__ import annotations

import json
import shutil

import pytest

from skiporacle.data.errors import BadInput
from skiporacle.data.prompts import fit_prompt, prompt_budget
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import generate
from skiporacle.eval.model import load_model, num_layers
from skiporacle.heal import answers as answers_module
from skiporacle.heal.answers import ANSWERS_FILE, teacher_answers
from skiporacle.heal.distil import HealSettings, heal
from skiporacle.heal.texts import heal_examples, heal_texts
from skiporacle.search.allocation import full

TOKENS = 6


@pytest.fixture
def tiny(tiny_llm_dir, single_thread):
    return load_model(str(tiny_llm_dir))


def test_answers_are_the_full_model_s_greedy_outputs_and_end_the_windows(tiny, tmp_path):
    model, tokenizer = tiny
    examples = heal_examples(("xsum", "samsum"), 3)
    answers = teacher_answers(model, tokenizer, examples, TOKENS, tmp_path, progress=False)
    _, budget = prompt_budget(model, tokenizer, TOKENS)
    prompts = [fit_prompt(task, e, tokenizer, budget)[0] for task, e in examples]
    expected = [g.tokens for g in generate(model, tokenizer, prompts, full(num_layers(model)), DecodeProtocol(TOKENS))]
    assert list(answers.values()) == expected and all(1 <= len(t) <= TOKENS for t in expected)
    texts = heal_texts(examples, tokenizer, 40, answers)
    assert [t.tokens[-len(a):] for t, a in zip(texts, expected)] == expected
    assert texts != heal_texts(examples, tokenizer, 40)  # the reference windows differ


def test_an_interrupted_generation_resumes_to_the_same_answers_once_each(tiny, tmp_path):
    model, tokenizer = tiny
    examples = heal_examples(("xsum", "samsum"), 4)
    (tmp_path / "whole").mkdir()
    whole = teacher_answers(model, tokenizer, examples, TOKENS, tmp_path / "whole", progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    lines = (cut / ANSWERS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    # As if killed mid-append: three answers on disk, then a torn line; a sentinel answer shows kept rows stay kept.
    kept = json.loads(lines[0])
    (cut / ANSWERS_FILE).write_text(json.dumps({"id": kept["id"], "tokens": [7]}) + "\n" + "".join(lines[1:3])
                                    + '{"id": "torn", "tok', encoding="utf-8")
    again = teacher_answers(model, tokenizer, examples, TOKENS, cut, progress=False)
    assert again == {**whole, kept["id"]: (7,)}
    ids = [json.loads(line)["id"] for line in (cut / ANSWERS_FILE).read_text().splitlines()]
    assert sorted(ids) == sorted(whole) and len(ids) == len(set(ids))
    with pytest.raises(BadInput, match="different settings"):
        teacher_answers(model, tokenizer, examples, TOKENS + 1, cut, progress=False)


def test_heal_on_teacher_answers_records_them_and_trains(tiny, tiny_llm_dir, tmp_path, monkeypatch):
    model, tokenizer = tiny
    settings = HealSettings(model=str(tiny_llm_dir), layers=(0, 2, 3, 5), spec="0,2,3,5", steps=4, learning_rate=3e-3,
                            batch_size=2, seq_len=24, sources=("xsum", "samsum"), examples=2, holdout=2,
                            eval_every=2, patience=0, answers="teacher", answer_tokens=TOKENS)
    meta = heal(settings, model, tokenizer, tmp_path / "h", progress=False)
    assert meta["settings"]["answers"] == "teacher" and meta["losses"][-1] < meta["losses"][0]
    reference = heal(HealSettings(**{**settings.__dict__, "answers": "reference"}), model, tokenizer, tmp_path / "r",
                     progress=False)
    assert meta["losses"] != reference["losses"]
    # A second variant of the family reuses the answers beside the variants: nothing is generated again.
    monkeypatch.setattr(answers_module, "generate_in_batches", lambda *a, **k: pytest.fail("answers generated twice"))
    again = heal(HealSettings(**{**settings.__dict__, "layers": (0, 1, 5), "spec": "0,1,5"}), model, tokenizer,
                 tmp_path / "h2", progress=False)
    assert again["settings"]["answers"] == "teacher"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("teacher-answers-")] != []
