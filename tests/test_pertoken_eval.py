"""Per-token layer skipping (`pertoken/token_labels.py`, `pertoken/token_generation.py`) against cache-free references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import skiporacle.pertoken.token_generation as pertoken_generate
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.data.errors import BadInput
from skiporacle.pertoken.token_labels import per_token_labels
from skiporacle.pertoken.token_generation import generate_per_token, reference_per_token
from skiporacle.search.families import early_exit_family, importance_family

from test_crossdecode import _model  # noqa: E402 (tests dir is on sys.path)
from rounding import assert_rounding_close, model_tolerance

MAX_NEW = 7
EOS = frozenset({1})
DROP_ORDER = (3, 1, 5, 0, 2, 4)  # drops layer 0 fourth, unless kept


def _constant(member: int):
    return lambda hidden: torch.full((len(hidden),), member, dtype=torch.long)


def _mixed(members: int):
    """A member per row from the signs of two hidden coordinates: the same function of the hidden everywhere."""
    return lambda h: ((h[:, 0] > 0).long() * 2 + (h[:, 1] > 0).long()).clamp(max=members - 1)


def test_families():
    family = importance_family(DROP_ORDER, 6, keep=(0,))
    assert [m.layers for m in family.members] == [
        (0, 1, 2, 3, 4, 5), (0, 1, 2, 4, 5), (0, 2, 4, 5), (0, 2, 4), (0, 4), (0,)]
    assert [m.spec for m in family.members][-1] == "importance:1"
    assert [m.layers for m in importance_family(DROP_ORDER, 6).members][-1] == (4,)
    assert [m.layers for m in importance_family((5, 4), 6, keep=(4,)).members] == [tuple(range(6)), (0, 1, 2, 3, 4)]
    assert [m.layers for m in early_exit_family(3).members] == [(0, 1, 2), (0, 1), (0,)]
    with pytest.raises(BadInput):
        importance_family((1, 1, 2), 3)


@pytest.mark.parametrize("layout", ["llama", "qwen3", "mistral-long"])
def test_constant_member_equals_ordinary_skipping(layout, tiny_model, prompt_ids, ref, single_thread):
    """A constant member never reads a skipped layer's filled keys/values: it is ordinary skipping.

    (Only a later token that runs a layer its predecessors skipped reads them; member 0 is plain greedy.)
    """
    model = _model(layout, tiny_model)
    family = importance_family(DROP_ORDER, 6, keep=(0,))
    for m, member in enumerate(family.members):
        got = generate_per_token(model, prompt_ids, family, _constant(m), 0, DecodeProtocol(MAX_NEW, eos=EOS), ref.PAD_ID)
        assert got.tokens == [ref.reference_greedy(model, p, member.layers, MAX_NEW, EOS) for p in prompt_ids], m
        assert got.members == [[m] * len(t) for t in got.tokens]
        assert got.layers_run == [[member.cost] * len(t) for t in got.tokens]


@pytest.mark.parametrize("layout,kind,probe", [("llama", "importance", 0), ("qwen3", "importance", 1),
                                               ("llama", "importance-all", -1), ("qwen3", "early-exit", 0)])
def test_generate_equals_reference(layout, kind, probe, tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model(layout)
    family = (early_exit_family(6) if kind == "early-exit"
              else importance_family(DROP_ORDER, 6, keep=() if kind == "importance-all" else range(probe + 1)))
    decide = _mixed(len(family.members))
    got = generate_per_token(model, prompt_ids, family, decide, probe, DecodeProtocol(MAX_NEW, eos=EOS), ref.PAD_ID)
    assert got == reference_per_token(model, prompt_ids, family, decide, probe, DecodeProtocol(MAX_NEW, eos=EOS), ref.PAD_ID)
    assert len({m for row in got.members for m in row}) >= 3  # mixed across rows and steps
    assert any(len(set(row)) > 1 for row in got.members)
    eos = EOS | {got.tokens[0][2]}  # row 0 leaves the batch at step 2, the others go on without it
    got = generate_per_token(model, prompt_ids, family, decide, probe, DecodeProtocol(MAX_NEW, eos=eos), ref.PAD_ID)
    assert got == reference_per_token(model, prompt_ids, family, decide, probe, DecodeProtocol(MAX_NEW, eos=eos), ref.PAD_ID)
    assert len(got.tokens[0]) == 3 and max(map(len, got.tokens)) == MAX_NEW


def test_skipped_layers_keys_values_are_read(tiny_model, prompt_ids, ref, monkeypatch, single_thread):
    """Zeroing the keys/values a skipped layer fills in changes later tokens that run the layer."""
    model = tiny_model("llama")
    family = importance_family(DROP_ORDER, 6, keep=(0,))
    args = (model, prompt_ids, family, _mixed(len(family.members)), 0, DecodeProtocol(MAX_NEW, eos=EOS), ref.PAD_ID)
    filled = generate_per_token(*args)
    project = pertoken_generate.project

    def unfilled(layer, normed, cos, sin, rotate, query=True):
        q, k, v = project(layer, normed, cos, sin, rotate, query)
        return (q, k, v) if query else (q, torch.zeros_like(k), torch.zeros_like(v))

    monkeypatch.setattr(pertoken_generate, "project", unfilled)
    assert generate_per_token(*args).tokens != filled.tokens


def test_probe_layer_must_be_kept_by_every_member(tiny_model, prompt_ids, ref):
    family = importance_family(DROP_ORDER, 6, keep=(0,))
    with pytest.raises(ValueError, match="does not keep"):
        generate_per_token(tiny_model("llama"), prompt_ids, family, _constant(0), 1, DecodeProtocol(MAX_NEW, eos=EOS), ref.PAD_ID)


def _outputs(model, prompts, ref):
    return [ref.reference_greedy(model, p, tuple(range(6)), MAX_NEW, EOS) for p in prompts]


@pytest.mark.parametrize("layout", ["llama", "qwen3"])
def test_early_exit_labels_equal_hidden_states_of_one_forward(layout, tiny_model, prompt_ids, ref, single_thread):
    model = tiny_model(layout)
    outputs = _outputs(model, prompt_ids, ref)
    labels = per_token_labels(model, prompt_ids, outputs, early_exit_family(6), probe_layer=2, batch_size=2)
    assert len(labels.correct) == sum(map(len, outputs))
    tolerance = model_tolerance(model.config)
    assert (labels.correct[:, 0] | (labels.margin < tolerance)).all()  # the cache-free reference: equal but at near-ties
    row = 0
    for i, (prompt, out) in enumerate(zip(prompt_ids, outputs)):
        with torch.inference_mode():
            hf = model(input_ids=torch.tensor([prompt + out[:-1]]), output_hidden_states=True)
        at = slice(len(prompt) - 1, None)
        target = torch.tensor(out)
        n = len(out)
        assert (labels.sequence[row : row + n] == i).all() and (labels.position[row : row + n] == np.arange(n)).all()
        for m in range(6):
            exit_after = 6 - m
            hidden = hf.hidden_states[exit_after][0, at]
            logits = hf.logits[0, at] if exit_after == 6 else model.lm_head(model.model.norm(hidden))
            assert (labels.correct[row : row + n, m] == (logits.argmax(-1) == target).numpy()).all(), (i, m)
        features = hf.hidden_states[3][0, at]
        assert_rounding_close(labels.features[row : row + n], features,
                              model_tolerance(model.config, float(features.abs().max())))
        top = hf.logits[0, at].topk(2).values
        assert_rounding_close(labels.margin[row : row + n], top[:, 0] - top[:, 1], tolerance)
        row += n
    assert not labels.correct[:, 1:].all()  # skipping changes some tokens: the comparison can fail


@pytest.mark.parametrize("layout", ["llama", "qwen3"])
def test_importance_labels_equal_position_by_position_reference(layout, tiny_model, prompt_ids, ref, single_thread):
    """Label (token j, member m) = member m's greedy token after prompt + out[:j], every earlier position full."""
    model = tiny_model(layout)
    outputs = _outputs(model, prompt_ids, ref)
    family = importance_family(DROP_ORDER, 6)  # drops layer 0 at member 4: that member starts from the embeddings
    labels = per_token_labels(model, prompt_ids, outputs, family, probe_layer=-1, batch_size=3)
    want = [[ref.reference_greedy(model, prompt + out[:j], member.layers, 1, EOS)[0] == out[j]
             for member in family.members] for prompt, out in zip(prompt_ids, outputs) for j in range(len(out))]
    assert (labels.correct == np.array(want)).all()
    assert labels.correct[:, 0].all() and not labels.correct.all()
    assert labels.features.shape == (len(want), model.config.hidden_size)


def test_empty_outputs_give_no_rows(tiny_model, prompt_ids, ref):
    model = tiny_model("llama")
    outputs = [[], [5, 1], [], [], []]
    labels = per_token_labels(model, prompt_ids, outputs, early_exit_family(6), probe_layer=0)
    assert labels.sequence.tolist() == [1, 1] and labels.position.tolist() == [0, 1]
    empty = per_token_labels(model, prompt_ids, [[]] * 5, early_exit_family(6), probe_layer=0)
    assert empty.correct.shape == (0, 6) and empty.features.shape == (0, 64)


@pytest.mark.parametrize("layout", ["gpt2", "mistral"])  # mistral: a sliding window shorter than the sequences
def test_unsupported_layout_raises_bad_input(layout, tiny_model, prompt_ids, ref):
    model = tiny_model(layout)
    family = early_exit_family(6)
    with pytest.raises(BadInput):
        generate_per_token(model, prompt_ids, family, _constant(0), 0, DecodeProtocol(MAX_NEW, eos=EOS), ref.PAD_ID)
    with pytest.raises(BadInput):
        per_token_labels(model, prompt_ids, [[5, 1]] * len(prompt_ids), family, probe_layer=0)
