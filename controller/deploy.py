"""Deployment: decide each sequence's allocation at prefill, then generate with real skipping.

Per planned prefill batch: one full-model prefill of the prompts (the engine's protocol) that also yields the
features; a decision rule (the controller, or any per-sequence rule) picks an allocation per sequence.  The
prompt caches of a window of prefill batches (up to `window_bytes`) are held and regrouped so that sequences
with the same allocation or healed variant decode in full batches (`eval/regroup.py`, plan-level grouping); the
rest decode in mixed batches, by groups of equal choices or through the cross-candidate lanes
(`eval/mixed_decode.py`).  `window_bytes` 0 decodes each prefill batch by itself.

Shapes: B = sequences in a batch, P = padded prompt length, F = features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from skiporacle.controller.decide import threshold_choices
from skiporacle.controller.classifier import Fitted
from skiporacle.eval.features import prefill_features
from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import Generation, encode_prompts, output_text, with_model_eos
from skiporacle.eval.mixed_decode import StepCost, decode_mixed
from skiporacle.eval.memory import kv_bytes_per_token
from skiporacle.eval.regroup import HeldPrompt, hold_prompts, plan_windows, regroup, stack_prompts
from skiporacle.search.allocation import Allocation

WINDOW_MB = 2048  # default prompt-cache memory held for plan-level grouping (SmolLM2-135M: about 70 XSum prompts)

Decide = Callable[[np.ndarray, list[int]], Sequence[int]]  # (features [B, F] float64, indices [B]) -> candidate [B]


@dataclass(frozen=True)
class Deployed:
    """Outputs [N], the chosen candidate index per sequence [N], and the measured seconds."""

    generations: list[Generation]
    choices: list[int]
    seconds: float  # everything: prefill, features, decisions, regrouping, decoding
    decide_seconds: float  # the decision rule's predictions and choices alone
    prefill_seconds: float  # the full model's prefill with its features
    batches: int  # prefill batches
    paths: dict[str, int]  # decode batches by each path ("groups", "lanes")
    decode_loops: int  # decode loops run: one per allocation of a batch decoded by groups, one per batch by the lanes


def controller_rule(fitted: Fitted, costs: Sequence[int], tau: float) -> Decide:
    """The controller's decision: per sequence the cheapest candidate its predicted probability clears at `tau`."""
    return lambda features, indices: threshold_choices(fitted.predict(features)[0], costs, tau).tolist()


@torch.inference_mode()
def generate_with_controller(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], allocations: Sequence[Allocation], fitted: Fitted,
    tau: float, protocol: DecodeProtocol, max_batch: int = 0, wanted: set[int] | None = None,
    on_batch: Callable[[list[tuple[int, Generation, int]]], None] | None = None,
    path: str = "groups", cost: StepCost | None = None, window_bytes: int = 0,
) -> Deployed:
    """`deploy_decisions` with the controller's rule at threshold `tau`."""
    return deploy_decisions(model, tokenizer, prompts, allocations, controller_rule(fitted, [a.cost for a in allocations], tau),
                            protocol, max_batch, wanted, on_batch, path, cost, window_bytes)


@torch.inference_mode()
def deploy_decisions(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], allocations: Sequence[Allocation], decide: Decide,
    protocol: DecodeProtocol, max_batch: int = 0, wanted: set[int] | None = None,
    on_batch: Callable[[list[tuple[int, Generation, int]]], None] | None = None,
    path: str = "groups", cost: StepCost | None = None, window_bytes: int = 0,
) -> Deployed:
    """Greedy outputs, each under the allocation `decide` picks from its prompt's features, under `protocol`
    with first-token rule "allocation" and the prompt read by the full model (the labels' protocol).

    The prompts are planned once, all of them, into prefill batches and the windows of them whose prompt caches
    are held together, up to `window_bytes` (0: each prefill batch alone); a window's rows are then regrouped into
    decode batches of at most `max_batch` rows (0: the plan's largest prefill batch).  With `wanted` only the
    windows and decode batches holding a wanted index run, and only wanted indices are reported (outputs of the
    others stay None): a resumed run decodes those batches exactly as the uninterrupted run did.  `on_batch`, if
    given, gets each decoded batch's wanted (index, generation, chosen candidate).  `path` and `cost` choose how
    a mixed batch decodes (see `mixed_decode.decode_mixed`); `Deployed.paths` counts the decode batches per path."""
    if protocol.first_token != "allocation" or not protocol.shares_prompt:
        raise ValueError(f"a controller deploys under its labels' protocol, not {protocol}")
    start = time.perf_counter()
    rows = encode_prompts(tokenizer, prompts)
    protocol = with_model_eos(protocol, model, tokenizer)
    outputs: list[Generation | None] = [None] * len(prompts)
    choices = [0] * len(prompts)
    decide_s = prefill_s = 0.0
    paths: dict[str, int] = {}
    loops = batches = 0
    lengths = [len(r) for r in rows]
    plan = plan_for(model, lengths, max_batch)
    cap = max_batch if max_batch > 0 else max(map(len, plan), default=1)
    windows = plan_windows(plan, lengths, kv_bytes_per_token(model.config, model.dtype), window_bytes)
    is_wanted = (lambda i: True) if wanted is None else wanted.__contains__
    for window in windows:
        if not any(is_wanted(i) for batch in window for i in batch):
            continue
        held: list[HeldPrompt] = []
        for batch in window:
            ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
            started = time.perf_counter()
            shared, features = prefill_features(model, ids[:, :-1], mask[:, :-1])
            prefill_s += time.perf_counter() - started
            started = time.perf_counter()
            for i, c in zip(batch, decide(features.cpu().numpy().astype("float64"), list(batch))):
                choices[i] = int(c)
            decide_s += time.perf_counter() - started
            held += hold_prompts(shared, mask, [rows[i] for i in batch], batch)
            batches += 1
        for positions in regroup(held, [allocations[choices[h.index]] for h in held], cap):
            part = [held[p] for p in positions]
            if not any(is_wanted(h.index) for h in part):
                continue
            chosen = [allocations[choices[h.index]] for h in part]
            shared, ids, mask = stack_prompts(part, tokenizer.pad_token_id, model.device)
            generated, taken = decode_mixed(model, shared, ids, mask, chosen, protocol, path, cost)
            paths[taken] = paths.get(taken, 0) + 1
            loops += len(set(chosen)) if taken == "groups" else 1
            done = [(h.index, tokens) for h, tokens in zip(part, generated) if is_wanted(h.index)]
            for i, tokens in done:
                outputs[i] = Generation(tuple(tokens), output_text(tokenizer, tokens, protocol.eos))
            if on_batch is not None:
                on_batch([(i, outputs[i], choices[i]) for i, _ in done])
    return Deployed(outputs, choices, time.perf_counter() - start, decide_s, prefill_s, batches, paths,  # type: ignore[arg-type]
                    loops)
