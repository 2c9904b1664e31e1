"""Self-speculative decoding: whatever the draft, the output is the full model's greedy output, against the
cache-free brute force, on every layout it supports; acceptance is counted as defined."""

from __future__ import annotations

import pytest

from conftest import one_thread
from skiporacle.eval.batching import left_pad
from skiporacle.eval.cache import AllocationCache, BufferedLayer
from skiporacle.eval.decode import prefill_shared
from skiporacle.eval.model import num_layers
from skiporacle.eval.speculative import SpeculativeStats, cache_slots, speculative_decode, unsupported_draft
from skiporacle.search.allocation import full, parse_spec

DRAFTS = ("all", "0,2,4", "1-5", "5", "0,1")


def _decode(model, prompt_ids, draft, k, new, eos):
    ids, mask = left_pad(prompt_ids, 0, model.device)
    cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    stats = SpeculativeStats()
    return speculative_decode(model, cache, ids[:, -1], mask, draft, k, new, eos, stats), stats


@pytest.mark.parametrize("k", [1, 3])
def test_every_draft_gives_the_full_models_output(layout, k, tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model(layout)
    reason = unsupported_draft(model, cache_slots(max(map(len, prompt_ids)), 9, k))
    if reason:
        assert layout in ("mistral", "qwen2", "gemma3")  # the tiny ones slide a window of 4
        pytest.skip(reason)
    n = num_layers(model)
    expected = [ref.reference_greedy(model, p, full(n).layers, 9, {ref.EOS_ID}) for p in prompt_ids]
    for spec in DRAFTS:
        out, stats = _decode(model, prompt_ids, parse_spec(spec, n), k, 9, frozenset({ref.EOS_ID}))
        # Random tiny models have no near-ties (margins >> 1e-4), so equality is exact here.
        assert stats.near_ties == 0 and out == expected, (layout, spec, k)
        assert stats.emitted == sum(map(len, expected))
        assert stats.accepted <= stats.drafted and stats.rounds >= max(map(len, expected)) / (k + 1)


def test_the_full_model_as_its_own_draft_accepts_everything(tiny_model, prompt_ids, single_thread):
    model = tiny_model("llama")
    out, stats = _decode(model, prompt_ids, full(num_layers(model)), 3, 9, frozenset())
    assert all(len(t) == 9 for t in out)
    assert stats.acceptance == 1.0 and stats.tokens_per_round == pytest.approx(9 / 3)  # rounds of 4, 4, then 1
    assert stats.steps == [3, 3, 0]


def test_rows_that_stop_early_and_a_short_limit(tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model("llama")
    n = num_layers(model)
    free, _ = _decode(model, prompt_ids, parse_spec("0,2,4", n), 2, 8, frozenset())
    stop = free[0][2]  # a token row 0 emits third: it stops there, the others go on
    out, _ = _decode(model, prompt_ids, parse_spec("0,2,4", n), 2, 8, frozenset({stop}))
    expected = [ref.reference_greedy(model, p, full(n).layers, 8, {stop}) for p in prompt_ids]
    assert out == expected and len(out[0]) <= 3 and max(map(len, out)) == 8
    for limit in (1, 2):
        out, stats = _decode(model, prompt_ids, parse_spec("1-5", n), 4, limit, frozenset())
        assert out == [t[:limit] for t in free]


def test_crop_and_sharing_keep_one_set_of_buffers(tiny_model, prompt_ids):
    model = tiny_model("llama")
    n = num_layers(model)
    ids, mask = left_pad(prompt_ids, 0, model.device)
    prompt, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    cache = AllocationCache(full(n).layers, prompt, reserve=4)
    draft = cache.sharing((1, 3))
    assert draft.layers is cache.layers and draft.get_seq_length() == cache.get_seq_length()
    layer = cache.layers[1]
    assert isinstance(layer, BufferedLayer)
    length = layer.length
    layer.update(layer.keys[:, :, :2].clone(), layer.values[:, :, :2].clone())
    assert draft.get_seq_length() == length + 2 and cache.get_seq_length() == length  # read from layer 1 vs 0
    layer.crop(length)
    assert layer.keys.shape[2] == length and draft.get_seq_length() == length


def _common(tiny_llm_dir, oracle_data):
    return ["--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text", "--reference-field", "summary",
            "--id-field", "id", "--limit", 3, "--max-new-tokens", 6]


def test_generate_with_a_draft_prints_the_full_models_outputs(capsys, tiny_llm_dir, oracle_data, tmp_path):
    from test_cli import run_cli

    from skiporacle.data.files import read_appended

    with one_thread():
        code, out, err = run_cli(capsys, "generate", *_common(tiny_llm_dir, oracle_data), "--draft", "0,2",
                                 "--draft-tokens", 2)
        assert code == 0, err
        assert "outputs equal to the full model's plain decoding: 3 of 3" in out and "% of drafted tokens accepted" in out
        code, plain, err = run_cli(capsys, "generate", *_common(tiny_llm_dir, oracle_data))
        assert code == 0, err
        texts = sorted(line for line in plain.splitlines() if line.startswith("  "))
        assert sorted(line for line in out.splitlines() if line.startswith("  ")) == texts  # the same outputs
        stream = tmp_path / "drafted.jsonl"
        code, _, err = run_cli(capsys, "generate", *_common(tiny_llm_dir, oracle_data), "--draft", "0,2",
                               "--out", stream)
        assert code == 0, err
    assert sorted("  " + r["output"] for r in read_appended(stream)) == texts


def test_draft_refusals_come_before_the_model(capsys, tiny_llm_dir, oracle_data, monkeypatch):
    from test_cli import assert_bad

    from skiporacle.oracle import inputs as run_inputs

    monkeypatch.setattr(run_inputs, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    common = _common(tiny_llm_dir, oracle_data)
    assert_bad(capsys, "generate", *common, "--draft", "0,2", "--draft-tokens", 0, match="--draft-tokens must be at least 1")
    assert_bad(capsys, "generate", *common, "--draft", "0,2", "--layers", "0,1", match="--layers does not apply")
    assert_bad(capsys, "generate", *common, "--draft", "0,2", "--prompt-under-allocation",
               match="drop --prompt-under-allocation")
    assert_bad(capsys, "generate", *common, "--draft", "0,0", match="named twice")


def test_a_healed_variant_drafts_too(capsys, tiny_llm_dir, oracle_data, tmp_path):
    """A variant folder as --draft: its own layer weights draft, the full model checks; the outputs stay the
    full model's.  (The student is saved before any training step: the check is of the wiring.)"""
    from test_cli import assert_bad, run_cli

    from skiporacle.heal.student import build_student, save_variant
    from skiporacle.oracle.workers import load_model_cached

    model, tokenizer = load_model_cached(str(tiny_llm_dir), "float32")
    folder = tmp_path / "v"
    save_variant(build_student(model, (0, 2, 4, 5)), tokenizer, {
        "base_model": str(tiny_llm_dir), "num_layers": 6, "layers": [0, 2, 4, 5], "data": {}}, folder)
    with one_thread():
        code, out, err = run_cli(capsys, "generate", *_common(tiny_llm_dir, oracle_data), "--draft", folder)
    assert code == 0, err
    assert f"draft healed:v (4 of 6 layers)" in out and "plain decoding: 3 of 3" in out
    assert_bad(capsys, "generate", *_common(tiny_llm_dir, oracle_data), "--draft", tmp_path,
               match="is not a healed variant")
