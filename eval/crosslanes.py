"""The rows of cross-candidate passes: lanes (rows running one layer module) and the shared prompt prefixes.

`crossdecode` decodes every (sequence, candidate) row of a batch in one loop and
`verify` checks them in one teacher-forced pass; both run each decoder layer on
the rows that keep it, and read the sequence's one full-model prompt cache
through a dense [B, C] query layout (C = the most rows of one sequence in the
lane; slots of sequences with fewer rows stay unused).  A layer runs through the
model's own modules in two halves, `project` (norms, q/k/v, rotary) and `finish`
(o_proj, MLP, residuals), shared with the per-token engine (`pertoken/token_generation.py`).

Shapes: B sequences, K the row stride of a sequence (row r = b*K + k), C rows
of one sequence in a lane, Hkv key/value heads, hd head dim, P prefix length.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.attention import attention_with_lse
from skiporacle.eval.memory import kv_head_shape
from skiporacle.eval.model import allocation_view, decoder_layers
from skiporacle.search.allocation import Allocation


@dataclass
class Lane:
    """The rows that run one layer module, with their own-token caches.

    `width` C is the lane's dense width per sequence; `rows` [n] live global row
    ids (sorted); `slot` [n] each row's place b*C + c in the dense [B, C] query
    layout of the shared-prefix product; `keys`/`values` [n, Hkv, steps, hd] the
    rows' own keys and values.
    """

    module: nn.Module
    width: int
    rows: torch.Tensor
    slot: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor

    def keep(self, alive: torch.Tensor) -> None:
        """Drop rows that are no longer alive (`alive` [R] bool)."""
        kept = alive[self.rows]
        if not bool(kept.all()):
            self.rows, self.slot = self.rows[kept], self.slot[kept]
            self.keys, self.values = self.keys[kept], self.values[kept]


def flat_lanes(model: PreTrainedModel, allocations: Sequence[Allocation], batch: int, steps: int) -> list[list[Lane]]:
    """Per decoder layer, its lanes when every sequence has the same K candidates `allocations`.

    Candidates are grouped by the module they run at a layer (a healed variant's
    differs from the base's), one lane per module, C = that group's size.
    """
    kv_heads, head_dim = kv_head_shape(model.config)
    K = len(allocations)
    groups: list[dict[int, tuple[nn.Module, list[int]]]] = [{} for _ in decoder_layers(model)]
    for k, allocation in enumerate(allocations):
        for layer, module in zip(allocation.layers, decoder_layers(allocation_view(model, allocation))):
            groups[layer].setdefault(id(module), (module, []))[1].append(k)
    weight = model.get_output_embeddings().weight
    lanes: list[list[Lane]] = []
    for per_module in groups:
        layer_lanes = []
        for module, candidates in per_module.values():
            C = len(candidates)
            b = torch.arange(batch, device=weight.device).repeat_interleave(C)
            c = torch.arange(C, device=weight.device).repeat(batch)
            rows = b * K + torch.tensor(candidates, device=weight.device)[c]
            buffer = (batch * C, kv_heads, steps, head_dim)
            layer_lanes.append(Lane(module, C, rows, b * C + c, weight.new_empty(buffer), weight.new_empty(buffer)))
        lanes.append(layer_lanes)
    return lanes


def ragged_lanes(model: PreTrainedModel, allocations: Sequence[Sequence[Allocation]], steps: int) -> list[list[Lane]]:
    """Per decoder layer, its one lane (or none) when sequence b has its own candidates `allocations[b]`.

    Rows are numbered b*K + k with K the longest list; only training-free
    allocations (the model's own modules) are covered.  A layer's C is the most
    candidates of one sequence that keep it.
    """
    kv_heads, head_dim = kv_head_shape(model.config)
    K = max((len(a) for a in allocations), default=0)
    kept = [[set(a.layers) for a in per_sequence] for per_sequence in allocations]
    weight = model.get_output_embeddings().weight
    lanes: list[list[Lane]] = []
    for layer, module in enumerate(decoder_layers(model)):
        keeping = [[k for k, layers in enumerate(per_sequence) if layer in layers] for per_sequence in kept]
        C = max((len(ks) for ks in keeping), default=0)
        rows = [b * K + k for b, ks in enumerate(keeping) for k in ks]
        slot = [b * C + c for b, ks in enumerate(keeping) for c in range(len(ks))]
        if not rows:
            lanes.append([])
            continue
        buffer = (len(rows), kv_heads, steps, head_dim)
        lanes.append([Lane(module, C, torch.tensor(rows, device=weight.device), torch.tensor(slot, device=weight.device),
                           weight.new_empty(buffer), weight.new_empty(buffer))])
    return lanes


def prompt_prefixes(model: PreTrainedModel, prompt_cache: DynamicCache,
                    batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the prompt cache's (keys, values) [B, Hkv, P, hd]; empty (P = 0) where nothing was prefilled."""
    kv_heads, head_dim = kv_head_shape(model.config)
    empty = model.get_output_embeddings().weight.new_empty((batch, kv_heads, 0, head_dim))
    layers = prompt_cache.layers
    return [(layers[i].keys, layers[i].values) if i < len(layers) and layers[i].is_initialized else (empty, empty)
            for i in range(len(decoder_layers(model)))]


def rotary_function(model: PreTrainedModel):
    """The layout's own `apply_rotary_pos_emb(q, k, cos, sin)` (it unsqueezes cos/sin at dim 1)."""
    return sys.modules[type(decoder_layers(model)[0].self_attn).__module__].apply_rotary_pos_emb


def project(layer, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate, query: bool = True):
    """(queries [..., H, hd] or None, keys, values [..., Hkv, hd]) of `layer` from normed [..., D].

    cos/sin [..., hd] are the rotary tables of each position; without `query` only keys and values are computed.
    """
    attn = layer.self_attn
    shape = (*normed.shape[:-1], -1, attn.head_dim)
    k, v = attn.k_proj(normed).view(shape), attn.v_proj(normed).view(shape)
    if hasattr(attn, "k_norm"):  # Qwen3: RMS norm over the head dimension before rotation
        k = attn.k_norm(k)
    if not query:
        return None, rotate(k, k, cos, sin, unsqueeze_dim=-2)[1], v  # the first slot is a dummy: keys only
    q = attn.q_proj(normed).view(shape)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    q, k = rotate(q, k, cos, sin, unsqueeze_dim=-2)
    return q, k, v


def finish(layer, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """The layer's output from its input x [..., D] and attention output [..., H*hd]: residuals and MLP."""
    x = x + layer.self_attn.o_proj(attention)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def with_shared_prefix(grouped: torch.Tensor, own: torch.Tensor, own_lse: torch.Tensor, slot: torch.Tensor, width: int,
                       prefix_keys: torch.Tensor, prefix_values: torch.Tensor, prefix_bias: torch.Tensor,
                       prefix_empty: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention [n, Hkv, Q, hd] of rows' grouped queries [n, Hkv, Q, hd] over their sequence's prompt prefix
    and their own keys, given the own part's output `own` and log-sum-exp `own_lse` [n, Hkv, Q].

    The prefix keys/values [B, Hkv, P, hd] are read once per sequence: the rows'
    queries go to their `slot` (b * width + c) of a dense [B, Hkv, width * Q, hd]
    layout; the two parts are merged by their log-sum-exps, and a sequence whose
    prefix is all padding (`prefix_empty` [B]) gets weight 0 on it.
    """
    n, Hkv, Q, hd = grouped.shape
    B, _, P, _ = prefix_keys.shape
    if P == 0:
        return own
    dense = grouped.new_zeros(B * width, Hkv, Q, hd)
    dense[slot] = grouped
    dense = dense.view(B, width, Hkv, Q, hd).transpose(1, 2).reshape(B, Hkv, width * Q, hd)  # one prompt copy per sequence
    shared, shared_lse = attention_with_lse(dense, prefix_keys, prefix_values, prefix_bias, scale)
    shared = shared.view(B, Hkv, width, Q, hd).transpose(1, 2).reshape(B * width, Hkv, Q, hd)[slot]
    shared_lse = shared_lse.masked_fill(prefix_empty[:, None, None], float("-inf"))
    shared_lse = shared_lse.view(B, Hkv, width, Q).transpose(1, 2).reshape(B * width, Hkv, Q)[slot]
    total = torch.logaddexp(shared_lse, own_lse)[..., None]
    return shared * torch.exp(shared_lse[..., None] - total).to(grouped.dtype) \
        + own * torch.exp(own_lse[..., None] - total).to(grouped.dtype)
