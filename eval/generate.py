"""Batched greedy generation under layer allocations, under one `DecodeProtocol`.

The prompt's key/value cache does not depend on the allocation under the
default protocol (the full model reads the prompt; see `decode_protocol`), so
it is computed once per batch of sequences and shared by every candidate
allocation (`generate_candidates`).  The plain path, one generation per
allocation with the prompt re-read each time, is the same call with one
allocation at a time.

Shapes: B = sequences in a batch, P = padded prompt length, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.batching import left_pad, plan_batches, plan_for, split_on_oom  # noqa: F401 (plan_batches re-exported)
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.decode_protocol import DecodeProtocol, FirstToken
from skiporacle.eval.crossdecode import decode_candidates, unsupported_reason
from skiporacle.eval.decode import decode_after, greedy_decode, positions, prefill, prefill_predict, prefill_shared, top2_margin  # noqa: F401 (re-exported)
from skiporacle.eval.model import allocation_view
from skiporacle.search.allocation import Allocation



@dataclass(frozen=True)
class Generation:
    """One greedy output: generated token ids (EOS included if reached) and their text."""

    tokens: tuple[int, ...]
    text: str


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt; chat-templated prompts already hold their special tokens."""
    add_special = getattr(tokenizer, "chat_template", None) is None
    return [tokenizer(p, add_special_tokens=add_special).input_ids for p in prompts]


def eos_ids(model: PreTrainedModel, tokenizer) -> frozenset[int]:
    """Every token id that ends a generation."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    rows: Sequence[Sequence[int]],
    allocations: Sequence[Allocation],
    protocol: DecodeProtocol,
    pad_id: int,
    bar=None,
    margins: list | None = None,
) -> list[list[tuple[int, ...]]]:
    """Generated token ids [sequence][allocation] of one planned batch of prompt token rows.

    The batch is run as given (one left-padded prefill), never re-planned: the
    caller plans once (`plan_batches`) and every result depends only on its
    batch.  The "together" decoder advances all allocations in one decode loop
    (`crossdecode`) where the layout allows and the prompt cache is shared;
    otherwise, and with "per-candidate" (the reference path), each allocation
    decodes on its own layer view.  `protocol` must carry its EOS ids.  `bar`,
    if given, advances by the batch size per allocation.  `margins`, if given
    (a list), gets per sequence and allocation the top-2 logit margin of every
    generated token; it forces the per-candidate path (the reference whose
    near-ties the benches count).
    """
    eos, new, full_first = protocol.stop_ids(), protocol.max_new_tokens, protocol.first_token == "full"
    ids, mask = left_pad(rows, pad_id, model.device)
    together = (protocol.decoder == "together" and protocol.shares_prompt and margins is None
                and unsupported_reason(model, ids.shape[1] + new) is None)
    if together:
        out = _decode_together(model, ids, mask, allocations, protocol)
        if bar is not None:
            bar.update(len(rows) * len(allocations))
        return out
    out: list[list[tuple[int, ...]]] = [[] for _ in rows]
    shared = None
    if full_first or protocol.shares_prompt:  # the full model reads the prompt
        shared, _, logits = prefill_prompt(model, ids, mask, protocol.first_token)
    if full_first:
        first, first_gaps = logits.argmax(-1), top2_margin(logits).tolist()
    if not protocol.shares_prompt:
        shared = None
    steps: list[list[list[float]]] = [[] for _ in rows]
    for allocation in allocations:
        view = allocation_view(model, allocation)
        gaps: list[list[float]] | None = [[] for _ in rows] if margins is not None else None
        prompt_cache = shared
        if prompt_cache is None:  # the allocation reads the prompt itself (its last token too under "full"),
            end = ids.shape[1] if full_first else ids.shape[1] - 1  # grouped by length as the full model's is
            prompt_cache, _ = prefill_shared(view, ids[:, :end], mask[:, :end])
        cache = AllocationCache(allocation.layers, prompt_cache, reserve=new + 1)
        if full_first:
            generated = decode_after(view, cache, first, mask, new, eos, gaps)
        else:
            generated = greedy_decode(view, cache, ids[:, -1], mask, new, eos, gaps)
        for row, tokens in zip(out, generated):
            row.append(tuple(tokens))
        for b, gap in enumerate(gaps or []):
            steps[b].append(([first_gaps[b]] if full_first and new > 0 else []) + gap)
        if bar is not None:
            bar.update(len(rows))
    if margins is not None:
        margins.extend(steps)
    return out


def prefill_prompt(model, ids, mask, first_token: FirstToken) -> tuple[DynamicCache, torch.Tensor, torch.Tensor | None]:
    """The full model's shared prompt cache of ids [B, P], the mask it covers, and (first-token rule "full")
    its logits [B, V] for the first generated token; rule "allocation" leaves the last prompt token out, for
    each allocation to read."""
    if first_token == "full":
        cache, logits = prefill_shared(model, ids, mask, predict=True)
        return cache, mask, logits
    cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    return cache, mask[:, :-1], None


def _decode_together(model, ids, mask, allocations, protocol: DecodeProtocol) -> list[list[tuple[int, ...]]]:
    """`generate_batch` with every allocation decoded in one loop over the shared full-model prompt cache."""
    eos, new, full_first = protocol.stop_ids(), protocol.max_new_tokens, protocol.first_token == "full"
    if full_first and new <= 0:
        return [[()] * len(allocations) for _ in range(len(ids))]
    cache, prefix_mask, logits = prefill_prompt(model, ids, mask, protocol.first_token)
    if logits is None:
        generated = decode_candidates(model, allocations, cache, prefix_mask, ids[:, -1], new, eos)
        return [[tuple(tokens) for tokens in row] for row in generated]
    first = logits.argmax(-1)
    going = ~torch.isin(first, torch.tensor(sorted(eos), dtype=torch.long, device=first.device))
    generated = decode_candidates(model, allocations, cache, prefix_mask, first, new - 1, eos, going)
    return [[(head,) + tuple(tokens) for tokens in row] for head, row in zip(first.tolist(), generated)]


def generate_candidates(
    model: PreTrainedModel,
    tokenizer,
    prompts: Sequence[str],
    allocations: Sequence[Allocation],
    protocol: DecodeProtocol,
    progress: bool = False,
    max_batch: int = 0,
    margins: list | None = None,
) -> list[list[Generation]]:
    """Greedy outputs [sequence][allocation] for every prompt under every allocation.

    Under the default protocol the full-model prompt cache of a batch is
    computed once and shared by all allocations (with `prompt_under_allocation`
    each allocation reads the prompt with its own layers instead, so nothing is
    shared).  With first-token rule "full" the first generated token of each
    sequence is the full model's, computed once from that shared prefill.  EOS
    ids are the model's where `protocol` has none.  Results do not depend on how
    many allocations are passed together.  `margins`, if given (a list), gets
    the reference path's top-2 logit margins [sequence][allocation][token]
    (see `generate_batch`).
    """
    results: list[list[Generation]] = [[] for _ in prompts]
    gaps: list = [None] * len(prompts)
    for done in generate_in_batches(model, tokenizer, prompts, allocations, protocol, progress, max_batch,
                                    margins=margins is not None):
        for i, generations, per_gaps in done:
            results[i], gaps[i] = generations, per_gaps
    if margins is not None:
        margins.extend(gaps)
    return results


def generate_in_batches(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], allocations: Sequence[Allocation],
    protocol: DecodeProtocol, progress: bool = False, max_batch: int = 0, wanted: set[int] | None = None,
    margins: bool = False,
) -> Iterator[list[tuple[int, list[Generation], list | None]]]:
    """Per planned batch, as it finishes: (prompt index, its generations [allocation], its margins or None).

    The prompts are tokenised and planned once, all of them (`plan_for`), so a
    prompt's batch, and with it its output, never depends on `wanted`: only
    the batches holding a wanted index (default: all) run, and only the wanted
    indices come back.  That makes a resumed stream equal an uninterrupted one.
    """
    protocol = with_model_eos(protocol, model, tokenizer)
    rows = encode_prompts(tokenizer, prompts)
    batches = [b for b in plan_for(model, [len(r) for r in rows], max_batch)
               if wanted is None or any(i in wanted for i in b)]
    bar = tqdm(total=sum(map(len, batches)) * len(allocations), disable=not progress, unit="gen", desc="generate")

    def run(part: list[int]) -> list[tuple[list[tuple[int, ...]], list | None]]:
        part_gaps = [] if margins else None
        generated = generate_batch(model, [rows[i] for i in part], allocations, protocol, tokenizer.pad_token_id,
                                   bar, part_gaps)
        return list(zip(generated, part_gaps or [None] * len(part)))

    try:
        for batch in batches:  # a batch out of GPU memory runs in halves
            yield [(i, [Generation(t, output_text(tokenizer, t, protocol.eos)) for t in per_allocation], per_gaps)
                   for i, (per_allocation, per_gaps) in zip(batch, split_on_oom(run, batch))
                   if wanted is None or i in wanted]
    finally:
        bar.close()


def generate(
    model: PreTrainedModel,
    tokenizer,
    prompts: Sequence[str],
    allocation: Allocation,
    protocol: DecodeProtocol,
    progress: bool = False,
    max_batch: int = 0,
) -> list[Generation]:
    """Greedy outputs of every prompt under one allocation (prompt included)."""
    return [g[0] for g in generate_candidates(model, tokenizer, prompts, [allocation], protocol, progress, max_batch)]


def with_model_eos(protocol: DecodeProtocol, model: PreTrainedModel, tokenizer) -> DecodeProtocol:
    """`protocol` with the model's EOS ids where it has none yet."""
    return protocol if protocol.eos is not None else protocol.with_eos(eos_ids(model, tokenizer))


def output_text(tokenizer, tokens: Sequence[int], eos: frozenset[int]) -> str:
    """The text of generated ids: EOS dropped, special tokens skipped, whitespace stripped."""
    body = tokens[:-1] if tokens and tokens[-1] in eos else tokens
    return tokenizer.decode(body, skip_special_tokens=True).strip()
