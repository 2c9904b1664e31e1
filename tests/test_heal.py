"""Healing on a tiny random Llama: KL drops, saved variants reload exactly, resume is exact,
healed candidates run in the oracle, and heal texts that overlap evaluated ids are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.data.errors import BadInput
from skiporacle.data.tasks import load_task
from skiporacle.eval.generate import generate
from skiporacle.eval.model import layer_view, load_model, num_layers
from skiporacle.heal import distil
from skiporacle.heal.distil import HealSettings, batch_at, heal, train_step
from skiporacle.heal.student import build_student, save_variant
from skiporacle.heal.texts import heal_examples, heal_texts, pad_batch
from skiporacle.cli.main import main
from skiporacle.search.allocation import Allocation, full

LAYERS = (0, 2, 3, 5)


def _settings(model_dir: Path, **changes) -> HealSettings:
    base = dict(model=str(model_dir), layers=LAYERS, spec="0,2,3,5", steps=6, learning_rate=3e-3, batch_size=2,
                seq_len=24, sources=("xsum", "samsum"), examples=5, holdout=2, checkpoint_every=2, eval_every=2,
                patience=0)
    return HealSettings(**{**base, **changes})


@pytest.fixture
def tiny(tiny_llm_dir, single_thread):
    return load_model(str(tiny_llm_dir))


def test_heal_texts_are_the_last_rows_interleaved_and_end_with_eos(tiny):
    _, tokenizer = tiny
    examples = heal_examples(("xsum", "samsum"), 3)
    _, xsum = load_task("xsum")
    _, samsum = load_task("samsum")
    assert [e.id for _, e in examples] == [xsum[-3].id, samsum[-3].id, xsum[-2].id, samsum[-2].id, xsum[-1].id, samsum[-1].id]
    texts = heal_texts(examples, tokenizer, 40)
    assert texts[0].id == f"xsum:{xsum[-3].id}" and texts[1].id == f"samsum:{samsum[-3].id}"
    assert all(len(t.tokens) == 40 and t.tokens[-1] == tokenizer.eos_token_id for t in texts)
    short = type(texts[1])(texts[1].id, texts[1].tokens[:30])
    ids, mask = pad_batch([texts[0], short], 0)
    assert ids.shape == (2, 40) and mask.sum(-1).tolist() == [40, 30] and ids[1, 30:].tolist() == [0] * 10


def test_batches_are_a_fixed_function_of_seed_and_step(tiny_llm_dir):
    train = [f"t{i}" for i in range(7)]
    settings = _settings(tiny_llm_dir, batch_size=3)
    first = [batch_at(s, train, settings) for s in range(4)]
    assert first == [batch_at(s, train, settings) for s in range(4)]
    assert sorted(first[0] + first[1]) == sorted(set(first[0] + first[1]))  # no repeat within an epoch
    assert first != [batch_at(s, train, _settings(tiny_llm_dir, batch_size=3, seed=1)) for s in range(4)]


def test_a_few_heal_steps_lower_the_kl(tiny, tiny_llm_dir, tmp_path):
    model, tokenizer = tiny
    # 2 examples x 2 tasks, 2 held out: every step trains on the same batch of 2 windows.
    meta = heal(_settings(tiny_llm_dir, steps=8, examples=2), model, tokenizer, tmp_path / "h", progress=False)
    losses = meta["losses"]
    assert len(losses) == 8 and all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.5 * losses[0]
    assert meta["kl"]["final"] < meta["kl"]["initial"]  # held-out windows improve too
    assert meta["layers"] == list(LAYERS) and meta["num_layers"] == 6 and meta["base_model"] == str(tiny_llm_dir)
    assert len(meta["data"]["train_ids"]) == 2 and len(meta["data"]["holdout_ids"]) == 2
    assert not (tmp_path / "h.partial").exists()


def test_the_student_starts_as_the_allocation_and_trains_only_its_layers(tiny):
    model, _ = tiny
    student = build_student(model, LAYERS)
    ids = torch.tensor([[5, 900, 31, 7, 1200, 44]])
    with torch.no_grad():
        expected = layer_view(model, LAYERS)(input_ids=ids, use_cache=False).logits
        assert torch.equal(student(input_ids=ids, use_cache=False).logits, expected)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.") for n in trainable)
    assert num_layers(student) == 4


def test_saved_variant_reloads_with_identical_logits(tiny, tiny_llm_dir, tmp_path):
    model, tokenizer = tiny
    settings = _settings(tiny_llm_dir)
    student = build_student(model, LAYERS)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    texts = heal_texts(heal_examples(("xsum",), 4), tokenizer, 24)
    for step in range(2):
        train_step(student, optimizer, model, *pad_batch(batch_at(step, texts, settings), 0), False)
    save_variant(student, tokenizer, {"note": "test"}, tmp_path / "v")
    reloaded, _ = load_model(str(tmp_path / "v"))
    ids, mask = pad_batch(texts[:2], 0)
    student.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits, student(input_ids=ids, attention_mask=mask).logits)
    assert json.loads((tmp_path / "v" / "heal.json").read_text()) == {"note": "test"}


def test_lora_student_trains_adapters_and_saves_a_plain_model(tiny, tiny_llm_dir, tmp_path):
    pytest.importorskip("peft")
    model, tokenizer = tiny
    meta = heal(_settings(tiny_llm_dir, lora_rank=4, steps=4, examples=2), model, tokenizer, tmp_path / "l", progress=False)
    assert meta["losses"][-1] < 0.9 * meta["losses"][0]
    reloaded, _ = load_model(str(tmp_path / "l"))
    assert num_layers(reloaded) == 4 and not any("lora" in n for n, _ in reloaded.named_parameters())


def interrupt_during_step_4(monkeypatch, settings, model, tokenizer, out) -> None:
    """Run `heal` into `out` and kill it during step 4 (after the checkpoint of step 2); the real step is restored."""
    calls = {"n": 0}
    real_step = distil.train_step

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(distil, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        heal(settings, model, tokenizer, out, progress=False)
    monkeypatch.setattr(distil, "train_step", real_step)


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tiny, tiny_llm_dir, tmp_path, monkeypatch):
    model, tokenizer = tiny
    settings = _settings(tiny_llm_dir)
    whole = heal(settings, model, tokenizer, tmp_path / "whole", progress=False)

    interrupt_during_step_4(monkeypatch, settings, model, tokenizer, tmp_path / "cut")
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial" / "checkpoint.pt").exists()
    with pytest.raises(BadInput, match="pass --resume"):
        heal(settings, model, tokenizer, tmp_path / "cut", progress=False)
    with pytest.raises(BadInput, match="different settings"):
        heal(_settings(tiny_llm_dir, learning_rate=1e-3), model, tokenizer, tmp_path / "cut", resume=True, progress=False)
    resumed = heal(settings, model, tokenizer, tmp_path / "cut", resume=True, progress=False)
    assert resumed["losses"] == whole["losses"]
    assert resumed["kl"] == whole["kl"]
    assert resumed["curve"] == whole["curve"] and [s for s, _ in whole["curve"]] == [0, 2, 4, 6]
    a, _ = load_model(str(tmp_path / "whole"))
    b, _ = load_model(str(tmp_path / "cut"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(BadInput, match="already exists"):
        heal(settings, model, tokenizer, tmp_path / "cut", progress=False)


def test_healed_candidate_is_the_variant_s_layers_in_the_base_model(tiny, tiny_llm_dir, tmp_path, prompt_ids):
    model, tokenizer = tiny
    heal(_settings(tiny_llm_dir, steps=2), model, tokenizer, tmp_path / "h", progress=False)
    healed, _ = load_model(str(tmp_path / "h"))
    prompts = ["Summarize: the river rose overnight.", "Hello there, how are you today?"]
    candidate = Allocation(LAYERS, 6, "healed:h", weights=str(tmp_path / "h"))
    # Reading the prompt with its own layers, the healed candidate is exactly the standalone variant.
    ours = generate(model, tokenizer, prompts, candidate, DecodeProtocol(6, prompt_under_allocation=True))
    alone = generate(healed, tokenizer, prompts, full(4), DecodeProtocol(6, prompt_under_allocation=True))
    assert ours == alone
    # Under the paper's protocol its outputs differ from the training-free allocation's.
    base = generate(model, tokenizer, prompts, Allocation(LAYERS, 6, "0,2,3,5"), DecodeProtocol(6))
    assert generate(model, tokenizer, prompts, candidate, DecodeProtocol(6)) != base


def test_cli_heal_then_oracle_over_healed_variants_and_overlap_refused(tiny_llm_dir, tmp_path, capsys, single_thread):
    models = tmp_path / "models"
    args = ["heal", "--model", str(tiny_llm_dir), "--layers", "importance:4", "--steps", "3", "--sources", "xsum",
            "--examples", "6", "--holdout", "2", "--batch-size", "2", "--seq-len", "24", "--calibration", "2"]
    assert main(args + ["--out", str(models / "heal-4")]) == 0
    meta = json.loads((models / "heal-4" / "heal.json").read_text())
    order = json.loads((models / "importance.json").read_text())["drop_order"]
    assert meta["layers"] == sorted(set(range(6)) - set(order[:2]))
    assert meta["data"]["calibration_ids"] == meta["data"]["train_ids"][:2]  # the first training windows
    assert main(args + ["--out", str(models / "heal-4")]) == 2
    assert "already exists" in capsys.readouterr().err

    run = ["oracle", "--model", str(tiny_llm_dir), "--task", "xsum", "--max-new-tokens", "4", "--budgets", "4",
           "--space", f"uniform,healed:{models}"]
    assert main(run + ["--limit", "2", "--out", str(tmp_path / "run")]) == 0
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    specs = [c[0] for c in settings["candidates"]]
    assert specs == ["uniform:4", "healed:heal-4", "base:heal-4", "all"]
    assert settings["candidates"][1][2] == str((models / "heal-4").resolve())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "training_free" in summary
    assert main(["perplexity", "--run", str(tmp_path / "run")]) == 0
    table = json.loads((tmp_path / "run" / "perplexity.json").read_text())["candidates"]
    assert [r["spec"] for r in table] == specs and all(r["perplexity"] > 1 for r in table)
    assert main(["curves", "--run", str(tmp_path / "run"), "--similarity", "0", "--resamples", "5"]) == 0
    series = {line.split(",")[0] for line in (tmp_path / "run" / "curves.csv").read_text().splitlines()[1:]}
    assert {"healed", "healed-base", "knapsack", "knapsack-training-free", "uniform"} <= series

    capsys.readouterr()
    assert main(run + ["--offset", "993", "--limit", "2", "--out", str(tmp_path / "overlap")]) == 2
    err = capsys.readouterr().err
    assert "was trained on 1 evaluated sequence" in err and err.count("\n") == 1
    assert not (tmp_path / "overlap" / "allocations.jsonl").exists()


def _fake_variant(folder: Path, **meta) -> None:
    folder.mkdir(parents=True)
    base = {"base_model": "smollm2-135m", "num_layers": 30, "layers": [0, 1, 2, 29],
            "data": {"train_ids": ["xsum:a"], "holdout_ids": ["xsum:b"], "calibration_ids": ["samsum:c"],
                     "source_hashes": []}}
    (folder / "heal.json").write_text(json.dumps({**base, **meta}))


def test_healed_space_lists_variants_with_twins_and_refuses_what_it_cannot_use(tmp_path):
    from skiporacle.heal.variants import healed_space

    _fake_variant(tmp_path / "m" / "b")
    _fake_variant(tmp_path / "m" / "a", layers=[0, 1, 29])
    _fake_variant(tmp_path / "m" / ".c.tmp7")  # a variant still being written
    (tmp_path / "m" / "d.partial").mkdir()
    space = healed_space(tmp_path / "m", 30, "smollm2-135m", {"xsum:z"})
    assert [(a.spec, a.layers, bool(a.weights)) for a in space] == [
        ("healed:a", (0, 1, 29), True), ("base:a", (0, 1, 29), False),
        ("healed:b", (0, 1, 2, 29), True), ("base:b", (0, 1, 2, 29), False)]
    assert space[0].weights == str((tmp_path / "m" / "a").resolve())
    for evaluated in ({"xsum:a"}, {"xsum:b"}, {"samsum:c"}):
        with pytest.raises(BadInput, match="trained on 1 evaluated sequence"):
            healed_space(tmp_path / "m", 30, "smollm2-135m", evaluated)
    assert healed_space(tmp_path / "m", 30, "smollm2-135m", {"samsum:a"})  # ids are per task
    with pytest.raises(BadInput, match="distilled from smollm2-135m"):
        healed_space(tmp_path / "m", 30, "other-model", set())
    with pytest.raises(BadInput, match="30 layers"):
        healed_space(tmp_path / "m", 24, "smollm2-135m", set())
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no healed variant"):
        healed_space(tmp_path / "empty", 30, "smollm2-135m", set())
    with pytest.raises(BadInput, match="not a folder"):
        healed_space(tmp_path / "missing", 30, "smollm2-135m", set())


def test_a_variant_with_another_tokenizer_is_refused(tmp_path, tiny_llm_dir):
    import shutil

    from skiporacle.heal.variants import healed_space

    variant = tmp_path / "m" / "v"
    _fake_variant(variant, base_model=str(tiny_llm_dir), num_layers=6, layers=[0, 5])
    shutil.copy(tiny_llm_dir / "tokenizer.json", variant / "tokenizer.json")
    assert [a.spec for a in healed_space(tmp_path / "m", 6, str(tiny_llm_dir), set())] == ["healed:v", "base:v"]
    stored = json.loads((variant / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = stored["model"]["vocab"]
    first, second = list(vocab)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two tokens swap ids: another tokenizer
    (variant / "tokenizer.json").write_text(json.dumps(stored, indent=1), encoding="utf-8")
    with pytest.raises(BadInput, match="has another tokenizer than"):
        healed_space(tmp_path / "m", 6, str(tiny_llm_dir), set())


@pytest.mark.parametrize("extra, message", [
    (["--layers", "0-2", "--steps", "0"], "--steps must be at least 1"),
    (["--layers", "0-2", "--steps", "1", "--lr", "-1"], "--lr must be positive"),
    (["--layers", "importance:", "--steps", "1"], "expected importance:N with one budget N"),
    (["--layers", "importance:3,4", "--steps", "1"], "expected importance:N with one budget N"),
    (["--layers", "importance:9", "--steps", "1"], "budget 9 out of range"),
    (["--layers", "all", "--steps", "1"], "keeps every layer: nothing to heal"),
    (["--layers", "0-2", "--steps", "1", "--sources", "nope"], "unknown task 'nope'"),
])
def test_cli_heal_bad_input_gets_one_line_and_exit_2(tiny_llm_dir, tmp_path, capsys, extra, message):
    code = main(["heal", "--model", str(tiny_llm_dir), "--out", str(tmp_path / "v"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "v").exists()
