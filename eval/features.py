"""Prompt features for a controller, taken from the full model's prefill pass.

The engine's protocol already runs the full model over every prompt (all
tokens but the last) to build the shared key/value cache.  `prefill_features`
is that same pass with forward hooks on the decoder layers, so the features
cost a few reductions per layer and nothing else: no generated token and no
reference can enter them.

Per sequence (H = hidden size, L = decoder layers), in this order:
  log prompt tokens                                   [1]
  next-token entropy of the full model (nats)         [1]  at the last prefilled position
  relative update of the last prefilled token per layer  [L]  |h_l - h_(l-1)| / |h_(l-1)|
  relative update of the mean prompt state per layer     [L]
  last prefilled token's state after layer L/2 and L     [2H]
  mean prompt state after layer L/2                      [H]

Shapes: B = sequences in a batch, P = padded prompt length (minus the last token).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.decode import group_widths, positions, right_aligned
from skiporacle.eval.generate import encode_prompts
from skiporacle.eval.model import decoder_layers

FEATURE_VERSION = 1  # bump when the feature definition changes: a saved controller records it


def feature_names(num_layers: int, hidden: int) -> list[str]:
    """Names of the feature columns, in order (see the module docstring)."""
    mid = num_layers // 2
    return (["log_prompt_tokens", "next_token_entropy"]
            + [f"last_update_{l}" for l in range(num_layers)] + [f"mean_update_{l}" for l in range(num_layers)]
            + [f"last_h{mid}_{i}" for i in range(hidden)] + [f"last_h{num_layers}_{i}" for i in range(hidden)]
            + [f"mean_h{mid}_{i}" for i in range(hidden)])


def scalar_columns(num_layers: int) -> int:
    """How many leading feature columns are scalars (length, entropy, the two update blocks); the rest are hidden states."""
    return 2 + 2 * num_layers


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def prefill_features(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, group: int = 8
) -> tuple[DynamicCache, torch.Tensor]:
    """The engine's prefill of ids [B, P] (the full model's prompt cache), plus features [B, F] (float32).

    `ids` and `mask` are the left-padded prompts without their last token, as the shared prefill of
    `eval.generate` takes them; like `decode.prefill_shared`, the rows are read `group` at a time, each group
    only as wide as its longest row, and the groups' caches are placed right-aligned in one.
    """
    if ids.shape[1] == 0:
        raise BadInput("a prompt of one token leaves nothing for the prefill to read: no features")
    B, T = ids.shape
    groups, features = [], []
    for rows, width in group_widths(mask, group):
        cache = DynamicCache()
        features.append(_features_pass(model, ids[rows, T - width :], mask[rows, T - width :], cache))
        groups.append((rows, width, cache))
    return right_aligned(groups, B, T), torch.cat(features)


def _features_pass(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """One prefill pass of ids [B, P] into `cache`, with the features [B, F] its hooks take."""
    layers = decoder_layers(model)
    real = mask.to(torch.float32)[:, :, None]  # [B, P, 1]
    count = real.sum(1).clamp(min=1)  # [B, 1]
    last, pooled = [], []

    def capture(hidden: torch.Tensor) -> None:
        hidden = hidden.float()
        last.append(hidden[:, -1])  # left padding: the last position is real in every row
        pooled.append((hidden * real).sum(1) / count)

    hooks = [layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: capture(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)]
    hooks += [layer.register_forward_hook(lambda module, args, output: capture(_hidden(output))) for layer in layers]
    try:
        out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=cache, use_cache=True)
    finally:
        for hook in hooks:
            hook.remove()
    logits = model.get_output_embeddings()(out.last_hidden_state[:, -1]).float()  # [B, V]
    entropy = -(logits.log_softmax(-1) * logits.softmax(-1)).sum(-1, keepdim=True)
    last_t, pooled_t = torch.stack(last, 1), torch.stack(pooled, 1)  # [B, L+1, H]
    mid = len(layers) // 2
    features = torch.cat([
        count.log(), entropy, _updates(last_t), _updates(pooled_t), last_t[:, mid], last_t[:, -1], pooled_t[:, mid],
    ], dim=1)
    return features


def _updates(states: torch.Tensor) -> torch.Tensor:
    """Relative change each layer makes, |h_l - h_(l-1)| / |h_(l-1)|, from states [B, L+1, H] to [B, L]."""
    return (states[:, 1:] - states[:, :-1]).norm(dim=-1) / states[:, :-1].norm(dim=-1).clamp(min=1e-6)


@torch.inference_mode()
def prompt_features(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], progress: bool = False, max_batch: int = 0
) -> np.ndarray:
    """Features [N, F] of every prompt (float32), batched exactly as the engine batches its prefills."""
    rows = encode_prompts(tokenizer, prompts)
    result: list[np.ndarray | None] = [None] * len(prompts)
    batches = plan_for(model, [len(r) for r in rows], max_batch)
    for batch in tqdm(batches, disable=not progress, unit="batch", desc="features"):
        ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
        _, features = prefill_features(model, ids[:, :-1], mask[:, :-1])
        for b, i in enumerate(batch):
            result[i] = features[b].cpu().numpy()
    return np.stack(result)  # type: ignore[arg-type]
