"""Cross-candidate greedy decoding: one step advances every (sequence, candidate) row of a batch.

The per-candidate path (`decode.greedy_decode` on a layer view) runs the
candidates of a batch one after another, each over the same weights and the
same prompt cache, at about B rows per matrix product.  Here a step runs each
decoder layer once, on the live rows whose candidate keeps it (gather, one
product per projection, scatter back); rows of candidates that skip the layer
pass through unchanged.  Attention is split in two and merged by log-sum-exp,
as in cascade (Hydragen-style) attention:
- shared prefix: every candidate of a sequence reads the same full-model prompt
  cache, so the queries of all of a sequence's candidates are stacked against
  one copy of its prompt keys/values (one batched product per layer; the
  prompt cache is never copied per candidate);
- own tokens: each row's own generated keys/values, in a small buffer per
  (layer, module) lane.

This is a loop of our own over the model's own modules (norms, projections,
MLP, rotary embedding); layouts it does not cover fall back to the
per-candidate path (`unsupported_reason`).  Outputs equal the per-candidate
path up to float rounding (products over other row counts differ by about
1e-6 relative), so they can differ only at near-ties (`bench/oracle_speed.py`
counts them).

Shapes: B sequences, K candidates (per-sequence lists: the longest), R = B*K
rows (row r = b*K + k), D hidden, H query heads, Hkv key/value heads, G = H/Hkv,
hd head dim, P prefix length, T fed tokens so far, C the most rows of one
sequence in a lane (`crosslanes`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.attention import attention_with_lse
from skiporacle.eval.crosslanes import (Lane, finish, flat_lanes, project, prompt_prefixes, ragged_lanes, rotary_function,
                                       with_shared_prefix)
from skiporacle.eval.memory import kv_head_shape
from skiporacle.eval.model import decoder_layers
from skiporacle.search.allocation import Allocation

# Layouts whose decoder layer is pre-norm attention + MLP with q/k/v/o projections and rotary positions.
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Candidates are decoded together in as few chunks as keep the rows' own-token keys/values (batch x the
# chunk's summed layer counts x Hkv x steps x hd x 2 values) under OWN_CACHE_BYTES and the rows under
# MAX_ROWS; chunks are of even size.  The default grid at the largest XSum batches (46 sequences) is one chunk.
OWN_CACHE_BYTES = 2 << 30
MAX_ROWS = 2048


def unsupported_reason(model: PreTrainedModel, total_length: int) -> str | None:
    """Why `model` cannot be decoded here for sequences up to `total_length` positions (None: it can)."""
    config = model.config.get_text_config()
    if config.model_type not in SUPPORTED_TYPES or model.get_output_embeddings() is None:
        return f"layout {config.model_type!r} (cross-candidate decoding covers {', '.join(SUPPORTED_TYPES)})"
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    slides = window is not None and (types is None or "sliding_attention" in types)
    if slides and window < total_length:
        return f"sliding window {window} shorter than {total_length} positions"
    return None


def _attention(lane: Lane, query: torch.Tensor, step: int, prefix_keys: torch.Tensor, prefix_values: torch.Tensor,
               prefix_bias: torch.Tensor, prefix_empty: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention output [n, H, hd] of the lane's rows: query [n, H, hd] over prefix + own tokens 0..step.

    The two parts are merged by their log-sum-exps; a sequence whose prefix is
    all padding (`prefix_empty` [B]) gets weight 0 on it.
    """
    n, H, hd = query.shape
    Hkv = prefix_keys.shape[1]
    grouped = query.view(n, Hkv, H // Hkv, hd)
    own, own_lse = attention_with_lse(grouped, lane.keys[:, :, : step + 1], lane.values[:, :, : step + 1], None, scale)
    return with_shared_prefix(grouped, own, own_lse, lane.slot, lane.width, prefix_keys, prefix_values, prefix_bias,
                              prefix_empty, scale).reshape(n, H, hd)


def _run_lane(lane: Lane, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: int,
              prefix: tuple[torch.Tensor, torch.Tensor], prefix_bias: torch.Tensor, prefix_empty: torch.Tensor, K: int,
              rotate) -> None:
    """One decoder layer on the lane's rows of hidden [R, D], in place; stores their keys/values at `step`."""
    layer = lane.module
    x = hidden[lane.rows]  # [n, D]
    sequence = lane.rows // K
    q, k, v = project(layer, layer.input_layernorm(x), cos[sequence], sin[sequence], rotate)  # [n, heads, hd]
    lane.keys[:, :, step] = k
    lane.values[:, :, step] = v
    out = _attention(lane, q, step, prefix[0], prefix[1], prefix_bias, prefix_empty, layer.self_attn.scaling)
    hidden[lane.rows] = finish(layer, x, out.reshape(len(x), -1))


@torch.inference_mode()
def decode_candidates(
    model: PreTrainedModel,
    allocations: Sequence[Allocation] | Sequence[Sequence[Allocation]],
    prompt_cache: DynamicCache,
    prefix_mask: torch.Tensor,
    first: torch.Tensor,
    steps: int,
    eos: frozenset[int],
    decode: torch.Tensor | None = None,
) -> list[list[list[int]]]:
    """Greedy tokens [sequence][candidate], every candidate fed `first` [B] after the shared prefix.

    `allocations` is one list of K candidates for every sequence, or a ragged
    list of B lists (sequence b has its own K_b >= 0 candidates, training-free
    only, ValueError otherwise); the tokens come back in the same shape.
    `prompt_cache` holds the full model's keys/values of the prefix, `prefix_mask`
    [B, P] its left-padded mask; each row's fed token sits at position
    prefix_mask.sum(-1).  Each row predicts up to `steps` tokens and stops at EOS.
    `decode` [B] bool (default all) says which sequences to decode; the others get
    no tokens.  Candidates are decoded in chunks (see OWN_CACHE_BYTES).
    """
    B = len(first)
    decode = torch.ones(B, dtype=torch.bool, device=first.device) if decode is None else decode
    if allocations and not isinstance(allocations[0], Allocation):
        return _decode_ragged(model, allocations, prompt_cache, prefix_mask, first, steps, eos, decode)
    kv_heads, head_dim = kv_head_shape(model.config)
    layer_row_bytes = 2 * kv_heads * steps * head_dim * model.get_output_embeddings().weight.element_size()
    chunks = max(-(-B * len(allocations) // MAX_ROWS),
                 -(-B * sum(a.cost for a in allocations) * layer_row_bytes // OWN_CACHE_BYTES), 1)
    per_chunk = max(1, -(-len(allocations) // chunks))
    out: list[list[list[int]]] = [[] for _ in range(B)]
    for start in range(0, len(allocations), per_chunk):
        part = allocations[start : start + per_chunk]
        chunk = _decode_chunk(model, flat_lanes(model, part, B, steps), len(part), prompt_cache, prefix_mask, first,
                              steps, eos, decode.repeat_interleave(len(part)))
        for row, tokens in zip(out, chunk):
            row.extend(tokens)
    return out


def _decode_ragged(model, allocations, prompt_cache, prefix_mask, first, steps, eos, decode) -> list[list[list[int]]]:
    """`decode_candidates` with sequence b's own candidates allocations[b], chunked by candidate index."""
    B = len(first)
    if len(allocations) != B:
        raise ValueError(f"{len(allocations)} candidate lists for {B} sequences")
    if any(a.weights for per_sequence in allocations for a in per_sequence):
        raise ValueError("per-sequence candidate lists cover training-free allocations only (weights == '')")
    K = max(len(a) for a in allocations)
    kv_heads, head_dim = kv_head_shape(model.config)
    layer_row_bytes = 2 * kv_heads * steps * head_dim * model.get_output_embeddings().weight.element_size()
    widths = sum(max(sum(layer in a.layers for a in per_sequence) for per_sequence in allocations)
                 for layer in range(len(decoder_layers(model))))  # the lanes' summed C
    chunks = max(-(-B * K // MAX_ROWS), -(-B * widths * layer_row_bytes // OWN_CACHE_BYTES), 1)
    per_chunk = max(1, -(-K // chunks))
    out: list[list[list[int]]] = [[] for _ in range(B)]
    for start in range(0, K, per_chunk):
        parts = [per_sequence[start : start + per_chunk] for per_sequence in allocations]
        stride = max(len(p) for p in parts)
        counts = torch.tensor([len(p) for p in parts], device=first.device)
        alive = decode.repeat_interleave(stride) & (torch.arange(stride, device=first.device).repeat(B)
                                                     < counts.repeat_interleave(stride))
        chunk = _decode_chunk(model, ragged_lanes(model, parts, steps), stride, prompt_cache, prefix_mask, first,
                              steps, eos, alive)
        for row, tokens, part in zip(out, chunk, parts):
            row.extend(tokens[: len(part)])
    return out


def _decode_chunk(model, lanes, K, prompt_cache, prefix_mask, first, steps, eos, alive) -> list[list[list[int]]]:
    """Tokens [B][K] of rows b*K + k over `lanes`; rows not `alive` [B*K] at the start get none."""
    B = len(first)
    base = model.base_model
    rotate = rotary_function(model)
    prefixes = prompt_prefixes(model, prompt_cache, B)
    dtype = model.get_output_embeddings().weight.dtype
    bias = torch.zeros(prefix_mask.shape, dtype=dtype, device=prefix_mask.device)
    bias = bias.masked_fill(prefix_mask == 0, float("-inf"))[:, None, None, :]
    empty = ~prefix_mask.bool().any(-1)  # [B] sequences with nothing before the fed token
    start = prefix_mask.sum(-1)  # [B] position of the first fed token
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=first.device)
    out = [[[] for _ in range(K)] for _ in range(B)]
    tokens = first.repeat_interleave(K)  # [R]
    for layer_lanes in lanes:
        for lane in layer_lanes:
            lane.keep(alive)
    live = alive.nonzero().squeeze(-1)  # [n] live rows, on the device ...
    live_rows = live.tolist()  # ... and on the host
    for step in range(steps if live_rows else 0):
        hidden = base.embed_tokens(tokens)  # [R, D]; dead rows are carried but never computed
        cos, sin = base.rotary_emb(hidden, (start + step)[None])  # [1, B, hd]
        for layer, layer_lanes in enumerate(lanes):
            for lane in layer_lanes:
                if len(lane.rows):
                    _run_lane(lane, hidden, cos[0], sin[0], step, prefixes[layer], bias, empty, K, rotate)
        predicted = model.get_output_embeddings()(base.norm(hidden[live])).argmax(-1)
        tokens[live] = predicted
        ended = torch.isin(predicted, eos_ids)
        host_tokens, host_ended = torch.stack([predicted, ended.long()]).tolist()  # the step's one copy to the host
        for row, token in zip(live_rows, host_tokens):
            out[row // K][row % K].append(token)
        if any(host_ended):
            alive[live[ended]] = False
            live, live_rows = live[~ended], [r for r, e in zip(live_rows, host_ended) if not e]
            if not live_rows:
                break
            for layer_lanes in lanes:
                for lane in layer_lanes:
                    lane.keep(alive)
    return out
