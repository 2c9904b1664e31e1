"""Deployment: decide each sequence's allocation at prefill, then generate with real skipping.

Per planned batch: one full-model prefill of the prompts (the engine's
protocol) that also yields the controller's features; the controller picks
an allocation per sequence; the sequences that chose the same allocation
decode together from their rows of the shared prompt cache, running only that
allocation's layers.

Shapes: B = sequences in a batch, P = padded prompt length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from skiporacle.controller.decide import threshold_choices
from skiporacle.controller.classifier import Fitted
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.features import prefill_features
from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import Generation, encode_prompts, greedy_decode, output_text, with_model_eos
from skiporacle.eval.model import allocation_view
from skiporacle.search.allocation import Allocation


@dataclass(frozen=True)
class Deployed:
    """Outputs [N], the chosen candidate index per sequence [N], and the measured seconds."""

    generations: list[Generation]
    choices: list[int]
    seconds: float  # everything: prefill, features, decisions, decoding
    decide_seconds: float  # the controller's predictions and choices alone
    batches: int


def rows_of(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding only `rows` of `cache` (the prompt cache is never modified)."""
    return DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


@torch.inference_mode()
def generate_with_controller(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], allocations: Sequence[Allocation], fitted: Fitted,
    tau: float, protocol: DecodeProtocol, max_batch: int = 0, wanted: set[int] | None = None,
    on_batch: Callable[[list[tuple[int, Generation, int]]], None] | None = None,
) -> Deployed:
    """Greedy outputs, each under the allocation the controller picks from its prompt (threshold `tau`), under
    `protocol` with first-token rule "allocation" and the prompt read by the full model (the labels' protocol).

    The prompts are planned once, all of them; with `wanted` only the batches holding a wanted index run, and
    only wanted indices are reported (outputs of the others stay None).  `on_batch`, if given, gets each
    finished batch's (index, generation, chosen candidate) of the wanted indices."""
    if protocol.first_token != "allocation" or not protocol.shares_prompt:
        raise ValueError(f"a controller deploys under its labels' protocol, not {protocol}")
    start = time.perf_counter()
    rows = encode_prompts(tokenizer, prompts)
    protocol = with_model_eos(protocol, model, tokenizer)
    eos, max_new_tokens = protocol.eos, protocol.max_new_tokens
    costs = [a.cost for a in allocations]
    outputs: list[Generation | None] = [None] * len(prompts)
    choices = [0] * len(prompts)
    decide = 0.0
    batches = [b for b in plan_for(model, [len(r) for r in rows], max_batch)
               if wanted is None or any(i in wanted for i in b)]
    for batch in batches:
        ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
        shared, features = prefill_features(model, ids[:, :-1], mask[:, :-1], DynamicCache())
        started = time.perf_counter()
        prob, _ = fitted.predict(features.cpu().numpy().astype("float64"))
        chosen = threshold_choices(prob, costs, tau)
        decide += time.perf_counter() - started
        for a in sorted(set(chosen.tolist())):
            picked = torch.tensor([b for b in range(len(batch)) if chosen[b] == a], device=model.device)
            allocation = allocations[a]
            cache = AllocationCache(allocation.layers, rows_of(shared, picked), reserve=max_new_tokens + 1)
            generated = greedy_decode(allocation_view(model, allocation), cache, ids[picked, -1], mask[picked],
                                      max_new_tokens, eos)
            for b, tokens in zip(picked.tolist(), generated):
                outputs[batch[b]] = Generation(tuple(tokens), output_text(tokenizer, tokens, eos))
                choices[batch[b]] = a
        if on_batch is not None:
            on_batch([(i, outputs[i], choices[i]) for i in batch if wanted is None or i in wanted])
    return Deployed(outputs, choices, time.perf_counter() - start, decide, len(batches))  # type: ignore[arg-type]

