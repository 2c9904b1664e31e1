"""A batch whose rows chose different allocations: the lanes path against the groups reference, the fallback
where the lanes cannot go, and the measured cost model that picks between them."""

from __future__ import annotations

import json

import pytest

from skiporacle.eval.batching import left_pad
from skiporacle.eval.decode import prefill_shared
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.mixed_decode import (StepCost, cached_step_cost, decode_groups, decode_lanes, decode_mixed,
                                          lanes_reason, measure_step_cost)
from skiporacle.eval.model import num_layers
from skiporacle.search.allocation import Allocation, parse_spec

SPECS = ("all", "0,2,4", "1-5", "5", "0,1")


def _batch(model, prompt_ids):
    ids, mask = left_pad(prompt_ids, 0, model.device)
    cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    return cache, ids, mask


@pytest.mark.parametrize("layout", ["llama", "qwen3"])  # the tiny mistral and qwen2 slide a window of 4: no lanes
def test_lanes_equal_groups_token_for_token(layout, tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model(layout)
    n = num_layers(model)
    chosen = [parse_spec(SPECS[b % len(SPECS)], n) for b in range(len(prompt_ids))]
    cache, ids, mask = _batch(model, prompt_ids)
    protocol = DecodeProtocol(8, eos=frozenset({ref.EOS_ID}))
    groups = decode_groups(model, cache, ids, mask, chosen, protocol)
    assert decode_lanes(model, cache, ids, mask, chosen, protocol) == groups
    for b, (allocation, p) in enumerate(zip(chosen, prompt_ids)):  # and both equal the cache-free brute force
        assert groups[b] == ref.reference_greedy(model, p, allocation.layers, 8, {ref.EOS_ID}), allocation.spec
    tokens, path = decode_mixed(model, cache, ids, mask, chosen, protocol, "lanes")
    assert (tokens, path) == (groups, "lanes")


def test_rows_that_stop_early_leave_the_lanes_alone(tiny_model, prompt_ids, single_thread):
    model = tiny_model("llama")
    n = num_layers(model)
    chosen = [parse_spec(SPECS[b % len(SPECS)], n) for b in range(len(prompt_ids))]
    cache, ids, mask = _batch(model, prompt_ids)
    free = decode_groups(model, cache, ids, mask, chosen, DecodeProtocol(8, eos=frozenset()))
    stop = free[0][1]  # a token row 0 emits second: it stops there, the others go on
    protocol = DecodeProtocol(8, eos=frozenset({stop}))
    groups = decode_groups(model, cache, ids, mask, chosen, protocol)
    assert len(groups[0]) <= 2 and max(map(len, groups)) == 8
    assert decode_lanes(model, cache, ids, mask, chosen, protocol) == groups


def test_where_the_lanes_cannot_go_the_groups_path_decodes(tiny_model, prompt_ids, single_thread):
    model = tiny_model("gpt2")
    n = num_layers(model)
    chosen = [parse_spec("0,2", n), parse_spec("all", n)] * (len(prompt_ids) // 2) + [parse_spec("1", n)] * (len(prompt_ids) % 2)
    cache, ids, mask = _batch(model, prompt_ids)
    protocol = DecodeProtocol(4, eos=frozenset())
    assert "layout 'gpt2'" in lanes_reason(model, chosen, 32)
    assert decode_mixed(model, cache, ids, mask, chosen, protocol, "lanes") == \
        (decode_groups(model, cache, ids, mask, chosen, protocol), "groups")
    with pytest.raises(ValueError, match="the lanes cannot decode these choices: layout 'gpt2'"):
        decode_lanes(model, cache, ids, mask, chosen, protocol)
    healed = Allocation((0, 1), n, "healed:x", weights="models/x")
    assert "healed variants" in lanes_reason(tiny_model("llama"), [healed], 32)
    with pytest.raises(ValueError, match="path must be one of"):
        decode_mixed(model, cache, ids, mask, chosen, protocol, "fast")


def test_the_cost_model_prices_both_paths_by_hand():
    cost = StepCost(rows=(1, 10), layer=(1.0, 2.0), head=(5.0, 6.0), lanes_factor=(1.5, 1.5))
    n = 4
    a, b = Allocation((0, 1, 2, 3), n, "all"), Allocation((0, 1), n, "0,1")
    chosen = [a] * 5 + [b] * 5  # two groups of 5 rows: layer 1.444 s, head 5.444 s at 5 rows
    at5 = 1 + 4 / 9
    got = cost.predict(chosen, n)
    assert got["groups"] == pytest.approx(4 * at5 + (5 + 4 / 9) + 2 * at5 + (5 + 4 / 9))
    assert got["lanes"] == pytest.approx(1.5 * (2 * 2.0 + 2 * at5) + 6.0)  # layers 0-1 on 10 rows, 2-3 on 5
    assert cost.path(chosen, n) == "lanes"
    assert cost.path([a] * 10, n) == "groups"  # one group: the lanes' overhead buys nothing
    heavy = StepCost(rows=(1, 10), layer=(1.0, 2.0), head=(5.0, 6.0), lanes_factor=(9.0, 9.0))
    assert heavy.path(chosen, n) == "groups"


def test_the_cost_model_is_measured_once_per_machine(tiny_model, tmp_path, monkeypatch, single_thread):
    model = tiny_model("llama")
    measured = measure_step_cost(model, rows=(1, 3))
    assert measured.rows == (1, 3) and all(v >= 0 for v in measured.layer + measured.head)
    assert all(0 < f < float("inf") for f in measured.lanes_factor)
    monkeypatch.setenv("SKIPORACLE_CACHE", str(tmp_path))
    first = cached_step_cost(model)
    (stored,) = (tmp_path / "step-cost").glob("*.json")
    assert StepCost(**{k: tuple(v) for k, v in json.loads(stored.read_text()).items()}) == first
    calls = []
    monkeypatch.setattr("skiporacle.eval.mixed_decode.measure_step_cost", lambda m: calls.append(m))
    assert cached_step_cost(model) == first and not calls  # read back, not measured again
