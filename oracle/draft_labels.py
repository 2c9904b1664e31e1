"""Acceptance labels: per sequence, how well each draft serves self-speculative decoding of the full model.

Per planned prefill batch: one full-model prefill of the prompts, which also gives the controller's prompt
features (`eval/features.py`); then the full model's plain greedy decoding, and every draft's speculative
decoding (`eval/speculative.py`), each from that same prompt cache (it is read, never modified).  Every draft's
output is the full model's greedy output (near-ties aside: each row records whether it is), so drafts differ only
in how many drafted tokens each check keeps: a deterministic label, unlike a ROUGE match.

Each phase is timed per batch, and the seconds are shared out to the batch's rows by their counts (plain: output
tokens; a draft: its drafted tokens, and its checks), so that summed over rows they are the measured totals.

Shapes: B rows of a batch, D drafts, F features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.decode import greedy_decode
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.features import prefill_features
from skiporacle.eval.speculative import SpeculativeStats, planned_draft_batches, speculative_decode
from skiporacle.search.allocation import Allocation, full


@dataclass(frozen=True)
class DraftRow:
    """One sequence's labels.  `counts` [D][4]: checks, drafted tokens, accepted tokens, near-ties of each draft;
    `seconds` {"plain": s, "draft": [D], "check": [D]}: the row's share of its batch's measured seconds."""

    index: int  # the prompt's index
    features: list[float]  # [F]
    tokens: int  # the full model's greedy output length, EOS included
    counts: list[list[int]]
    same: list[bool]  # [D]: the draft's output equals the full model's plain greedy output
    seconds: dict


def _shares(seconds: float, weights: Sequence[int]) -> list[float]:
    """`seconds` shared out in proportion to `weights` (evenly when they sum to 0)."""
    total = sum(weights)
    return [seconds * w / total if total else seconds / len(weights) for w in weights]


@torch.inference_mode()
def label_batch(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, drafts: Sequence[Allocation],
                draft_tokens: int, protocol: DecodeProtocol) -> list[tuple[list[float], int, list, list, dict]]:
    """(features, tokens, counts, same, seconds) of each row of one left-padded batch ids, mask [B, P]."""
    eos, steps = protocol.stop_ids(), protocol.max_new_tokens
    cache, features = prefill_features(model, ids[:, :-1], mask[:, :-1])
    everything = full(drafts[0].num_layers)
    start = time.perf_counter()
    plain = greedy_decode(model, AllocationCache(everything.layers, cache, reserve=steps + 1), ids[:, -1], mask,
                          steps, eos)
    plain_seconds = time.perf_counter() - start
    counts, same, draft_seconds, check_seconds = [], [], [], []
    for draft in drafts:
        stats, per_row = SpeculativeStats(), [[0, 0, 0, 0] for _ in plain]
        out = speculative_decode(model, cache, ids[:, -1], mask, draft, draft_tokens, steps, eos, stats, per_row)
        counts.append(per_row)
        same.append([o == p for o, p in zip(out, plain)])
        draft_seconds.append(_shares(stats.draft_seconds, [c[1] for c in per_row]))
        check_seconds.append(_shares(stats.verify_seconds, [c[0] for c in per_row]))
    plain_shares = _shares(plain_seconds, [len(p) for p in plain])
    return [(features[b].tolist(), len(plain[b]), [c[b] for c in counts], [s[b] for s in same],
             {"plain": plain_shares[b], "draft": [d[b] for d in draft_seconds], "check": [c[b] for c in check_seconds]})
            for b in range(len(plain))]


def label_drafts(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], drafts: Sequence[Allocation], draft_tokens: int,
    protocol: DecodeProtocol, max_batch: int = 0, wanted: set[int] | None = None,
) -> Iterator[list[DraftRow]]:
    """Per planned batch, as it finishes, the labels of its rows (only batches holding a `wanted` index run, and
    only wanted rows are given).  Planned once over all prompts, so a resumed run labels the same batches.
    BadInput, before any batch, for no draft, fewer than one draft token, or a model that cannot draft."""
    if not drafts:
        raise BadInput("acceptance labels need at least one draft")
    if draft_tokens < 1:
        raise BadInput(f"--draft-tokens must be at least 1, got {draft_tokens}")
    protocol, batches = planned_draft_batches(model, tokenizer, prompts, draft_tokens, protocol, max_batch, wanted)
    for batch, ids, mask in batches:
        labelled = label_batch(model, ids, mask, drafts, draft_tokens, protocol)
        yield [DraftRow(i, *row) for i, row in zip(batch, labelled) if wanted is None or i in wanted]


def draft_line(example_id: str, row: DraftRow) -> dict:
    """The labels file's line of one sequence (`skiporacle drafts --out`)."""
    return {"id": example_id, "tokens": row.tokens, "counts": row.counts, "same": row.same, "seconds": row.seconds,
            "features": row.features}


@dataclass(frozen=True)
class DraftTable:
    """A labels file as arrays, rows sorted by id.  Shapes: N sequences, D drafts, F features."""

    ids: list[str]
    features: np.ndarray  # [N, F]
    tokens: np.ndarray  # [N] the full model's output tokens
    checks: np.ndarray  # [N, D]
    drafted: np.ndarray  # [N, D]
    accepted: np.ndarray  # [N, D]
    near_ties: np.ndarray  # [N, D]
    same: np.ndarray  # [N, D] bool
    plain_seconds: np.ndarray  # [N]
    draft_seconds: np.ndarray  # [N, D]
    check_seconds: np.ndarray  # [N, D]

    @classmethod
    def from_lines(cls, lines: list[dict]) -> "DraftTable":
        lines = sorted(lines, key=lambda r: r["id"])
        counts = np.array([r["counts"] for r in lines], dtype=np.int64).reshape(len(lines), -1, 4)  # [N, D, 4]
        seconds = [r["seconds"] for r in lines]
        return cls([r["id"] for r in lines], np.array([r["features"] for r in lines], dtype=np.float64),
                   np.array([r["tokens"] for r in lines]), counts[..., 0], counts[..., 1], counts[..., 2],
                   counts[..., 3], np.array([r["same"] for r in lines], dtype=bool),
                   np.array([s["plain"] for s in seconds]), np.array([s["draft"] for s in seconds]),
                   np.array([s["check"] for s in seconds]))
