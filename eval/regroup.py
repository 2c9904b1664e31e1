"""Plan-level grouping: rows that chose the same allocation decode together, whichever prefill batch read them.

A prefill batch is planned by prompt length; its rows then choose allocations (a controller's decision at
prefill, or any per-sequence rule).  Decoding each prefill batch by itself splits it into small groups, and a
memory-bound decode step costs about as much for 2 rows as for 16; a healed variant's rows cannot even share a
layer's product with other rows.  So the full model's prompt caches of several prefill batches are held, per row
and without padding (`hold_prompts`), and regrouped (`regroup`): each allocation's rows decode in batches of
`cap` rows, and what is left of each allocation (fewer than `cap` rows) is pooled into mixed batches, which
`mixed_decode.decode_mixed` decodes by its path.  The windows of prefill batches held together are planned
from the prompt lengths alone (`plan_windows`), before anything runs, so a resumed run that needs only some rows
forms the same windows and decode batches as the uninterrupted one.  `stack_prompts` rebuilds a left-padded batch cache from held
rows; its padding is zeros and masked, as `decode.prefill_shared` leaves it, so no output changes (up to
counted near-ties between batch shapes).

Shapes: B rows, H key/value heads, T cached prompt tokens (the prompt without its last token), D head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache

from skiporacle.eval.batching import left_pad
from skiporacle.search.allocation import Allocation


@dataclass(frozen=True)
class HeldPrompt:
    """One sequence read by the full model: its prompt token ids (the last one not yet fed, as the decoders take
    it) and, per decoder layer, its cached keys and values [H, T, D] without padding (views into the cache of the
    prefill batch that read it)."""

    index: int  # the sequence's index in the caller's input
    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def hold_prompts(cache: DynamicCache, mask: torch.Tensor, rows: Sequence[Sequence[int]],
                 indices: Sequence[int]) -> list[HeldPrompt]:
    """Every row of a prefill batch: `cache` holds the keys/values of its
    left-padded prompts without their last tokens, `mask` [B, T + 1] covers the prompts, `rows[b]` are row b's
    prompt ids and `indices[b]` its index."""
    width = cache.layers[0].keys.shape[2]
    real = mask[:, :-1].sum(-1).tolist()
    return [HeldPrompt(indices[b], tuple(rows[b]),
                       tuple((layer.keys[b, :, width - real[b]:], layer.values[b, :, width - real[b]:])
                             for layer in cache.layers))
            for b in range(len(rows))]


def stack_prompts(held: Sequence[HeldPrompt], pad_id: int,
                  device: torch.device | str) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """(cache, ids [B, T + 1], mask [B, T + 1]) of held rows in one left-padded batch: the cache of ids[:, :-1],
    zeros at padded positions, as the decoders take it."""
    ids, mask = left_pad([h.ids for h in held], pad_id, device)
    width = ids.shape[1] - 1
    layers = []
    for layer in range(len(held[0].layers)):
        k0, v0 = held[0].layers[layer]
        keys = k0.new_zeros((len(held), k0.shape[0], width, k0.shape[2]))
        values = v0.new_zeros((len(held), v0.shape[0], width, v0.shape[2]))
        for b, h in enumerate(held):
            k, v = h.layers[layer]
            keys[b, :, width - k.shape[1]:] = k
            values[b, :, width - v.shape[1]:] = v
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers), ids, mask


def plan_windows(batches: Sequence[Sequence[int]], lengths: Sequence[int], bytes_per_token: int,
                 window_bytes: int) -> list[list[Sequence[int]]]:
    """Consecutive prefill batches (of sequence indices; `lengths` their prompt tokens) grouped into windows whose
    prompt caches are held together: a window closes once its batches' padded caches, at `bytes_per_token`, reach
    `window_bytes` (0: every batch a window of its own)."""
    windows, held = [], window_bytes
    for batch in batches:
        if held >= window_bytes:
            windows.append([])
            held = 0
        windows[-1].append(batch)
        held += len(batch) * (max(lengths[i] for i in batch) - 1) * bytes_per_token
    return windows


def _order(a: Allocation) -> tuple:
    return a.layers, a.weights


def regroup(held: Sequence[HeldPrompt], chosen: Sequence[Allocation], cap: int) -> list[list[int]]:
    """Decode batches, as positions into `held` (row p chose chosen[p]): each allocation's rows, longest prompt
    first, in full batches of `cap`; the rest of every allocation pooled, longest first, into batches of at most
    `cap`.  Deterministic: ties break by the rows' indices."""
    if cap < 1:
        raise ValueError(f"a decode batch holds at least one row, got cap {cap}")
    by_length = sorted(range(len(held)), key=lambda p: (-len(held[p].ids), held[p].index))
    rank = {p: r for r, p in enumerate(by_length)}
    batches, pooled = [], []
    for allocation in sorted(set(chosen), key=_order):
        rows = [p for p in by_length if chosen[p] == allocation]
        whole = len(rows) - len(rows) % cap
        batches += [rows[i:i + cap] for i in range(0, whole, cap)]
        pooled += rows[whole:]
    pooled.sort(key=rank.__getitem__)
    return batches + [pooled[i:i + cap] for i in range(0, len(pooled), cap)]
