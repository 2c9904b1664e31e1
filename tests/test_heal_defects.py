"""Issue #11, items 6-9: heal KL without dropout and exact resume with dropout, layers ranked on
rows disjoint from the held-out ones, heal rows refused by content, healed weights fingerprinted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.eval.model import load_model, resolve_model
from skiporacle.heal import distil
from skiporacle.heal.distil import heal, held_out_kl
from skiporacle.heal.student import build_student
from skiporacle.heal.texts import heal_examples, heal_texts
from skiporacle.heal.variants import healed_space
from skiporacle.cli.main import main
from test_heal import interrupt_during_step_4

from conftest import NUM_LAYERS, ORACLE_TEXTS
from test_heal import LAYERS, _fake_variant, _settings


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A saved tiny random GPT-2 (6 layers, dropout 0.1 everywhere) with the SmolLM2 tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"), local_files_only=True)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=NUM_LAYERS, n_head=4, n_positions=128,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, initializer_range=0.3,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def gpt2(gpt2_dir, single_thread):
    return load_model(str(gpt2_dir))


# -- 6: held-out KL in eval mode; a resumed run with dropout is bit-identical -----------------------


def test_initial_held_out_kl_is_measured_without_dropout(gpt2, gpt2_dir, tmp_path):
    model, tokenizer = gpt2
    settings = _settings(gpt2_dir, steps=1)
    meta = heal(settings, model, tokenizer, tmp_path / "h", progress=False)
    holdout = heal_texts(heal_examples(settings.sources, settings.examples), tokenizer, settings.seq_len)[: settings.holdout]
    student = build_student(model, settings.layers)
    student.eval()
    expected = held_out_kl(student, model, holdout, settings.batch_size, tokenizer.pad_token_id)
    assert meta["kl"]["initial"] == expected
    student.train()  # measured from train mode: still without dropout, and train mode is restored
    assert held_out_kl(student, model, holdout, settings.batch_size, tokenizer.pad_token_id) == expected
    assert student.training


def test_resume_with_dropout_is_bit_identical_to_the_uninterrupted_run(gpt2, gpt2_dir, tmp_path, monkeypatch):
    model, tokenizer = gpt2
    settings = _settings(gpt2_dir)
    whole = heal(settings, model, tokenizer, tmp_path / "whole", progress=False)
    interrupt_during_step_4(monkeypatch, settings, model, tokenizer, tmp_path / "cut")
    torch.manual_seed(12345)  # the generator state of the process that resumes is not the one of the run
    resumed = heal(settings, model, tokenizer, tmp_path / "cut", resume=True, progress=False)
    assert resumed["losses"] == whole["losses"] and resumed["kl"] == whole["kl"]
    a, _ = load_model(str(tmp_path / "whole"))
    b, _ = load_model(str(tmp_path / "cut"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# -- 7: the layers are ranked on training rows, never on held-out ones ------------------------------


def test_importance_layers_are_ranked_on_training_rows_disjoint_from_held_out(tiny_llm_dir, tmp_path, single_thread):
    models = tmp_path / "models"
    assert main(["heal", "--model", str(tiny_llm_dir), "--layers", "importance:4", "--steps", "1", "--sources", "xsum",
                 "--examples", "6", "--holdout", "2", "--batch-size", "2", "--seq-len", "24", "--calibration", "3",
                 "--out", str(models / "heal-4")]) == 0
    data = json.loads((models / "heal-4" / "heal.json").read_text())["data"]
    calibration = data["calibration_ids"]
    assert len(calibration) == 3
    assert not set(calibration) & set(data["holdout_ids"])
    assert set(calibration) <= set(data["train_ids"])
    assert json.loads((models / "importance.json").read_text())["calibration_ids"] == calibration


def test_heal_refuses_calibration_rows_that_are_held_out(tiny_llm_dir, tmp_path, single_thread):
    model, tokenizer = load_model(str(tiny_llm_dir))
    settings = _settings(tiny_llm_dir, steps=1)
    held = heal_texts(heal_examples(settings.sources, settings.examples), tokenizer, settings.seq_len)[0].id
    with pytest.raises(BadInput, match="not a training row"):
        heal(settings, model, tokenizer, tmp_path / "h", progress=False, calibration_ids=(held,))
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.partial").exists()


# -- 8: heal rows are recognised by content, not only by id -----------------------------------------


def test_heal_json_records_the_content_hash_of_every_heal_row(tiny_llm_dir, tmp_path, single_thread):
    model, tokenizer = load_model(str(tiny_llm_dir))
    settings = _settings(tiny_llm_dir, steps=1)
    meta = heal(settings, model, tokenizer, tmp_path / "h", progress=False)
    rows = heal_examples(settings.sources, settings.examples)
    assert meta["data"]["source_hashes"] == sorted({content_hash(e.source) for _, e in rows})
    assert content_hash("  The  Cat\nsat. ") == content_hash("the cat sat.") != content_hash("the cat sat")


def _oracle_on_file(model_dir: Path, data: Path, models: Path, out: Path) -> int:
    return main(["oracle", "--model", str(model_dir), "--data", str(data), "--input-field", "text",
                 "--reference-field", "summary", "--id-field", "id", "--space", f"healed:{models}", "--budgets", "4",
                 "--max-new-tokens", "4", "--calibration", "0", "--out", str(out)])


def test_data_file_holding_a_heal_row_text_is_refused(tiny_llm_dir, tmp_path, capsys, single_thread):
    model, tokenizer = load_model(str(tiny_llm_dir))
    settings = _settings(tiny_llm_dir, steps=1, sources=("xsum",), examples=4)
    heal(settings, model, tokenizer, tmp_path / "models" / "h", progress=False)
    _, row = heal_examples(settings.sources, settings.examples)[-1]  # a trained row
    rows = [{"id": f"r{i}", "text": t, "summary": "A short summary."} for i, t in enumerate(ORACLE_TEXTS[:2])]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    copy = tmp_path / "copy.jsonl"
    copied = {"id": "local-7", "text": "  " + row.source.upper().replace(" ", "  \n"), "summary": "x"}
    copy.write_text("".join(json.dumps(r) + "\n" for r in rows + [copied]), encoding="utf-8")

    assert _oracle_on_file(tiny_llm_dir, clean, tmp_path / "models", tmp_path / "clean-run") == 0
    capsys.readouterr()
    assert _oracle_on_file(tiny_llm_dir, copy, tmp_path / "models", tmp_path / "copy-run") == 2
    err = capsys.readouterr().err
    assert "trained on the text of 1 evaluated sequence" in err and err.count("\n") == 1
    assert not (tmp_path / "copy-run" / "allocations.jsonl").exists()


def test_a_variant_healed_before_content_hashes_is_refused(tmp_path):
    _fake_variant(tmp_path / "m" / "old")
    meta = json.loads((tmp_path / "m" / "old" / "heal.json").read_text())
    del meta["data"]["source_hashes"]
    (tmp_path / "m" / "old" / "heal.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput, match="predates content checks.*re-heal it"):
        healed_space(tmp_path / "m", 30, "smollm2-135m", set(), {content_hash("anything")})


# -- 9: a resume after re-healing a variant under the same name is refused --------------------------


def test_resume_after_re_healing_a_variant_is_refused(tiny_llm_dir, tmp_path, capsys, single_thread):
    model, tokenizer = load_model(str(tiny_llm_dir))
    variant, run = tmp_path / "models" / "h", tmp_path / "run"
    heal(_settings(tiny_llm_dir, steps=1), model, tokenizer, variant, progress=False)
    args = ["oracle", "--model", str(tiny_llm_dir), "--task", "xsum", "--limit", "2", "--max-new-tokens", "4",
            "--budgets", "4", "--calibration", "0", "--space", f"healed:{variant.parent}", "--out", str(run)]
    assert main(args) == 0
    records = run / "allocations.jsonl"
    first = records.read_text().splitlines(keepends=True)[0]
    records.write_text(first)  # interrupted after one sequence
    assert main(args + ["--resume"]) == 0  # same weights: resumed
    records.write_text(first)

    for path in sorted(variant.iterdir()):  # re-healed under the same name: other weights
        path.unlink()
    variant.rmdir()
    heal(_settings(tiny_llm_dir, steps=1, seed=1), model, tokenizer, variant, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "candidate allocations differ" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    pinned = json.loads((run / "settings.json").read_text())["candidates"]
    assert [len(c) for c in pinned] == [4, 2, 2]  # healed: spec, layers, folder, weights hash; base twin; all
