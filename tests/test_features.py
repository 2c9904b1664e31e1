"""The controller's prompt features (eval/features.py): named columns, the prefill they ride on, and the
layer updates against the model's own hidden states."""

from __future__ import annotations

import torch

from rounding import assert_rounding_close, model_tolerance
from skiporacle.eval.batching import left_pad
from skiporacle.eval.decode import positions, prefill_shared
from skiporacle.eval.features import feature_names, prefill_features, prompt_features, scalar_columns
from skiporacle.eval.model import num_layers


def test_features_are_named_and_ride_on_the_engines_prefill(tiny_model, prompt_ids, single_thread):
    model = tiny_model("llama")
    prompt_ids = [p for p in prompt_ids if len(p) > 1]  # a one-token prompt leaves the prefill nothing to read
    n, hidden = num_layers(model), model.config.hidden_size
    ids, mask = left_pad(prompt_ids, 0, model.device)
    cache, features = prefill_features(model, ids[:, :-1], mask[:, :-1])
    assert features.shape == (len(prompt_ids), len(feature_names(n, hidden)))
    assert feature_names(n, hidden)[scalar_columns(n)] == f"last_h{n // 2}_0"  # the hidden states follow the scalars
    shared, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    tolerance = model_tolerance(model.config)
    for ours, theirs in zip(cache.layers, shared.layers):  # the features cost no second prefill
        assert_rounding_close(ours.keys, theirs.keys, tolerance)
    with torch.inference_mode():
        states = model.base_model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask[:, :-1]),
                                  output_hidden_states=True).hidden_states  # embeddings, then each layer (last normed)
    last = torch.stack([s[:, -1].float() for s in states[:-1]], 1)  # [B, n, H]: inputs of layers 0..n-1
    updates = (last[:, 1:] - last[:, :-1]).norm(dim=-1) / last[:, :-1].norm(dim=-1)
    assert_rounding_close(features[:, 2 : 2 + n - 1], updates, tolerance)
    assert_rounding_close(features[:, 0], mask[:, :-1].sum(-1).float().log(), 1e-6)


def test_a_prompts_features_do_not_depend_on_its_batch(tiny_model, tokenizer, prompt_ids, ref, single_thread):
    model = tiny_model("llama")
    texts = [ref.as_text(p) for p in prompt_ids if len(p) > 1]
    together = prompt_features(model, tokenizer, texts)
    alone = [prompt_features(model, tokenizer, [t])[0] for t in texts]
    assert_rounding_close(together, alone, model_tolerance(model.config))


def test_features_read_in_groups_equal_one_pass(tiny_model, prompt_ids, single_thread):
    model = tiny_model("llama")
    rows = sorted((p for p in prompt_ids if len(p) > 1), key=len)  # as plan_for orders a batch
    ids, mask = left_pad(rows, 0, model.device)
    tolerance = model_tolerance(model.config)
    whole_cache, whole = prefill_features(model, ids[:, :-1], mask[:, :-1], group=len(rows))
    for group in (1, 2, 3):
        cache, features = prefill_features(model, ids[:, :-1], mask[:, :-1], group=group)
        assert_rounding_close(features, whole, tolerance)
        for ours, theirs in zip(cache.layers, whole_cache.layers):
            real = mask[:, None, :-1, None].bool()  # padded slots hold zeros in the grouped cache: masked anyway
            assert_rounding_close(ours.keys * real, theirs.keys * real, tolerance)
            assert_rounding_close(ours.values * real, theirs.values * real, tolerance)
