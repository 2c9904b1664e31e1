"""Greedy generation that picks a layer allocation per generated token, and its cache-free reference.

A `decide` function looks at each token's hidden state after layer
`probe_layer` and picks one member of a nested `Family` (see `pertoken/token_labels.py`);
the token then runs that member's layers only.  Every member keeps layers
0..probe_layer, so the decision comes for free from the token's own pass.

A skipped layer still fills the cache: a token whose member skips layer l
computes layer l's key/value projections from its hidden state entering l
(input_layernorm -> k_proj/v_proj, k_norm for Qwen3, rotary on k), appends them,
and passes its hidden state through unchanged.  So every position has
keys/values at every layer, and a later token that runs l attends to all of
them, as a cache-free pass that discards the skipped layer's output at that
position would (`reference_per_token`).  For SmolLM2-135M the two projections
are 2 x 576 x 192 weights against ~3.54M in a whole layer: a skipped layer
costs about 6 % of a run one.

Protocol (the repo's "allocation" first-token protocol): the full model
prefills prompt[:-1]; each step then feeds one token per row, first the last
prompt token, then each generated token.  Layouts: those of `crossdecode`
(llama, mistral, qwen2, qwen3 without a sliding window shorter than the
sequences); another layout raises BadInput.

Shapes: n live rows, D hidden, H query heads, Hkv key/value heads, hd head dim,
S cache columns (padded prompt - 1 + max_new_tokens), M family members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.eval.batching import left_pad
from skiporacle.eval.crossdecode import unsupported_reason
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.decode import prefill_shared
from skiporacle.eval.memory import kv_head_shape
from skiporacle.eval.crosslanes import finish, project, rotary_function
from skiporacle.eval.model import decoder_layers
from skiporacle.search.families import Family

Decide = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PerTokenGeneration:
    """Per sequence: generated ids (EOS included when reached), each token's member and its layers run."""

    tokens: list[list[int]]
    members: list[list[int]]
    layers_run: list[list[int]]


def check_model(model: PreTrainedModel, family: Family, probe_layer: int, total_length: int) -> None:
    """BadInput for a layout this module cannot run; ValueError for a family or probe layer that does not fit."""
    reason = unsupported_reason(model, total_length)
    if reason is not None:
        raise BadInput(f"per-token layer skipping: {reason}")
    n = len(decoder_layers(model))
    if any(m.num_layers != n or m.weights for m in family.members):
        raise ValueError(f"family {family.name!r}: every member must be a {n}-layer allocation of the model's "
                         "own weights")
    if not -1 <= probe_layer <= n - 2:
        raise ValueError(f"probe_layer {probe_layer} out of range -1..{n - 2}")


def check_probe(family: Family, probe_layer: int) -> None:
    """ValueError unless every member keeps layers 0..probe_layer (the decision is made after them)."""
    for m in family.members:
        if m.layers[: probe_layer + 1] != tuple(range(probe_layer + 1)):
            raise ValueError(f"member {m.spec!r} does not keep layers 0-{probe_layer} (probe_layer)")


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention [N, Q, H*hd] of q [N, Q, H, hd] over keys/values [N, Hkv, S, hd]; additive bias [N, 1, Q, S].

    Each key/value head serves its G = H/Hkv query heads as G more queries, so
    keys are never repeated per query head.
    """
    N, Q, H, hd = q.shape
    Hkv = keys.shape[1]
    G = H // Hkv
    grouped = q.view(N, Q, Hkv, G, hd).permute(0, 2, 1, 3, 4).reshape(N, Hkv, Q * G, hd)
    if Q > 1:
        bias = bias.repeat_interleave(G, dim=2)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=bias, scale=scale)
    return out.view(N, Hkv, Q, G, hd).permute(0, 2, 1, 3, 4).reshape(N, Q, H * hd)


def _step_layer(layer, hidden, rows, full: bool, cos, sin, keys, values, bias, col: int, rotate) -> None:
    """Layer on `rows` [r] of hidden [n, D] in place, storing their keys/values at column `col`.

    With `full` the rows run the whole layer over columns 0..col (dense over all
    n rows: the cache is read in place, never gathered); else only their keys/values.
    """
    x = hidden[rows]
    q, k, v = project(layer, layer.input_layernorm(x), cos[rows], sin[rows], rotate, query=full)
    keys[rows, :, col], values[rows, :, col] = k, v
    if full:
        dense = q.new_zeros((len(hidden), *q.shape[1:]))
        dense[rows] = q
        out = attend(dense[:, None], keys[:, :, : col + 1], values[:, :, : col + 1], bias[..., : col + 1],
                     layer.self_attn.scaling)
        hidden[rows] = finish(layer, x, out[rows, 0])


def check_protocol(protocol: DecodeProtocol) -> tuple[frozenset[int], int]:
    """(EOS ids, max new tokens) of a protocol per-token generation supports: BadInput for another."""
    if protocol.first_token != "allocation" or not protocol.shares_prompt:
        raise BadInput("per-token generation supports only --first-token allocation with the prompt read by the full model")
    return protocol.stop_ids(), protocol.max_new_tokens


@torch.inference_mode()
def generate_per_token(model: PreTrainedModel, prompt_rows: list[list[int]], family: Family, decide: Decide,
                       probe_layer: int, protocol: DecodeProtocol, pad_id: int) -> PerTokenGeneration:
    """Greedy tokens of each prompt, each token running the member `decide` picks from its hidden after `probe_layer`.

    `decide(hidden [n, D]) -> LongTensor [n]` member indices (it must not modify
    hidden, which the step goes on with).  All prompts are
    decoded as one batch; each step runs each layer once on the rows whose
    member keeps it and the key/value projections on the others.  Rows stop
    at EOS or after the protocol's `max_new_tokens` (its EOS ids filled).
    """
    eos, max_new_tokens = check_protocol(protocol)
    layers = decoder_layers(model)
    check_model(model, family, probe_layer, max(map(len, prompt_rows), default=0) + max_new_tokens)
    check_probe(family, probe_layer)
    if any(len(p) == 0 for p in prompt_rows):
        raise ValueError("every prompt needs at least one token")
    out = PerTokenGeneration([[] for _ in prompt_rows], [[] for _ in prompt_rows], [[] for _ in prompt_rows])
    if not prompt_rows or max_new_tokens <= 0:
        return out
    base, head, rotate = model.base_model, model.get_output_embeddings(), rotary_function(model)
    ids, mask = left_pad(prompt_rows, pad_id, head.weight.device)
    P, n, columns = ids.shape[1], len(prompt_rows), ids.shape[1] - 1 + max_new_tokens
    prompt_cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    kv_heads, head_dim = kv_head_shape(model.config)
    keys = [head.weight.new_zeros((n, kv_heads, columns, head_dim)) for _ in layers]
    values = [torch.zeros_like(k) for k in keys]
    for l in range(len(prompt_cache.layers) if P > 1 else 0):
        keys[l][:, :, : P - 1] = prompt_cache.layers[l].keys
        values[l][:, :, : P - 1] = prompt_cache.layers[l].values
    del prompt_cache
    bias = head.weight.new_zeros((n, 1, 1, columns))
    bias[..., : P - 1] = bias[..., : P - 1].masked_fill(mask[:, None, None, :-1] == 0, float("-inf"))
    keeps = np.array([[l in m.layers for l in range(len(layers))] for m in family.members])  # [M, layers]
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=ids.device)
    start, tokens, live = mask.sum(-1) - 1, ids[:, -1], list(range(n))  # live: the rows' sequence indices
    for step in range(max_new_tokens):
        col = P - 1 + step
        hidden = base.embed_tokens(tokens)  # [n, D]
        cos, sin = (t[0] for t in base.rotary_emb(hidden, (start + step)[None]))  # [n, hd]
        every = torch.arange(len(live), device=ids.device)
        for l in range(probe_layer + 1):
            _step_layer(layers[l], hidden, every, True, cos, sin, keys[l], values[l], bias, col, rotate)
        choice = decide(hidden).tolist()
        if len(choice) != len(live) or not all(0 <= c < len(keeps) for c in choice):
            raise ValueError(f"decide must return {len(live)} member indices in 0..{len(keeps) - 1}, got {choice}")
        runs = keeps[choice]  # [n, layers]
        for l in range(probe_layer + 1, len(layers)):
            for full in (True, False):
                rows = np.flatnonzero(runs[:, l] == full)
                if len(rows):
                    _step_layer(layers[l], hidden, torch.as_tensor(rows, device=ids.device), full, cos, sin,
                                keys[l], values[l], bias, col, rotate)
        predicted = head(base.norm(hidden)).argmax(-1)
        ended = torch.isin(predicted, eos_ids).tolist()
        for row, (token, member) in enumerate(zip(predicted.tolist(), choice)):
            out.tokens[live[row]].append(token)
            out.members[live[row]].append(member)
            out.layers_run[live[row]].append(family.members[member].cost)
        if any(ended):
            keep = torch.tensor([not e for e in ended], device=ids.device)
            live = [s for s, e in zip(live, ended) if not e]
            if not live:
                break
            keys, values = [k[keep] for k in keys], [v[keep] for v in values]
            bias, start, predicted = bias[keep], start[keep], predicted[keep]
        tokens = predicted
    return out


@torch.inference_mode()
def reference_per_token(model: PreTrainedModel, prompt_rows: list[list[int]], family: Family, decide: Decide,
                        probe_layer: int, protocol: DecodeProtocol, pad_id: int) -> PerTokenGeneration:
    """`generate_per_token` by brute force, for tests: one sequence at a time, every step recomputed from scratch.

    Each step runs the model's own decoder layers as whole layers over the whole
    sequence (no cache) and, at each position whose decision skips a layer,
    discards that layer's output there.  Positions 0..P-2 run every layer; the
    position fed at a step gets its decision from `decide` on its hidden after
    `probe_layer`, and keeps it for later steps.  `pad_id` is unused (no padding).
    """
    eos, max_new_tokens = check_protocol(protocol)
    layers = decoder_layers(model)
    check_model(model, family, probe_layer, max(map(len, prompt_rows), default=0) + max_new_tokens)
    check_probe(family, probe_layer)
    base, head = model.base_model, model.get_output_embeddings()
    device = head.weight.device
    keeps = torch.tensor([[l in m.layers for l in range(len(layers))] for m in family.members], device=device)
    out = PerTokenGeneration([], [], [])
    for prompt in prompt_rows:
        seq, runs = list(prompt), [torch.ones(len(layers), dtype=torch.bool, device=device)] * (len(prompt) - 1)
        tokens, members = [], []
        for _ in range(max_new_tokens):
            hidden = base.embed_tokens(torch.tensor([seq], device=device))  # [1, T, D]
            positions = torch.arange(len(seq), device=device)[None]
            rope = base.rotary_emb(hidden, positions)
            causal = hidden.new_full((len(seq), len(seq)), float("-inf")).triu(1)[None, None]
            for l, layer in enumerate(layers):
                if l == probe_layer + 1:
                    members.append(int(decide(hidden[0, -1:])[0]))
                    runs = runs[: len(seq) - 1] + [keeps[members[-1]]]
                layer_out = layer(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rope)
                # Layers 0..probe_layer run everywhere (every member keeps them); later ones where decided.
                hidden = layer_out if l <= probe_layer else torch.where(
                    torch.stack(runs)[None, :, l, None], layer_out, hidden)
            tokens.append(int(head(base.norm(hidden[0, -1])).argmax()))
            seq.append(tokens[-1])
            if tokens[-1] in eos:
                break
        out.tokens.append(tokens)
        out.members.append(members)
        out.layers_run.append([family.members[m].cost for m in members])
    return out
