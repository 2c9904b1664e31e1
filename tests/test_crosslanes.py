"""The lanes of the cross-candidate passes (which rows run which layer module) and the shared-prefix attention
merge, each against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from rounding import assert_rounding_close, rounding_bound
from skiporacle.eval.crosslanes import Lane, flat_lanes, ragged_lanes, with_shared_prefix
from skiporacle.eval.model import decoder_layers, num_layers
from skiporacle.search.allocation import parse_spec

SPECS = ("all", "0,2,4", "1-5", "5", "0,1")


def _rows_per_layer(lanes) -> list[set[int]]:
    return [{int(r) for lane in layer for r in lane.rows} for layer in lanes]


def test_flat_lanes_hold_exactly_the_rows_that_keep_each_layer(tiny_model):
    model = tiny_model("llama")
    n, batch = num_layers(model), 3
    allocations = [parse_spec(s, n) for s in SPECS]
    K = len(allocations)
    lanes = flat_lanes(model, allocations, batch, steps=4)
    assert len(lanes) == n
    for layer, (got, per_layer) in enumerate(zip(_rows_per_layer(lanes), lanes)):
        assert got == {b * K + k for b in range(batch) for k, a in enumerate(allocations) if layer in a.layers}
        assert len(per_layer) == 1 and per_layer[0].module is decoder_layers(model)[layer]  # training-free: one module
        lane = per_layer[0]
        assert lane.width == sum(layer in a.layers for a in allocations)
        assert sorted(lane.slot.tolist()) == list(range(batch * lane.width))  # a dense, unique place per row
        assert lane.keys.shape == (len(lane.rows), *lane.keys.shape[1:2], 4, lane.keys.shape[-1])


def test_ragged_lanes_follow_each_sequences_own_candidates(tiny_model):
    model = tiny_model("llama")
    n = num_layers(model)
    per_sequence = [[parse_spec("0,1", n), parse_spec("0,2", n)], [parse_spec("0", n)], []]
    K = 2
    lanes = ragged_lanes(model, per_sequence, steps=3)
    want = [{b * K + k for b, cands in enumerate(per_sequence) for k, a in enumerate(cands) if layer in a.layers}
            for layer in range(n)]
    assert _rows_per_layer(lanes) == want
    assert lanes[0][0].width == 2 and lanes[1][0].width == 1 and lanes[3] == []  # nobody keeps layer 3
    assert lanes[0][0].slot.tolist() == [0, 1, 2]  # sequence 0 at slots 0-1, sequence 1 at slot 2 (= 1 * C + 0)


def test_a_lane_drops_finished_rows_with_their_caches():
    keys = torch.arange(4.0).view(4, 1, 1, 1)
    lane = Lane(torch.nn.Identity(), 2, torch.tensor([0, 2, 3, 5]), torch.tensor([0, 1, 2, 3]), keys, keys.clone())
    alive = torch.tensor([True, True, False, True, True, False])
    lane.keep(alive)
    assert lane.rows.tolist() == [0, 3] and lane.slot.tolist() == [0, 2] and lane.keys.flatten().tolist() == [0.0, 2.0]


def _attention(query, keys, values, bias, scale):
    scores = (query @ keys.transpose(-1, -2)) * scale + bias
    return torch.softmax(scores, -1) @ values, torch.logsumexp(scores, -1)


@pytest.mark.parametrize("empty_prefix", [False, True])
def test_shared_prefix_merge_equals_attention_over_prefix_and_own_keys(empty_prefix):
    torch.manual_seed(0)
    B, width, Hkv, Q, hd, P, S = 2, 2, 2, 1, 8, 5, 3
    slot = torch.tensor([0, 1, 2])  # rows: sequence 0 twice, sequence 1 once
    of_sequence = slot // width
    query, own_k, own_v = torch.randn(3, Hkv, Q, hd), torch.randn(3, Hkv, S, hd), torch.randn(3, Hkv, S, hd)
    prefix_k, prefix_v = torch.randn(B, Hkv, P, hd), torch.randn(B, Hkv, P, hd)
    prefix_bias = torch.zeros(B, 1, 1, P)
    prefix_bias[1, ..., :2] = float("-inf")  # sequence 1's first two prompt columns are padding
    empty = torch.tensor([False, empty_prefix])
    if empty_prefix:
        prefix_bias[1] = float("-inf")
    scale = 1 / math.sqrt(hd)
    own, own_lse = _attention(query, own_k, own_v, torch.zeros(3, 1, 1, S), scale)
    got = with_shared_prefix(query, own, own_lse, slot, width, prefix_k, prefix_v, prefix_bias, empty, scale)
    keys = torch.cat([prefix_k[of_sequence], own_k], dim=2)
    values = torch.cat([prefix_v[of_sequence], own_v], dim=2)
    bias = torch.cat([prefix_bias[of_sequence], torch.zeros(3, 1, 1, S)], dim=-1)
    want, _ = _attention(query, keys, values, bias, scale)
    if empty_prefix:
        want[2] = own[2]  # a sequence whose prompt is all padding attends to its own keys only
    assert_rounding_close(got, want, rounding_bound(P + S + hd, 3, 4 * hd))
    assert not torch.isnan(got).any()
