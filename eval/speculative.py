"""Self-speculative decoding: an allocation drafts, the full model checks, the output is the full model's.

Per round, every live row feeds its next token to the draft (the model's own layers `draft.layers`, or a healed
variant's), which proposes k tokens greedily, one step each, on the full model's cache of everything accepted so
far.  Its entries are then cut away, and the full model reads [token, d_1..d_k] in one pass, writing its own
entries and giving its greedy choice g_0..g_k after each.  A row keeps the longest prefix d_1..d_a with d_i =
g_{i-1}, then g_a: a + 1 tokens, each the full model's greedy token after the tokens before it, so the output
is the full model's greedy output by construction (up to near-ties: the check reads k + 1 positions at once and
its logits differ from one-token steps by float rounding; near-ties are counted).

Rows accept different counts, so the cache stays one rectangle: the checked positions past a row's accepted
ones are masked out for good (never attended again, and skipped by the position ids), not removed.

Shapes: B rows, k drafted tokens per round, S cache slots, V vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.decode import decode_one_token, prefill_shared, top2_margin
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import Generation, encode_prompts, output_text, with_model_eos
from skiporacle.eval.model import allocation_view
from skiporacle.eval.verify import NEAR_TIE
from skiporacle.search.allocation import Allocation, full


@dataclass
class SpeculativeStats:
    """What the drafts achieved, summed over rows and batches; seconds are wall-clock of each phase."""

    rounds: int = 0  # verification passes, counted per row
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the full model kept
    emitted: int = 0  # tokens output (accepted drafts plus the full model's own)
    near_ties: int = 0  # emitted tokens whose full-model top-2 margin in the check was below NEAR_TIE
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    steps: list[int] = field(default_factory=list)  # draft steps taken per round (k, or fewer near the end)

    @property
    def acceptance(self) -> float:
        """Share of drafted tokens the full model kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens output per verification pass of a row (1 means the draft never helped)."""
        return self.emitted / self.rounds if self.rounds else 0.0


def unsupported_draft(model: PreTrainedModel, total_slots: int) -> str | None:
    """Why `model` cannot decode speculatively with up to `total_slots` cache slots per row (None: it can).

    A sliding window counts cache slots, and a check's rejected drafts stay in the cache as masked slots,
    so a window shorter than the slots would see fewer tokens than the full model does.
    """
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is not None and (types is None or "sliding_attention" in types) and window < total_slots:
        return f"sliding window {window} shorter than the {total_slots} cache slots a row may need"
    return None


def cache_slots(prompt_length: int, max_new_tokens: int, draft_tokens: int) -> int:
    """The most cache slots one row can fill: its prompt, and k + 1 checked positions per generated token."""
    return prompt_length + max_new_tokens * (draft_tokens + 1)


@torch.inference_mode()
def speculative_decode(
    model: PreTrainedModel, prompt_cache: DynamicCache, last: torch.Tensor, mask: torch.Tensor, draft: Allocation,
    draft_tokens: int, max_new_tokens: int, eos: frozenset[int], stats: SpeculativeStats,
    per_row: list[list[int]] | None = None,
) -> list[list[int]]:
    """The full model's greedy tokens of each row, drafted by `draft` `draft_tokens` at a time.

    `prompt_cache` is the full model's cache of each prompt but its last token last [B]; `mask` [B, S + 1]
    covers it and that token; it is read, never modified, so several drafts can start from one prefill.  A row
    stops at EOS (kept) or after `max_new_tokens` tokens.  `per_row` [B][4], if given, gains each row's
    checks, drafted tokens, accepted tokens and near-ties (the row's share of `stats`).
    """
    n = len(mask)
    cache = AllocationCache(full(draft.num_layers).layers, prompt_cache, reserve=cache_slots(0, max_new_tokens, draft_tokens))
    draft_cache, view = cache.sharing(draft.layers), allocation_view(model, draft)
    out: list[list[int]] = [[] for _ in range(n)]
    live = list(range(n))
    token, position = last, mask.sum(-1) - 1  # [B]: the next token to feed, and its position
    mask = mask[:, :-1]  # [B, S]: the cached slots
    while live:
        k = min(draft_tokens, max_new_tokens - min(len(out[r]) for r in live) - 1)  # no draft past the last token
        slots = mask.shape[1]
        start = time.perf_counter()
        proposed, fed = [], token
        for j in range(k):  # draft: k one-token steps, each on the cache plus its own earlier steps
            logits = decode_one_token(view, fed, torch.cat([mask, mask.new_ones(len(live), j + 1)], -1),
                                      position + j, draft_cache)
            fed = logits.argmax(-1)
            proposed.append(fed)
        drafted = torch.stack(proposed, 1) if proposed else token.new_zeros((len(live), 0))  # [B, k]
        for layer in draft.layers:
            cache.layers[layer].crop(slots)
        middle = time.perf_counter()
        mask = torch.cat([mask, mask.new_ones(len(live), k + 1)], -1)  # [B, S + k + 1]
        check = model(input_ids=torch.cat([token[:, None], drafted], 1), attention_mask=mask,
                      position_ids=position[:, None] + torch.arange(k + 1, device=mask.device), cache=cache,
                      use_cache=True).logits  # [B, k + 1, V]
        greedy = check.argmax(-1)  # [B, k + 1]
        agree = (drafted == greedy[:, :k]).long().cumprod(1).sum(1)  # [B]: a, the drafts kept
        near = top2_margin(check.flatten(0, 1)).view(len(live), k + 1) < NEAR_TIE
        # The checked drafts past the kept ones: out of every later attention.
        mask[:, slots:] = (torch.arange(k + 1, device=mask.device) <= agree[:, None]).to(mask.dtype)
        host_drafted, host_greedy, host_near, host_agree = (t.tolist() for t in (drafted, greedy, near, agree))
        stats.verify_seconds += time.perf_counter() - middle  # the round's one copy to the host included
        stats.draft_seconds += middle - start
        stats.steps.append(k)
        kept_rows = []
        for b, (row, a) in enumerate(zip(live, host_agree)):
            new = (host_drafted[b][:a] + [host_greedy[b][a]])[: max_new_tokens - len(out[row])]
            end = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))  # EOS ends the row, kept
            new = new[:end]
            out[row] += new
            stats.rounds, stats.drafted, stats.accepted = stats.rounds + 1, stats.drafted + k, stats.accepted + a
            stats.emitted, stats.near_ties = stats.emitted + len(new), stats.near_ties + sum(host_near[b][:end])
            if per_row is not None:
                per_row[row] = [per_row[row][0] + 1, per_row[row][1] + k, per_row[row][2] + a,
                                per_row[row][3] + sum(host_near[b][:end])]
            if not (out[row][-1] in eos or len(out[row]) >= max_new_tokens):
                kept_rows.append(b)
        token = greedy[torch.arange(len(live), device=mask.device), agree]
        position = position + agree + 1
        if len(kept_rows) < len(live):
            keep = torch.tensor(kept_rows, dtype=torch.long, device=mask.device)
            cache.batch_select_indices(keep)
            token, position, mask = token[keep], position[keep], mask[keep]
            live = [live[b] for b in kept_rows]
    return out


def planned_draft_batches(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], draft_tokens: int, protocol: DecodeProtocol,
    max_batch: int = 0, wanted: set[int] | None = None,
) -> tuple[DecodeProtocol, Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]]:
    """`protocol` with the model's EOS, and the batches of a speculative run: (indices, ids [B, P], mask [B, P]),
    left-padded, planned once over all prompts; only batches holding a `wanted` index (default: all) come.
    BadInput, before any batch, where `unsupported_draft` names why the model cannot draft these prompts."""
    protocol = with_model_eos(protocol, model, tokenizer)
    rows = encode_prompts(tokenizer, prompts)
    reason = unsupported_draft(model, cache_slots(max(map(len, rows), default=0), protocol.max_new_tokens, draft_tokens))
    if reason:
        raise BadInput(f"--draft: {reason}")

    def batches() -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        for batch in plan_for(model, [len(r) for r in rows], max_batch):
            if wanted is None or any(i in wanted for i in batch):
                yield (list(batch), *left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device))

    return protocol, batches()


def generate_speculative(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], draft: Allocation, draft_tokens: int,
    protocol: DecodeProtocol, stats: SpeculativeStats, max_batch: int = 0, wanted: set[int] | None = None,
) -> Iterator[list[tuple[int, Generation]]]:
    """Per planned batch, as it finishes: (prompt index, the full model's greedy generation, drafted by `draft`).

    Planned once over all prompts, as `generate.generate_in_batches`, so a resumed stream equals an
    uninterrupted one; only batches holding a `wanted` index (default: all) run.  The full model reads each
    prompt (the draft reads its cache), whatever `protocol.first_token` says: the output is the full model's.
    BadInput (before the first batch) where `unsupported_draft` names why the model cannot.
    """
    protocol, batches = planned_draft_batches(model, tokenizer, prompts, draft_tokens, protocol, max_batch, wanted)
    for batch, ids, mask in batches:
        with torch.inference_mode():
            cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
        tokens = speculative_decode(model, cache, ids[:, -1], mask, draft, draft_tokens, protocol.max_new_tokens,
                                    protocol.stop_ids(), stats)
        yield [(i, Generation(tuple(t), output_text(tokenizer, t, protocol.eos)))
               for i, t in zip(batch, tokens) if wanted is None or i in wanted]
