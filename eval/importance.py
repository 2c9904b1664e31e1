"""Layer importance: how much the full model's own greedy output suffers when one layer is removed.

Measured teacher-forced on calibration sequences that the caller keeps disjoint
from the evaluated ones: the prompt is read by the full model, and each
single-layer-removed allocation scores the full model's greedy continuation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedModel

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import generate
from skiporacle.eval.model import num_layers
from skiporacle.eval.teacher_forcing import nll, teacher_forced_passes
from skiporacle.search.allocation import Allocation, full


@dataclass(frozen=True)
class LayerImportance:
    """Perplexity of the full model's greedy outputs, with all layers and with each layer removed alone."""

    full_perplexity: float
    perplexity_without: tuple[float, ...]  # index = removed layer
    tokens: int  # continuation tokens scored

    @property
    def drop_order(self) -> tuple[int, ...]:
        """Layers from least to most damaging to remove (ties: lower index first)."""
        return tuple(sorted(range(len(self.perplexity_without)), key=lambda i: (self.perplexity_without[i], i)))


def measure_importance(
    model: PreTrainedModel, tokenizer, prompts: Sequence[str], max_new_tokens: int, progress: bool = False
) -> LayerImportance:
    """Perplexities (per continuation token) for the full model and each single-layer removal."""
    n = num_layers(model)
    outputs = generate(model, tokenizer, prompts, full(n), DecodeProtocol(max_new_tokens), progress=progress)
    kept = [(p, g.tokens) for p, g in zip(prompts, outputs) if g.tokens]
    allocations = [full(n)] + [
        Allocation(tuple(j for j in range(n) if j != i), n, f"without:{i}") for i in range(n)
    ]
    nlls = teacher_forced_passes(model, tokenizer, [p for p, _ in kept], [t for _, t in kept], allocations, nll)
    tokens = sum(len(t) for _, t in kept)
    ppl = [math.exp(sum(row[a] for row in nlls) / tokens) for a in range(len(allocations))]
    return LayerImportance(ppl[0], tuple(ppl[1:]), tokens)
