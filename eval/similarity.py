"""The similarity study: how close a skipping model's final hidden state stays to the full model's,
teacher-forced on the full model's output, for uniform skipping and early exit at equal budgets."""

from __future__ import annotations

import torch

from skiporacle.eval.model import num_layers
from skiporacle.eval.teacher_forcing import final_hidden, teacher_forced_passes
from skiporacle.search.allocation import early_exit, uniform


def similarity(model, tokenizer, prompts: list[str], outputs: list[list[int]],
               budgets: list[int]) -> dict[str, list[tuple[int, float]]]:
    """Mean cosine similarity of the final hidden state to the full model's, teacher-forced on the full model's
    output token ids `outputs` (one list per prompt; empty outputs are left out).

    Returns {"uniform": [(layers, cosine)], "early-exit": [...]} for each budget.
    """
    n_layers = num_layers(model)
    kept = [(p, o) for p, o in zip(prompts, outputs) if o]
    allocations = [uniform(n_layers, n_layers)]
    allocations += [uniform(b, n_layers) for b in budgets] + [early_exit(b, n_layers) for b in budgets]
    hidden = teacher_forced_passes(model, tokenizer, [p for p, _ in kept], [list(o) for _, o in kept], allocations,
                                   final_hidden)
    result: dict[str, list[tuple[int, float]]] = {"uniform": [], "early-exit": []}
    for a, allocation in enumerate(allocations[1:], start=1):
        cos = torch.cat([torch.nn.functional.cosine_similarity(row[a], row[0], dim=-1) for row in hidden])
        result["uniform" if a <= len(budgets) else "early-exit"].append((allocation.cost, float(cos.mean())))
    return result
