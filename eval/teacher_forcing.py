"""Teacher-forced passes: run an allocation over known continuations in one parallel pass.

Given the full model's greedy outputs y, one forward pass of an allocation over
[last prompt token, y[:-1]] (on the shared full-model prompt cache) yields the
allocation's prediction at every output position.  With `first_token` "full"
(see `decode_protocol`) the full model reads the whole prompt
and gives the prediction of y[0] for every allocation; the allocation reads
y[:-1] and predicts y[1:].  This serves the layer
importance ranking (negative log-likelihood of y), the hidden-state similarity
figure, and the verification of a candidate's greedy output against y.

Shapes: B = sequences, T = longest continuation, H = hidden size, V = vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.decode import positions, prefill
from skiporacle.eval.decode_protocol import DEFAULT_FIRST_TOKEN, FirstToken
from skiporacle.eval.generate import encode_prompts
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.model import allocation_view
from skiporacle.search.allocation import Allocation


def teacher_forced_hidden(
    view: PreTrainedModel,
    shared: DynamicCache,
    runs: tuple[int, ...],
    last_prompt_token: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Final (normed) hidden states [B, T, H] predicting targets [B, T] under `view`.

    `shared` holds every position before `last_prompt_token` (the token fed
    first); `mask` [B, P] covers them plus that token.  Targets are right-padded; a padded position's
    output is meaningless but cannot affect earlier positions (causal).
    """
    inputs = torch.cat([last_prompt_token[:, None], targets[:, :-1]], dim=1)  # [B, T]
    full_mask = torch.cat([mask, mask.new_ones(len(mask), targets.shape[1] - 1)], dim=1)
    pos = positions(full_mask)[:, -inputs.shape[1] :]
    cache = AllocationCache(runs, shared, reserve=0)
    out = view.base_model(input_ids=inputs, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True)
    return out.last_hidden_state


@torch.inference_mode()
def teacher_forced_passes(
    model: PreTrainedModel,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[Sequence[int]],
    allocations: Sequence[Allocation],
    reduce,
    first_token: FirstToken = DEFAULT_FIRST_TOKEN,
) -> list[list[object]]:
    """Apply `reduce(hidden [T_i, H], target ids [T_i], lm_head) -> value` per sequence and allocation.

    Returns values [sequence][allocation].  The prompt cache of each batch is
    computed once by the full model and shared by all allocations.  With
    `first_token` "full", hidden[0] (the prediction of the first target) is the
    full model's for every allocation.  Continuations must be non-empty.
    """
    rows = encode_prompts(tokenizer, prompts)
    results: list[list[object]] = [[None] * len(allocations) for _ in prompts]
    head = model.get_output_embeddings()
    for batch in plan_for(model, [len(r) + len(c) for r, c in zip(rows, continuations)]):
        ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
        width = max(len(continuations[i]) for i in batch)
        targets = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        for b, i in enumerate(batch):
            targets[b, : len(continuations[i])] = torch.tensor(continuations[i], dtype=torch.long)
        targets = targets.to(model.device)
        if first_token == "full":
            shared = DynamicCache()
            first = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=shared,
                                     use_cache=True).last_hidden_state[:, -1:]  # [B, 1, H]
            mask = torch.cat([mask, mask.new_ones(len(batch), 1)], dim=1)  # ... plus the first target
        else:
            shared = prefill(model, ids[:, :-1], mask[:, :-1], DynamicCache())
        for a, allocation in enumerate(allocations):
            view = allocation_view(model, allocation)
            if first_token != "full":
                hidden = teacher_forced_hidden(view, shared, allocation.layers, ids[:, -1], mask, targets)
            elif width > 1:
                rest = teacher_forced_hidden(view, shared, allocation.layers, targets[:, 0], mask, targets[:, 1:])
                hidden = torch.cat([first, rest], dim=1)
            else:
                hidden = first
            for b, i in enumerate(batch):
                n = len(continuations[i])
                results[i][a] = reduce(hidden[b, :n], targets[b, :n], head)
    return results


def nll(hidden: torch.Tensor, targets: torch.Tensor, head) -> float:
    """Summed negative log-likelihood (nats) of targets [T] from hidden [T, H]."""
    logits = head(hidden).float()
    return float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))


def final_hidden(hidden: torch.Tensor, targets: torch.Tensor, head) -> torch.Tensor:
    """The hidden states themselves [T, H] (for similarity to the full model)."""
    return hidden.clone()
