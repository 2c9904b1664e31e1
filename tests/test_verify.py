"""Batched teacher-forced verification (`eval/verify.py`) against generation and the per-allocation passes."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.model import sliced_config
from skiporacle.eval.generate import prefill_prompt, generate_candidates, left_pad
from skiporacle.eval.teacher_forcing import teacher_forced_passes
from skiporacle.eval.verify import NEAR_TIE, verify_candidates
from skiporacle.search.allocation import Allocation, full, parse_spec

from conftest import _config  # noqa: E402 (tests dir is on sys.path)
from rounding import assert_rounding_close, max_difference, model_tolerance

MAX_NEW = 8
# Every subset of layers 1-5, layer 0 always kept: 32 allocations, the full model among them.
SUBSETS = tuple(Allocation((0,) + rest, 6, "0," + ",".join(map(str, rest)))
                for r in range(6) for rest in itertools.combinations(range(1, 6), r))


def _inputs(model, prompts):
    """The "allocation" protocol's shared prompt cache, its mask and the last prompt tokens."""
    ids, mask = left_pad(prompts, 0)
    cache, prefix_mask, _ = prefill_prompt(model, ids, mask, "allocation")
    return cache, prefix_mask, ids[:, -1]


def _generated(model, tokenizer, prompts, allocations, max_new, ref):
    """Greedy outputs [sequence][allocation] of the per-candidate reference decoder."""
    out = generate_candidates(model, tokenizer, [ref.as_text(p) for p in prompts], allocations, DecodeProtocol(max_new, decoder="per-candidate"))
    return [[list(g.tokens) for g in row] for row in out]


def _first_difference(output, target) -> int:
    same = next((i for i, (x, y) in enumerate(zip(output, target)) if x != y), None)
    if same is not None:
        return same
    return -1 if len(output) == len(target) else min(len(output), len(target))


@pytest.mark.parametrize("layout", ["llama", "qwen3"])
@pytest.mark.parametrize("max_new", [2, MAX_NEW])
def test_agreement_and_first_difference_match_greedy_generation(layout, max_new, tiny_model, tokenizer, prompt_ids,
                                                                ref, single_thread):
    model = tiny_model(layout)
    generated = _generated(model, tokenizer, prompt_ids, SUBSETS, max_new, ref)
    targets = [row[-1] for row in generated]  # the last subset keeps every layer
    verdicts = verify_candidates(model, *_inputs(model, prompt_ids), targets, [SUBSETS] * len(prompt_ids))
    near_ties = 0
    for row, outputs, target in zip(verdicts, generated, targets):
        assert len(row) == len(SUBSETS)
        for verdict, output, allocation in zip(row, outputs, SUBSETS):
            if verdict.min_margin < NEAR_TIE:
                near_ties += 1
                continue
            assert verdict.agrees == (output == target), allocation.spec
            assert verdict.first_difference == _first_difference(output, target), allocation.spec
        assert row[-1].agrees
        assert_rounding_close(row[-1].kl, 0.0, model_tolerance(model.config))
    assert near_ties == 0
    flat = [v for row in verdicts for v in row]
    if max_new == 2:  # short targets: not only the full model agrees
        assert sum(v.agrees for v in flat) > len(prompt_ids)
    assert len({v.first_difference for v in flat}) >= 3  # -1 and several positions
    assert all(v.kl > 0 for v in flat if not v.agrees)


def test_agreement_matches_the_cache_free_reference(tiny_model, tokenizer, prompt_ids, ref, single_thread):
    model = tiny_model("llama")
    allocations = [parse_spec(s, 6) for s in ("all", "0-4", "0,1,2,3,5", "0,2-5", "1-5")]
    targets = [ref.reference_greedy(model, p, tuple(range(6)), MAX_NEW, {1}) for p in prompt_ids]
    verdicts = verify_candidates(model, *_inputs(model, prompt_ids), targets, [allocations] * len(prompt_ids))
    for p, row, target in zip(prompt_ids, verdicts, targets):
        for verdict, allocation in zip(row, allocations):
            output = ref.reference_greedy(model, p, allocation.layers, MAX_NEW, {1})
            assert verdict.min_margin >= NEAR_TIE
            assert (verdict.agrees, verdict.first_difference) == (output == target, _first_difference(output, target))


def _kl_reference(model, tokenizer, prompts, targets, allocations, ref) -> list[list[float]]:
    """KL(full || allocation) per token from `teacher_forced_passes` logits, [sequence][allocation]."""
    log_probs = teacher_forced_passes(model, tokenizer, [ref.as_text(p) for p in prompts], targets,
                                      [full(6)] + list(allocations),
                                      lambda hidden, _, head: head(hidden).float().log_softmax(-1))
    return [[float((row[0].exp() * (row[0] - lp)).sum(-1).mean()) for lp in row[1:]] for row in log_probs]


@pytest.mark.parametrize("layout", ["llama", "qwen3"])
def test_kl_equals_the_per_allocation_teacher_forced_pass(layout, tiny_model, tokenizer, prompt_ids, ref, tmp_path,
                                                         single_thread):
    model = tiny_model(layout)
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(sliced_config(_config(layout), (0, 2, 5)), dtype=torch.float32).save_pretrained(tmp_path / "h")
    healed = Allocation((0, 2, 5), 6, "healed:h", weights=str(tmp_path / "h"))  # its own modules at those layers
    allocations = [parse_spec(s, 6) for s in ("all", "uniform:3", "1-5", "exit:2", "0,2,5")] + [healed]
    targets = [row[0] for row in _generated(model, tokenizer, prompt_ids, [full(6)], MAX_NEW, ref)]
    verdicts = verify_candidates(model, *_inputs(model, prompt_ids), targets, [allocations] * len(prompt_ids))
    want = _kl_reference(model, tokenizer, prompt_ids, targets, allocations, ref)
    tolerance = model_tolerance(model.config)
    assert_rounding_close([[v.kl for v in row] for row in verdicts], want, tolerance)
    # The healed weights were used: beyond rounding, its KL differs from the same layers' without them.
    assert max_difference(verdicts[0][-1].kl, verdicts[0][-2].kl) > 10 * tolerance


def _numbers(verdicts) -> list[float]:
    return [x for row in verdicts for v in row for x in (v.kl, v.min_margin)]


def test_ragged_lists_mixed_lengths_and_chunks(tiny_model, tokenizer, prompt_ids, ref, single_thread):
    """Per-sequence lists (one empty), targets ending at EOS early, any chunking: each sequence's verdicts alone."""
    model = tiny_model("llama")
    specs = (("1-5", "all", "0,2,4"), ("uniform:3",), (), ("5", "0", "exit:2", "all", "0-4", "1-5"), ("0,3", "0-4"))
    lists = [[parse_spec(s, 6) for s in row] for row in specs]
    counts: dict[int, int] = {}
    for row in _generated(model, tokenizer, prompt_ids, [full(6)], MAX_NEW, ref):
        for t in row[0][1:5]:
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=lambda t: (counts[t], -t))
    with ref.eos_override(model, tokenizer, stop):
        targets = [row[0] for row in _generated(model, tokenizer, prompt_ids, [full(6)], MAX_NEW, ref)]
        generated = [_generated(model, tokenizer, [p], lists[b], MAX_NEW, ref)[0] if lists[b] else []
                     for b, p in enumerate(prompt_ids)]
    assert len({len(t) for t in targets}) > 1 and min(map(len, targets)) < MAX_NEW
    inputs = _inputs(model, prompt_ids)
    whole = verify_candidates(model, *inputs, targets, lists)
    assert [len(row) for row in whole] == [len(row) for row in specs]
    for b, (p, row) in enumerate(zip(prompt_ids, whole)):
        alone = verify_candidates(model, *_inputs(model, [p]), [targets[b]], [lists[b]])[0]
        assert [(v.agrees, v.first_difference) for v in row] == [(v.agrees, v.first_difference) for v in alone]
        assert_rounding_close(_numbers([row]), _numbers([alone]), model_tolerance(model.config))
        assert [v.agrees for v in row] == [output == targets[b] for output in generated[b]]
    for max_rows in (1, 3):
        chunked = verify_candidates(model, *inputs, targets, lists, max_rows=max_rows)
        assert [[(v.agrees, v.first_difference) for v in row] for row in chunked] == \
            [[(v.agrees, v.first_difference) for v in row] for row in whole]
        assert_rounding_close(_numbers(chunked), _numbers(whole), model_tolerance(model.config))


def test_refusals(tiny_model, prompt_ids):
    model = tiny_model("llama")
    inputs = _inputs(model, prompt_ids)
    lists = [[full(6)] for _ in prompt_ids]
    with pytest.raises(ValueError, match="targets"):
        verify_candidates(model, *inputs, [[5]] * (len(prompt_ids) - 1), lists)
    with pytest.raises(ValueError, match="non-empty"):
        verify_candidates(model, *inputs, [[5]] * (len(prompt_ids) - 1) + [[]], lists)
    sliding = tiny_model("mistral")  # its window (4) is shorter than the prompts
    with pytest.raises(ValueError, match="sliding window"):
        verify_candidates(sliding, *_inputs(sliding, prompt_ids), [[5]] * len(prompt_ids), lists)
