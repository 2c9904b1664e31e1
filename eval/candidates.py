"""Scoring candidates: every sequence under every allocation, greedy output plus task metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedModel

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import Generation, generate_batch, output_text, with_model_eos
from skiporacle.eval.metrics import sequence_scores
from skiporacle.search.allocation import Allocation


@dataclass(frozen=True)
class Candidate:
    """One sequence's greedy output under one allocation, with its score (0-100)."""

    allocation: Allocation
    output: str
    tokens: tuple[int, ...]  # generated ids, EOS included when reached
    score: float


def score_batch(
    model: PreTrainedModel,
    tokenizer,
    rows: Sequence[Sequence[int]],
    references: Sequence[Sequence[str]],
    allocations: Sequence[Allocation],
    metric: str,
    protocol: DecodeProtocol,
    bar=None,
) -> list[list[Candidate]]:
    """Candidates [sequence][allocation] of one planned batch of prompt token rows (see `generate_batch`)."""
    protocol = with_model_eos(protocol, model, tokenizer)
    generated = generate_batch(model, rows, allocations, protocol, tokenizer.pad_token_id, bar)
    gens = [[Generation(tokens, output_text(tokenizer, tokens, protocol.eos)) for tokens in row] for row in generated]
    return scored(gens, references, allocations, metric)


def scored(generations: Sequence[Sequence[Generation]], references: Sequence[Sequence[str]],
           allocations: Sequence[Allocation] | Sequence[Sequence[Allocation]], metric: str) -> list[list[Candidate]]:
    """Candidates [sequence][allocation] of generations scored against each sequence's references;
    `allocations` is one list for every sequence or one list per sequence (as `crossdecode` takes them)."""
    ragged = bool(allocations) and not isinstance(allocations[0], Allocation)
    table: list[list[Candidate]] = []
    for b, (gens, refs) in enumerate(zip(generations, references)):
        scores = sequence_scores(metric, [g.text for g in gens], [refs] * len(gens)) if gens else []
        table.append([Candidate(a, g.text, g.tokens, s)
                      for a, g, s in zip(allocations[b] if ragged else allocations, gens, scores)])
    return table
