"""Tests for skiporacle.eval.model: finding decoder layers, layer views, AllocationCache, loading."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from skiporacle.data.errors import BadInput
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.model import (
    decoder_layers,
    layer_view,
    load_model,
    num_layers,
    resolve_model,
)
from skiporacle.search.allocation import parse_spec
from rounding import assert_rounding_close, max_difference, model_tolerance

pytestmark = pytest.mark.usefixtures("single_thread")

# Kept-layer sets for views: a uniform-like pick, one that skips layer 0 and whose
# Gemma3 layer types (full, sliding, full) differ from the first three positions'
# (sliding, full, sliding), a single late layer, and everything but the last.
VIEW_LAYERS = ((0, 2, 4), (1, 2, 4), (5,), (0, 1, 2, 3, 4))


def _expected_layer_list(model, layout):
    if layout == "gpt2":
        return model.transformer.h
    if layout == "opt":
        return model.model.decoder.layers
    return model.model.layers


def _base(model, layout):
    """The module that owns the layer list (and, for most layouts, the decoder's config)."""
    if layout == "gpt2":
        return model.transformer
    if layout == "opt":
        return model.model.decoder
    return model.model


def _batch():
    rows = [[5, 17, 3, 44, 9, 120, 7, 8, 200, 11, 6, 250], [9, 8, 7, 100, 101, 102, 103]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# --- decoder_layers / num_layers ----------------------------------------------------------


def test_decoder_layers_finds_each_layout(layout, tiny_model, ref):
    model = tiny_model(layout)
    assert decoder_layers(model) is _expected_layer_list(model, layout)
    assert num_layers(model) == ref.NUM_LAYERS


def test_decoder_layers_gemma3_multimodal_path():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.language_model = nn.Module()
            self.model.language_model.layers = nn.ModuleList([nn.Identity() for _ in range(3)])

    wrapper = Wrapper()
    assert decoder_layers(wrapper) is wrapper.model.language_model.layers
    assert num_layers(wrapper) == 3


@pytest.mark.parametrize(
    "module",
    [nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, batch_first=True), 2)],
    ids=["linear", "sequential", "torch-encoder"],
)
def test_decoder_layers_rejects_unsupported(module):
    with pytest.raises(BadInput, match="unsupported model layout"):
        decoder_layers(module)
    with pytest.raises(BadInput):
        num_layers(module)
    with pytest.raises(BadInput):
        layer_view(module, (0,))


def test_decoder_layers_rejects_plain_list():
    holder = nn.Module()
    holder.model = nn.Module()
    holder.model.layers = [nn.Linear(2, 2)]  # a list, not a ModuleList
    with pytest.raises(BadInput):
        decoder_layers(holder)


# --- layer_view ---------------------------------------------------------------------------


def test_layer_view_all_layers_is_the_model(layout, tiny_model, ref):
    model = tiny_model(layout)
    assert layer_view(model, tuple(range(ref.NUM_LAYERS))) is model
    assert layer_view(model, list(range(ref.NUM_LAYERS))) is model


@pytest.mark.parametrize("kept", VIEW_LAYERS, ids=str)
def test_layer_view_shares_weights_and_leaves_model_alone(layout, tiny_model, kept):
    model = tiny_model(layout)
    layers_before = decoder_layers(model)
    modules_before = list(layers_before)
    config_before = model.config.to_dict()
    base_config_before = _base(model, layout).config
    types_before = list(getattr(model.config, "layer_types", None) or [])
    state_before = {k: v.data_ptr() for k, v in model.state_dict().items()}

    view = layer_view(model, kept)

    # The view runs exactly the kept modules, which are the model's own objects.
    view_layers = decoder_layers(view)
    assert len(view_layers) == len(kept)
    for j, i in enumerate(kept):
        assert view_layers[j] is modules_before[i]
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in view.parameters()} <= model_params
    assert view.get_input_embeddings().weight is model.get_input_embeddings().weight
    assert view.get_output_embeddings().weight is model.get_output_embeddings().weight
    # Same storage (the view's layer names are renumbered, so compare storages, not names).
    view_ptrs = {t.data_ptr() for t in view.state_dict().values()}
    assert view_ptrs <= set(state_before.values())
    assert len(view_ptrs) < len(set(state_before.values()))

    # The view's decoder config is sliced...
    view_config = _base(view, layout).config
    assert view_config.num_hidden_layers == len(kept)
    if types_before:
        assert list(view_config.layer_types) == [types_before[i] for i in kept]

    # ...and the model is untouched: same list object, same modules, same config.
    assert decoder_layers(model) is layers_before
    assert list(decoder_layers(model)) == modules_before
    assert len(decoder_layers(model)) == len(modules_before)
    assert _base(model, layout).config is base_config_before
    assert model.config.to_dict() == config_before
    assert model.config.num_hidden_layers == len(modules_before)
    if types_before:
        assert list(model.config.layer_types) == types_before
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == state_before


@pytest.mark.parametrize("kept", VIEW_LAYERS, ids=str)
def test_layer_view_forward_equals_simulated_skip(layout, tiny_model, ref, kept):
    model = tiny_model(layout)
    ids, mask = _batch()  # 12 and 7 tokens: longer than the sliding window (4)
    simulated = ref.simulated_skip(model, kept)
    view = layer_view(model, kept)
    with torch.inference_mode():
        got = view(input_ids=ids, attention_mask=mask, use_cache=False).logits
        want = simulated(input_ids=ids, attention_mask=mask, use_cache=False).logits
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    assert_rounding_close(got[real], want[real], model_tolerance(model.config))
    assert max_difference(got[real], full[real]) > 10 * model_tolerance(model.config)  # skipping does change the output


def test_gemma3_view_keeps_each_layer_attention_type(tiny_model, ref):
    """Layers (1, 2, 4) are full, sliding, full; a view that used the first three types would be wrong."""
    model = tiny_model("gemma3")
    kept = (1, 2, 4)
    ids = torch.tensor([[5, 17, 3, 44, 9, 120, 7, 8, 200, 11, 6, 250, 31, 64]])
    view = layer_view(model, kept)
    positional = ref.simulated_skip(model, kept)
    with torch.inference_mode():
        got = view(input_ids=ids, use_cache=False).logits
        want = positional(input_ids=ids, use_cache=False).logits
        # What slicing the layers but not layer_types would compute.
        wrong = layer_view(model, kept)
        wrong.model.config = copy.copy(wrong.model.config)
        wrong.model.config.layer_types = list(model.config.layer_types[:3])
        bad = wrong(input_ids=ids, use_cache=False).logits
    assert_rounding_close(got, want, model_tolerance(model.config))
    assert max_difference(got, bad) > 10 * model_tolerance(model.config)


def test_two_views_are_independent(tiny_model):
    model = tiny_model("qwen2")
    ids, mask = _batch()
    a, b = layer_view(model, (0, 3)), layer_view(model, (1, 2, 5))
    with torch.inference_mode():
        a1 = a(input_ids=ids, attention_mask=mask, use_cache=False).logits
        b(input_ids=ids, attention_mask=mask, use_cache=False)
        a2 = a(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert len(decoder_layers(a)) == 2 and len(decoder_layers(b)) == 3
    assert list(a.model.config.layer_types) == [model.config.layer_types[i] for i in (0, 3)]
    assert list(b.model.config.layer_types) == [model.config.layer_types[i] for i in (1, 2, 5)]
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)


def test_allocation_view_uses_allocation_layers(tiny_model):
    model = tiny_model("llama")
    allocation = parse_spec("1,3-4", num_layers(model))
    view = layer_view(model, allocation.layers)
    assert list(decoder_layers(view)) == [decoder_layers(model)[i] for i in (1, 3, 4)]
    assert layer_view(model, parse_spec("all", num_layers(model)).layers) is model


# --- AllocationCache ----------------------------------------------------------------------


def _kv(batch, length, fill):
    t = torch.full((batch, 2, length, 4), float(fill))
    return t, t.clone()


def test_allocation_cache_reads_lengths_from_first_kept_layer():
    cache = AllocationCache((2, 4))
    assert cache.reference_layer == 2
    assert cache.get_seq_length() == 0
    cache.update(*_kv(1, 5, 1), layer_idx=2)
    cache.update(*_kv(1, 5, 1), layer_idx=4)
    # Layers 0, 1 and 3 never ran (layer 0's entry was created empty); lengths come from layer 2.
    assert cache.get_seq_length(0) == 5
    assert cache.get_seq_length() == 5
    assert cache.get_seq_length(3) == 5
    assert cache.get_mask_sizes(1, 0) == (6, 0)
    assert cache.get_mask_sizes(1, 3) == (6, 0)
    assert cache.get_query_offset(0) == 5


def test_allocation_cache_shares_prompt_cache_without_changing_it():
    prompt = DynamicCache()
    for layer in range(4):
        prompt.update(*_kv(3, 7, layer), layer_idx=layer)
    cache = AllocationCache((1, 3), prompt)
    assert len(cache.layers) == 4
    assert cache.layers[0].keys is prompt.layers[0].keys  # shared, not copied
    assert cache.get_seq_length(0) == 7

    cache.update(*_kv(3, 1, 9), layer_idx=1)
    cache.update(*_kv(3, 1, 9), layer_idx=3)
    assert cache.get_seq_length(1) == 8
    # Layer 0 is skipped: its stale prompt entry (7) is not what lengths are read from.
    assert cache.get_seq_length(0) == 8
    assert cache.get_seq_length(2) == 8
    assert cache.get_mask_sizes(1, 0) == (9, 0)
    assert [prompt.get_seq_length(i) for i in range(4)] == [7, 7, 7, 7]

    cache.batch_select_indices(torch.tensor([0, 2]))
    assert cache.layers[0].keys.shape[0] == 2 and cache.layers[1].keys.shape[0] == 2
    assert all(layer.keys.shape[0] == 3 for layer in prompt.layers)

    # A second allocation sharing the same prompt cache starts from the prompt alone.
    other = AllocationCache((0, 2), prompt)
    assert other.get_seq_length(1) == 7 and other.layers[1].keys.shape == (3, 2, 7, 4)


# --- resolve_model / load_model ------------------------------------------------------------


def test_resolve_model_rejects_bad_names(tmp_path):
    with pytest.raises(BadInput, match="no such folder"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(BadInput, match="no config.json"):
        resolve_model(str(tmp_path))


def test_load_model_from_folder(tmp_path, ref):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = ref.build_tiny_model("llama")
    model.save_pretrained(tmp_path)
    vocab = {str(i): i for i in range(300)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="3", eos_token="1").save_pretrained(tmp_path)

    loaded, tokenizer = load_model(str(tmp_path))
    assert not loaded.training
    assert num_layers(loaded) == ref.NUM_LAYERS
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == "1"  # falls back to EOS
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_model_rejects_broken_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BadInput, match="a folder without weights"):
        load_model(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="cannot load"):
        load_model(str(tmp_path))
