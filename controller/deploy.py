"""Deployment: decide each sequence's allocation at prefill, then generate with real skipping.

Per planned batch: one full-model prefill of the prompts (the engine's
protocol) that also yields the controller's features; the controller picks
an allocation per sequence; the batch then decodes with real skipping, by
groups of equal choices or through the cross-candidate lanes
(`eval/mixed_decode.py`).

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
from skiporacle.eval.features import prefill_features
from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import Generation, encode_prompts, output_text, with_model_eos
from skiporacle.eval.mixed_decode import StepCost, decode_mixed
from skiporacle.search.allocation import Allocation


@dataclass(frozen=True)
class Deployed:
    """Outputs [N], the chosen candidate index per sequence [N], and the measured seconds."""

    generations: list[Generation]
    choices: list[int]
    seconds: float  # everything: prefill, features, decisions, decoding
    decide_seconds: float  # the controller's predictions and choices alone
    batches: int
    paths: dict[str, int]  # batches decoded by each path ("groups", "lanes")


@torch.inference_mode()
def generate_with_controller(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], allocations: Sequence[Allocation], fitted: Fitted,
    tau: float, protocol: DecodeProtocol, max_batch: int = 0, wanted: set[int] | None = None,
    on_batch: Callable[[list[tuple[int, Generation, int]]], None] | None = None,
    path: str = "groups", cost: StepCost | None = None,
) -> Deployed:
    """Greedy outputs, each under the allocation the controller picks from its prompt (threshold `tau`), under
    `protocol` with first-token rule "allocation" and the prompt read by the full model (the labels' protocol).

    The prompts are planned once, all of them; with `wanted` only the batches holding a wanted index run, and
    only wanted indices are reported (outputs of the others stay None).  `on_batch`, if given, gets each
    finished batch's (index, generation, chosen candidate) of the wanted indices.  `path` and `cost` choose how a
    batch of mixed choices decodes (see `mixed_decode.decode_mixed`); `Deployed.paths` counts the batches per path."""
    if protocol.first_token != "allocation" or not protocol.shares_prompt:
        raise ValueError(f"a controller deploys under its labels' protocol, not {protocol}")
    start = time.perf_counter()
    rows = encode_prompts(tokenizer, prompts)
    protocol = with_model_eos(protocol, model, tokenizer)
    eos = protocol.eos
    costs = [a.cost for a in allocations]
    outputs: list[Generation | None] = [None] * len(prompts)
    choices = [0] * len(prompts)
    decide, paths = 0.0, {}
    batches = [b for b in plan_for(model, [len(r) for r in rows], max_batch)
               if wanted is None or any(i in wanted for i in b)]
    for batch in batches:
        ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
        shared, features = prefill_features(model, ids[:, :-1], mask[:, :-1], DynamicCache())
        started = time.perf_counter()
        prob, _ = fitted.predict(features.cpu().numpy().astype("float64"))
        chosen = threshold_choices(prob, costs, tau)
        decide += time.perf_counter() - started
        generated, taken = decode_mixed(model, shared, ids, mask, [allocations[c] for c in chosen.tolist()],
                                        protocol, path, cost)
        paths[taken] = paths.get(taken, 0) + 1
        for b, (tokens, c) in enumerate(zip(generated, chosen.tolist())):
            outputs[batch[b]] = Generation(tuple(tokens), output_text(tokenizer, tokens, eos))
            choices[batch[b]] = c
        if on_batch is not None:
            on_batch([(i, outputs[i], choices[i]) for i in batch if wanted is None or i in wanted])
    return Deployed(outputs, choices, time.perf_counter() - start, decide, len(batches), paths)  # type: ignore[arg-type]

