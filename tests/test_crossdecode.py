"""Cross-candidate decoding (`eval/crossdecode.py`) against the per-candidate reference path."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import skiporacle.eval.crossdecode as crossdecode
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.crossdecode import unsupported_reason
from skiporacle.eval.generate import generate_candidates
from skiporacle.eval.model import num_layers
from skiporacle.search.allocation import parse_spec

from conftest import _config  # noqa: E402 (tests dir is on sys.path)
from rounding import assert_rounding_close, model_tolerance

MAX_NEW = 7
SPECS = ("all", "uniform:3", "1-5", "exit:2", "5", "0,2,4", "0")
COVERED = ("llama", "qwen3", "mistral-long", "qwen2-long")


def _model(layout: str, tiny_model):
    """A tiny model; "-long" layouts have their sliding window beyond every test length."""
    if not layout.endswith("-long"):
        return tiny_model(layout)
    config = _config(layout.removesuffix("-long"))
    config.sliding_window = 128
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    return model


def _both(model, tokenizer, texts, allocations, first_token="allocation", max_new=MAX_NEW):
    """Outputs of the two decoders under the same protocol."""
    together = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(max_new, first_token))
    alone = generate_candidates(model, tokenizer, texts, allocations,
                                DecodeProtocol(max_new, first_token, decoder="per-candidate"))
    return together, alone


@pytest.mark.parametrize("layout", COVERED)
@pytest.mark.parametrize("first_token", ["allocation", "full"])
def test_together_equals_per_candidate(layout, first_token, tiny_model, tokenizer, prompt_ids, ref, single_thread):
    model = _model(layout, tiny_model)
    assert unsupported_reason(model, 64) is None
    allocations = [parse_spec(s, num_layers(model)) for s in SPECS]
    together, alone = _both(model, tokenizer, [ref.as_text(p) for p in prompt_ids], allocations, first_token=first_token)
    assert together == alone
    if first_token == "allocation":  # and both equal the cache-free brute force
        for a, allocation in enumerate(allocations):
            want = [ref.reference_greedy(model, p, allocation.layers, MAX_NEW, {1}) for p in prompt_ids]
            assert [list(row[a].tokens) for row in together] == want, allocation.spec


@pytest.mark.parametrize("first_token", ["allocation", "full"])
def test_rows_finishing_early_leave_without_disturbing_others(first_token, tiny_model, tokenizer, prompt_ids, ref,
                                                              single_thread):
    model = tiny_model("llama")
    allocations = [parse_spec(s, num_layers(model)) for s in SPECS]
    texts = [ref.as_text(p) for p in prompt_ids]
    free = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, decoder="per-candidate"))
    counts: dict[int, int] = {}
    for row in free:
        for g in row:
            for t in set(g.tokens[:3]):
                counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=lambda t: (counts[t], -t))  # early, in many rows: some stop at step 0 or 1
    with ref.eos_override(model, tokenizer, stop):
        together, alone = _both(model, tokenizer, texts, allocations, first_token=first_token)
    assert together == alone
    lengths = [len(g.tokens) for row in together for g in row]
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW


def test_chunks_of_candidates_give_the_same_outputs(tiny_model, tokenizer, prompt_ids, ref, monkeypatch, single_thread):
    model = tiny_model("qwen3")
    allocations = [parse_spec(s, num_layers(model)) for s in SPECS]
    texts = [ref.as_text(p) for p in prompt_ids]
    whole = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, decoder="together"))
    monkeypatch.setattr(crossdecode, "MAX_ROWS", 2 * len(prompt_ids))  # four chunks of two candidates
    assert generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, decoder="together")) == whole


def test_max_new_tokens_edge_cases(tiny_model, tokenizer, prompt_ids, ref, single_thread):
    model = tiny_model("llama")
    allocations = [parse_spec(s, num_layers(model)) for s in ("all", "1-5")]
    texts = [ref.as_text(p) for p in prompt_ids]
    for first_token in ("allocation", "full"):
        for limit in (0, 1, 2):
            together, alone = _both(model, tokenizer, texts, allocations, first_token, limit)
            assert together == alone, (first_token, limit)


@pytest.mark.parametrize("layout", ["gemma3", "gpt2", "opt", "mistral"])
def test_uncovered_layouts_fall_back_to_the_reference_path(layout, tiny_model, tokenizer, prompt_ids, ref,
                                                           single_thread):
    model = tiny_model(layout)
    assert unsupported_reason(model, 64) is not None  # mistral: its window (4) is shorter than the sequences
    allocations = [parse_spec(s, num_layers(model)) for s in ("all", "uniform:3")]
    together, alone = _both(model, tokenizer, [ref.as_text(p) for p in prompt_ids], allocations)
    assert together == alone


def test_prompt_cache_is_left_unchanged(tiny_model, prompt_ids, ref):
    from transformers import DynamicCache

    from skiporacle.eval.decode import prefill
    from skiporacle.eval.generate import left_pad

    model = tiny_model("llama")
    ids, mask = left_pad(prompt_ids, 0)
    cache = prefill(model, ids[:, :-1], mask[:, :-1], DynamicCache())
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    allocations = [parse_spec(s, num_layers(model)) for s in SPECS]
    crossdecode.decode_candidates(model, allocations, cache, mask[:, :-1], ids[:, -1], MAX_NEW, frozenset({1}))
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_margins_are_the_reference_paths_top2_gaps(tiny_model, tokenizer, prompt_ids, ref, single_thread):
    """`margins` forces the per-candidate path and gives one gap per generated token, equal to a direct pass."""
    from skiporacle.eval.decode import top2_margin

    model = tiny_model("llama")
    allocations = [parse_spec(s, num_layers(model)) for s in ("all", "1-5")]
    texts = [ref.as_text(p) for p in prompt_ids]
    for first_token in ("allocation", "full"):
        margins: list = []
        outputs = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, first_token=first_token), margins=margins)
        assert [[len(m) for m in row] for row in margins] == [[len(g.tokens) for g in row] for row in outputs]
        assert all(gap >= 0 for row in margins for m in row for gap in m)
    # The full model's first margin, recomputed from one plain forward pass over the prompt.
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids[0]])).logits[:, -1]
    assert_rounding_close(margins[0][0][0], float(top2_margin(logits)[0]), model_tolerance(model.config))


def test_runs_older_than_the_decoder_setting_resume_with_the_per_candidate_decoder(tmp_path):
    import json

    from skiporacle.oracle.records import SETTINGS
    from skiporacle.oracle.oracle_settings import OracleSettings, fingerprint

    old = {k: v for k, v in fingerprint(OracleSettings()).items() if k != "decoder"}
    (tmp_path / SETTINGS).write_text(json.dumps(old))
    assert fingerprint(OracleSettings(decoder="per-candidate"), tmp_path) == old
    assert fingerprint(OracleSettings(), tmp_path)["decoder"] == "together"  # differs: the resume is refused


def test_healed_and_training_free_candidates_of_the_same_layers_decode_together(tiny_model, tokenizer, prompt_ids, ref,
                                                                               tmp_path, single_thread):
    """A layer run by two modules (the base's and a healed variant's) forms two lanes; both match the reference."""
    from skiporacle.search.allocation import Allocation

    model = tiny_model("llama")
    config = _config("llama")
    config.num_hidden_layers = 4
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path / "h")
    layers = (0, 2, 3, 5)
    allocations = [Allocation(layers, 6, "healed:h", weights=str(tmp_path / "h")), Allocation(layers, 6, "0,2,3,5"),
                   parse_spec("uniform:3", 6), parse_spec("all", 6)]
    together, alone = _both(model, tokenizer, [ref.as_text(p) for p in prompt_ids], allocations)
    assert together == alone
    assert [row[0] for row in together] != [row[1] for row in together]  # the healed weights were used


RAGGED = (("all", "1-5", "0,2,4"), ("uniform:3",), (), ("5", "0", "exit:2", "all", "1-5"), ("0,2,4", "0,3"))


def _prompt_cache(model, rows):
    from skiporacle.eval.generate import prefill_prompt, left_pad

    ids, mask = left_pad(rows, 0)
    cache, prefix_mask, _ = prefill_prompt(model, ids, mask, "allocation")
    return cache, prefix_mask, ids[:, -1]


@pytest.mark.parametrize("layout", ["llama", "qwen3"])
def test_per_sequence_candidate_lists_equal_each_sequences_flat_decoding(layout, tiny_model, prompt_ids, monkeypatch,
                                                                         single_thread):
    """Ragged lists (one empty, prompts of different lengths) give each sequence's own flat B=1 decoding."""
    model = tiny_model(layout)
    lists = [[parse_spec(s, num_layers(model)) for s in specs] for specs in RAGGED]
    first_tokens: dict[int, int] = {}
    for b, row in enumerate(prompt_ids):  # an EOS that many rows emit early, so rows leave at different steps
        for tokens in crossdecode.decode_candidates(model, lists[b], *_prompt_cache(model, [row]), 3, frozenset())[0]:
            for t in set(tokens):
                first_tokens[t] = first_tokens.get(t, 0) + 1
    eos = frozenset({max(first_tokens, key=lambda t: (first_tokens[t], -t))})
    alone = [crossdecode.decode_candidates(model, lists[b], *_prompt_cache(model, [row]), MAX_NEW, eos)[0]
             for b, row in enumerate(prompt_ids)]
    cache, prefix_mask, last = _prompt_cache(model, prompt_ids)
    together = crossdecode.decode_candidates(model, lists, cache, prefix_mask, last, MAX_NEW, eos)
    assert together == alone
    assert [len(row) for row in together] == [len(specs) for specs in RAGGED]
    lengths = [len(tokens) for row in together for tokens in row]
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW
    monkeypatch.setattr(crossdecode, "MAX_ROWS", 2 * len(prompt_ids))  # chunks of two candidate indices
    assert crossdecode.decode_candidates(model, lists, cache, prefix_mask, last, MAX_NEW, eos) == alone
    decode = torch.tensor([True, False, True, False, True])
    partial = crossdecode.decode_candidates(model, lists, cache, prefix_mask, last, MAX_NEW, eos, decode)
    assert partial == [row if on else [[] for _ in row] for row, on in zip(alone, decode.tolist())]


def test_per_sequence_candidate_lists_refuse_healed_variants(tiny_model, prompt_ids):
    from skiporacle.search.allocation import Allocation

    model = tiny_model("llama")
    lists = [[Allocation((0, 2), 6, "healed:h", weights="h")]] + [[] for _ in prompt_ids[1:]]
    with pytest.raises(ValueError, match="training-free"):
        crossdecode.decode_candidates(model, lists, *_prompt_cache(model, prompt_ids), MAX_NEW, frozenset({1}))
