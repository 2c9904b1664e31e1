"""Plan-level grouping (issue 24): rows held from several prefill batches, regrouped by their choice and decoded
in new batches, give the cache-free brute force's tokens on every layout; the plan is what its rule says; a
deployment's outputs do not depend on how much it holds, healed variants included."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import NUM_LAYERS, PAD_ID
from skiporacle.controller.deploy import deploy_decisions
from skiporacle.eval.batching import left_pad
from skiporacle.eval.decode import prefill_shared
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import generate
from skiporacle.eval.mixed_decode import decode_groups
from skiporacle.eval.model import load_model, num_layers
from skiporacle.eval.regroup import HeldPrompt, hold_prompts, plan_windows, regroup, stack_prompts
from skiporacle.search.allocation import Allocation, full, parse_spec

SPECS = ("0,2,4", "all", "1-3,5", "0,2,4")  # one allocation chosen twice as often


def _held(model, prompts: list[list[int]], split: int) -> list[HeldPrompt]:
    held = []
    for start in range(0, len(prompts), split):  # prefill batches of `split` rows, each at its own width
        part = prompts[start:start + split]
        ids, mask = left_pad(part, PAD_ID, model.device)
        cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
        held += hold_prompts(cache, mask, part, range(start, start + len(part)))
    return held


def test_regrouped_rows_decode_as_the_brute_force(layout, tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model(layout)
    n = num_layers(model)
    prompts = prompt_ids + [p[::-1] for p in prompt_ids]  # 10 prompts of 1-13 tokens
    chosen = [parse_spec(SPECS[i % len(SPECS)], n) for i in range(len(prompts))]
    held = _held(model, prompts, split=4)
    batches = regroup(held, chosen, cap=3)
    assert sorted(p for b in batches for p in b) == list(range(len(prompts)))
    assert any(len({held[p].index // 4 for p in b}) > 1 for b in batches)  # some batch mixes prefill batches
    protocol = DecodeProtocol(6, eos=frozenset({ref.EOS_ID}))
    for batch in batches:
        cache, ids, mask = stack_prompts([held[p] for p in batch], PAD_ID, model.device)
        out = decode_groups(model, cache, ids, mask, [chosen[p] for p in batch], protocol)
        for p, tokens in zip(batch, out):
            want = ref.reference_greedy(model, prompts[p], chosen[p].layers, 6, {ref.EOS_ID})
            assert tokens == want, (layout, chosen[p].spec, prompts[p])


def test_the_plan_fills_batches_per_choice_then_pools_the_rest():
    n = 4
    a, b, c = Allocation((0, 1), n, "a"), Allocation((0, 2), n, "b"), Allocation((1, 2), n, "c", weights="models/c")
    lengths = [5, 9, 2, 7, 3, 8, 6, 4]
    held = [HeldPrompt(i, tuple(range(k)), ()) for i, k in enumerate(lengths)]
    chosen = [a, b, a, a, c, b, a, a]  # a: rows 0, 2, 3, 6, 7; b: 1, 5; c: 4
    # a, longest first: 3 (7), 6 (6), 0 (5), 7 (4), 2 (2) -> [3, 6], [0, 7], rest 2; b: [1, 5]; c: rest 4
    assert regroup(held, chosen, cap=2) == [[3, 6], [0, 7], [1, 5], [4, 2]]
    assert regroup(held, chosen, cap=8) == [[1, 5, 3, 6, 0, 7, 4, 2]]  # nothing fills a batch: one mixed batch
    assert regroup(held, chosen, cap=1) == [[3], [6], [0], [7], [2], [1], [5], [4]]
    with pytest.raises(ValueError, match="at least one row"):
        regroup(held, chosen, cap=0)


def test_windows_are_planned_from_lengths_alone():
    batches, lengths = [[0, 1], [2], [3, 4, 5], [6]], [11, 9, 21, 5, 4, 3, 2]
    # padded cache tokens per batch: 2 x 10, 1 x 20, 3 x 4, 1 x 1 (a prompt's last token is not cached)
    assert plan_windows(batches, lengths, 1, 0) == [[b] for b in batches]
    assert plan_windows(batches, lengths, 1, 40) == [[[0, 1], [2]], [[3, 4, 5], [6]]]
    assert plan_windows(batches, lengths, 2, 40) == [[[0, 1]], [[2]], [[3, 4, 5], [6]]]  # a full window closes
    assert plan_windows(batches, lengths, 4, 40) == [[[0, 1]], [[2]], [[3, 4, 5]], [[6]]]
    assert plan_windows(batches, lengths, 1, 10**9) == [batches]


def _variant(folder, layers: int, seed: int):
    """A stand-in healed variant: a random model of `layers` layers shaped like the tiny LLM (its own weights)."""
    config = LlamaConfig.from_pretrained(folder)
    config.num_hidden_layers = layers
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def test_a_deployment_gives_the_same_outputs_whatever_it_holds(tiny_llm_dir, tmp_path, single_thread):
    model, tokenizer = load_model(str(tiny_llm_dir))
    variant = tmp_path / "variant"
    _variant(tiny_llm_dir, 3, seed=7).save_pretrained(variant)
    allocations = [Allocation((0, 2, 5), NUM_LAYERS, "healed:variant", weights=str(variant)),
                   parse_spec("0,2,5", NUM_LAYERS), parse_spec("1-4", NUM_LAYERS), full(NUM_LAYERS)]
    words = "the river rose after three days of rain and the town closed its bridge".split()
    prompts = [" ".join(words[i % 5: i % 5 + 2 + (3 * i) % 9]) for i in range(11)]

    def rule(features, indices):
        assert features.shape[0] == len(indices) and features.dtype.name == "float64"
        return [(3 * i) % 4 for i in indices]

    protocol = DecodeProtocol(4)
    runs = {window: deploy_decisions(model, tokenizer, prompts, allocations, rule, protocol, max_batch=3,
                                     window_bytes=window)
            for window in (0, 1, 2**40)}
    for k, allocation in enumerate(allocations):  # each allocation's rows as the plain engine generates them
        rows = [i for i in range(len(prompts)) if (3 * i) % 4 == k]
        want = [g.tokens for g in generate(model, tokenizer, [prompts[i] for i in rows], allocation, protocol)]
        for window, run in runs.items():
            assert [run.generations[i].tokens for i in rows] == want, (window, allocation.spec)
    assert all(run.choices == [(3 * i) % 4 for i in range(len(prompts))] for run in runs.values())
    assert runs[0].batches == runs[2**40].batches == 4  # 11 prompts in prefill batches of at most 3
    assert runs[2**40].decode_loops == 4 < runs[0].decode_loops  # 3+3+3+2 rows of one choice each; per prefill batch, more loops
    assert sum(runs[2**40].paths.values()) == 4
    assert runs[0].paths == runs[1].paths  # a window of one byte holds one prefill batch, like none

    lines = []  # a stream's lines in order, then a run resumed after the first 5 of them
    deploy_decisions(model, tokenizer, prompts, allocations, rule, protocol, max_batch=3, on_batch=lines.extend,
                     window_bytes=2**40)
    resumed = []
    deploy_decisions(model, tokenizer, prompts, allocations, rule, protocol, max_batch=3, on_batch=resumed.extend,
                     wanted={i for i, _, _ in lines[5:]}, window_bytes=2**40)
    assert lines[:5] + resumed == lines and len(lines) == len(prompts)

    reported = []
    wanted = {1, 4, 5, 9}
    part = deploy_decisions(model, tokenizer, prompts, allocations, rule, protocol, max_batch=3, wanted=wanted,
                            on_batch=reported.extend, window_bytes=2**40)
    assert sorted(i for i, _, _ in reported) == sorted(wanted)  # each wanted output once, no other
    assert all(g == runs[0].generations[i] and c == (3 * i) % 4 for i, g, c in reported)
    assert [i for i, g in enumerate(part.generations) if g is not None] == sorted(wanted)
