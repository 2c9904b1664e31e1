"""Decoding a batch whose rows chose different allocations, by the path a measured cost model finds cheaper.

Two paths, equal up to counted near-ties:
- "groups" (the reference): the rows that chose the same allocation decode together on its layer view, one
  group after another, from their rows of the shared prompt cache.  Each group reads every one of its layers'
  weights at every step, so a memory-bound step costs about as much for a group of 2 rows as for 20.
- "lanes": one decode loop for the whole batch through the cross-candidate lanes (`crossdecode`): each layer
  runs once per step on the rows that keep it, at the price of a gather and scatter per layer.

`StepCost` times, on this machine and model, one decode step of the full model and of its first layer alone
at a few row counts, and the lanes' step over all layers against the full model's; its `predict` prices
both paths for a batch's choices.  Layouts or choices the lanes do not cover (healed variants, layouts outside
`crossdecode.SUPPORTED_TYPES`) take the groups path; `lanes_reason` says why.

Shapes: B rows of the batch, P padded prompt length.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.crossdecode import decode_candidates, unsupported_reason
from skiporacle.eval.decode import greedy_decode, prefill_shared
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.data.files import write_json_atomic
from skiporacle.eval.model import allocation_view, cache_dir, num_layers
from skiporacle.search.allocation import Allocation, full

MIXED_PATHS = ("auto", "groups", "lanes")
PROBE_ROWS = (1, 8, 32)  # row counts the cost model is measured at; others are interpolated
PROBE_STEPS = 4  # decode steps per timing (the least of two runs)
PROBE_PROMPT = 64  # prompt tokens of the timing rows


def rows_of(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding only `rows` of `cache` (the prompt cache is never modified)."""
    return DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


def lanes_reason(model: PreTrainedModel, chosen: Sequence[Allocation], total_length: int) -> str | None:
    """Why the lanes path cannot decode these choices (None: it can)."""
    if any(a.weights for a in chosen):
        return "healed variants have their own weights, so their rows share no layer's product"
    return unsupported_reason(model, total_length)


def decode_groups(model, cache, ids, mask, chosen: Sequence[Allocation], protocol: DecodeProtocol) -> list[list[int]]:
    """Greedy tokens per row, row b under chosen[b], one group of equal choices after another; `cache` holds the
    full model's keys/values of ids[:, :-1] [B, P - 1], `mask` [B, P] covers the prompt."""
    out: list[list[int]] = [[] for _ in chosen]
    for allocation in sorted(set(chosen), key=lambda a: (a.layers, a.weights)):
        picked = torch.tensor([b for b, a in enumerate(chosen) if a == allocation], device=ids.device)
        own = AllocationCache(allocation.layers, rows_of(cache, picked), reserve=protocol.max_new_tokens + 1)
        generated = greedy_decode(allocation_view(model, allocation), own, ids[picked, -1], mask[picked],
                                  protocol.max_new_tokens, protocol.stop_ids())
        for b, tokens in zip(picked.tolist(), generated):
            out[b] = tokens
    return out


def decode_lanes(model, cache, ids, mask, chosen: Sequence[Allocation], protocol: DecodeProtocol) -> list[list[int]]:
    """`decode_groups` in one loop through the cross-candidate lanes; ValueError where `lanes_reason` names why not."""
    reason = lanes_reason(model, chosen, ids.shape[1] + protocol.max_new_tokens)
    if reason:
        raise ValueError(f"the lanes cannot decode these choices: {reason}")
    generated = decode_candidates(model, [[a] for a in chosen], cache, mask[:, :-1], ids[:, -1],
                                  protocol.max_new_tokens, protocol.stop_ids())
    return [row[0] for row in generated]


@dataclass(frozen=True)
class StepCost:
    """Measured seconds of one decode step: `layer[i]` of one decoder layer and `head[i]` of the embedding, final
    norm and LM head at `rows[i]` rows; `lanes_factor[i]` the lanes' step over every layer against the full
    model's (their gather/scatter and split attention)."""

    rows: tuple[int, ...]
    layer: tuple[float, ...]
    head: tuple[float, ...]
    lanes_factor: tuple[float, ...]

    def _at(self, values: tuple[float, ...], n: int) -> float:
        return float(np.interp(n, self.rows, values))

    def predict(self, chosen: Sequence[Allocation], num_layers: int) -> dict[str, float]:
        """Predicted seconds per step of each path for one batch's choices."""
        groups = {}
        for a in chosen:
            groups[a] = groups.get(a, 0) + 1
        by_groups = sum(a.cost * self._at(self.layer, k) + self._at(self.head, k) for a, k in groups.items())
        keeping = [sum(layer in a.layers for a in chosen) for layer in range(num_layers)]
        B = len(chosen)
        by_lanes = self._at(self.lanes_factor, B) * sum(self._at(self.layer, k) for k in keeping if k) \
            + self._at(self.head, B)
        return {"groups": by_groups, "lanes": by_lanes}

    def path(self, chosen: Sequence[Allocation], num_layers: int) -> str:
        cost = self.predict(chosen, num_layers)
        return "lanes" if cost["lanes"] < cost["groups"] else "groups"


def _seconds(run) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best / PROBE_STEPS


@torch.inference_mode()
def measure_step_cost(model: PreTrainedModel, rows: tuple[int, ...] = PROBE_ROWS) -> StepCost:
    """Time the decode steps `StepCost` needs on random prompts (a few seconds on a CPU for SmolLM2-135M)."""
    n = num_layers(model)
    whole, first = full(n), Allocation((0,), n, "0")
    protocol = DecodeProtocol(PROBE_STEPS, eos=frozenset())
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    layer, head, factor = [], [], []
    for count in rows:
        ids = torch.randint(10, vocab - 10, (count, PROBE_PROMPT), generator=generator).to(model.device)
        mask = torch.ones_like(ids)
        cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
        t_full = _seconds(lambda: decode_groups(model, cache, ids, mask, [whole] * count, protocol))
        t_first = _seconds(lambda: decode_groups(model, cache, ids, mask, [first] * count, protocol))
        per_layer = max(t_full - t_first, 0.0) / max(n - 1, 1)
        layer.append(per_layer)
        head.append(max(t_first - per_layer, 0.0))
        if lanes_reason(model, [whole], PROBE_PROMPT + PROBE_STEPS) is None:
            t_lanes = _seconds(lambda: decode_lanes(model, cache, ids, mask, [whole] * count, protocol))
            factor.append(max(t_lanes - head[-1], 1e-9) / max(n * per_layer, 1e-9))
        else:
            factor.append(float("inf"))
    return StepCost(tuple(rows), tuple(layer), tuple(head), tuple(factor))


def cached_step_cost(model: PreTrainedModel) -> StepCost:
    """`measure_step_cost` of this model on this machine, measured once and kept under the cache folder, keyed by
    the model's config, its device and dtype, the torch threads and version (so a path choice stays the same
    between a run and its resume on one machine)."""
    device = model.get_output_embeddings().weight
    where = torch.cuda.get_device_name(device.device) if device.device.type == "cuda" else "cpu"
    key = json.dumps([model.config.to_json_string(), where, str(device.dtype), torch.get_num_threads(),
                      torch.__version__, PROBE_ROWS, PROBE_STEPS, PROBE_PROMPT])
    path = cache_dir() / "step-cost" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        return StepCost(**{k: tuple(v) for k, v in stored.items()})
    cost = measure_step_cost(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, asdict(cost))
    return cost


def decode_mixed(model, cache, ids, mask, chosen: Sequence[Allocation], protocol: DecodeProtocol,
                 path: str = "auto", cost: StepCost | None = None) -> tuple[list[list[int]], str]:
    """(greedy tokens per row, the path taken): "groups", "lanes", or "auto" (the cheaper by `cost`; groups
    without one).  "lanes" where the lanes cannot decode these choices, or where every row chose the same
    allocation (one group, nothing to share), takes the groups path."""
    if path not in MIXED_PATHS:
        raise ValueError(f"path must be one of {MIXED_PATHS}, got {path!r}")
    if len(set(chosen)) == 1:
        path = "groups"
    if path == "auto":
        path = "groups" if cost is None else cost.path(chosen, num_layers(model))
    if path == "lanes" and not lanes_reason(model, chosen, ids.shape[1] + protocol.max_new_tokens):
        return decode_lanes(model, cache, ids, mask, chosen, protocol), "lanes"
    return decode_groups(model, cache, ids, mask, chosen, protocol), "groups"
