"""Per-sequence search as an ordinary run: `--space greedy` or `--space random-search`.

Each planned batch is prefilled once by the full model; then every sequence of
the batch walks down from the full model (`search.persequence`), all of them in
lockstep, each step's proposals judged in one batched call:
- teacher-forced verification (`eval.verify`) of every proposal against the
  full model's greedy output, in one parallel pass: a proposal that agrees at
  every position reproduces the full output, so it needs no generation;
- under the exact rule (`--search-rule exact`) that is the whole verdict; under
  the score rule (the default) the other proposals are ranked by their
  teacher-forced KL to the full model and only the `--search-generate` closest
  are generated (all of them together, `eval.crossdecode`) and scored, the rest
  are pruned (counted in the record as generations saved).
A path stops when no proposal qualifies.  The record's candidates are then one
column per cost from min(--budgets) to all layers but one, named
`STRATEGY:COST`: the path's member of that cost, and below where the path
stopped its last allocation with more layers dropped in the importance order
(generated: "fill" generations).  Layers differ per sequence; the record keeps
them, so the rule, the knapsack, curves, dumps and the report read the run as
any other.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from skiporacle.data.errors import BadInput
from skiporacle.eval.batching import left_pad
from skiporacle.eval.candidates import Candidate, scored
from skiporacle.eval.crossdecode import decode_candidates, unsupported_reason
from skiporacle.eval.decode import prefill_shared
from skiporacle.eval.generate import Generation, eos_ids, output_text
from skiporacle.eval.verify import NEAR_TIE, verify_candidates
from skiporacle.search.allocation import Allocation, full
from skiporacle.search.persequence import (
    STRATEGIES, Judged, Path, advance, complete, greedy_proposals, random_advance, random_proposals, start,
)
from skiporacle.oracle.candidate_list import SpaceRequest, drop_order

RULES = ("score", "exact")


@dataclass(frozen=True)
class SearchPlan:
    """What a search run needs besides the settings: the strategy, the fill order and the record's columns."""

    strategy: str
    drop_order: tuple[int, ...]
    costs: tuple[int, ...]  # one record column per cost, cheapest first
    num_layers: int

    @property
    def pinned(self) -> list[list]:
        """The candidate list as settings.json pins it: column names; their layers differ per sequence ([])."""
        return [[f"{self.strategy}:{c}", []] for c in self.costs] + [["all", list(range(self.num_layers))]]


def search_strategy(spaces) -> str | None:
    """The search strategy named by `--space`, None for candidate spaces; a search must stand alone."""
    searches = [s for s in spaces if s in STRATEGIES]
    if searches and len(spaces) > 1:
        raise BadInput(f"--space {searches[0]} is a per-sequence search and cannot be combined with other spaces")
    return searches[0] if searches else None


def search_plan(strategy: str, settings, inputs, out, model, tokenizer, progress: bool) -> SearchPlan:
    """The plan of a search run: its columns (min(--budgets) .. all layers but one) and the importance order
    that fills them below where a path stopped (`--importance FILE`, else measured on the calibration rows)."""

    n = inputs.num_layers
    floor = min(settings.budgets)
    if floor >= n:
        raise BadInput(f"--budgets: a search needs a budget below the model's {n} layers, got {floor}")
    order = drop_order(SpaceRequest(settings, inputs, out, "", model, tokenizer, progress))
    return SearchPlan(strategy, tuple(order), tuple(range(floor, n)), n)


def check_search(settings, model, total_length: int) -> None:
    """Refuse settings a search cannot honour, with one line each."""
    if settings.search_rule not in RULES:
        raise BadInput(f"--search-rule {settings.search_rule!r}: choose from {', '.join(RULES)}")
    if settings.protocol.first_token != "allocation" or settings.protocol.prompt_under_allocation:
        raise BadInput("a per-sequence search supports only --first-token allocation without --prompt-under-allocation")
    if min(settings.search_generate, settings.search_width, settings.search_evaluations) < 1:
        raise BadInput("--search-generate, --search-width and --search-evaluations must be at least 1")
    reason = unsupported_reason(model, total_length)
    if reason:
        raise BadInput(f"a per-sequence search needs the cross-candidate decoder, which does not cover {reason}")


def search_rows(model, tokenizer, settings, rows: list[list[int]], references: list[list[str]], plan: SearchPlan,
                threads: int, progress: bool) -> list[tuple[list[Candidate], dict]]:
    """Search one planned batch: per sequence its candidates (the columns, then the full model) and its search
    statistics (evaluations, verified, generated, pruned, fill generations, stop cost, near-ties, path)."""
    torch.set_num_threads(threads)
    n, eos = plan.num_layers, eos_ids(model, tokenizer)
    ids, mask = left_pad(rows, tokenizer.pad_token_id, model.device)
    with torch.inference_mode():
        cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
    batch = _Batch(model, tokenizer, settings, references, cache, mask[:, :-1], ids[:, -1], eos)
    whole = full(n)
    batch.full = [out[0] for out in batch.generate([[whole] for _ in rows])]
    known = [{whole.layers: out} for out in batch.full]
    stats = [dict(evaluations=0, verified=0, generated=0, pruned=0, fill_generations=0, near_ties=0) for _ in rows]
    rngs = [random.Random(f"{settings.seed}:{','.join(map(str, r))}") for r in rows]
    paths = [start(n) for _ in rows]
    floor = plan.costs[0]
    with tqdm(total=len(rows), unit="seq", desc=plan.strategy, disable=not progress, leave=False) as bar:
        while not all(p.done for p in paths):
            proposals = [greedy_proposals(p, (), floor) if plan.strategy == "greedy"
                         else random_proposals(p, (), floor, settings.search_width, settings.search_evaluations, rng)
                         for p, rng in zip(paths, rngs)]
            judged = batch.judge(proposals, known, stats)
            before = sum(p.done for p in paths)
            paths = [_advance(p, j, plan, settings) for p, j in zip(paths, judged)]
            bar.update(sum(p.done for p in paths) - before)
    columns = [complete(p, plan.drop_order, plan.costs) for p in paths]
    missing = [[a for a in col.values() if a.layers not in k] for col, k in zip(columns, known)]
    for b, (allocations, out) in enumerate(zip(missing, batch.generate(missing))):
        known[b].update({a.layers: o for a, o in zip(allocations, out)})
        stats[b]["fill_generations"] = len(allocations)
    table = []
    for b, (path, col) in enumerate(zip(paths, columns)):
        candidates = [replace(known[b][col[c].layers], allocation=Allocation(col[c].layers, n, f"{plan.strategy}:{c}"))
                      for c in plan.costs] + [known[b][whole.layers]]
        dropped = [next(iter(set(prev.layers) - set(j.allocation.layers)))
                   for prev, j in zip((whole,) + tuple(x.allocation for x in path.accepted), path.accepted)]
        table.append((candidates, {**stats[b], "evaluations": path.evaluations, "stop_cost": path.current.cost,
                                   "dropped": dropped}))
    return table


def _advance(path: Path, judged: list[Judged], plan: SearchPlan, settings) -> Path:
    if plan.strategy == "greedy":
        return advance(path, judged, exhausted=True)
    return random_advance(path, judged, (), plan.costs[0], settings.search_evaluations)


class _Batch:
    """One batch's shared state: its prompt cache, the full outputs, and how proposals are judged."""

    def __init__(self, model, tokenizer, settings, references, cache, prefix_mask, first, eos):
        self.model, self.tokenizer, self.settings, self.references = model, tokenizer, settings, references
        self.cache, self.prefix_mask, self.first, self.eos = cache, prefix_mask, first, eos
        self.full: list[Candidate] = []

    def generate(self, allocations: list[list[Allocation]]) -> list[list[Candidate]]:
        """Scored outputs per sequence and allocation, all decoded together."""
        if not any(allocations):
            return [[] for _ in allocations]
        tokens = decode_candidates(self.model, allocations, self.cache, self.prefix_mask, self.first,
                                   self.settings.max_new_tokens, self.eos)
        generations = [[Generation(tuple(t), output_text(self.tokenizer, t, self.eos)) for t in row] for row in tokens]
        return scored(generations, self.references, allocations, self.settings.metric)

    def judge(self, proposals: list[list[Allocation]], known: list[dict], stats: list[dict]) -> list[list[Judged]]:
        """Verdicts on every sequence's proposals; outputs learnt on the way go into `known`."""
        targets = [list(f.tokens) for f in self.full]
        verdicts = verify_candidates(self.model, self.cache, self.prefix_mask, self.first, targets, proposals)
        exact = self.settings.search_rule == "exact"
        judged: list[list[Judged | None]] = []
        wanted: list[list[Allocation]] = []
        slots: list[list[int]] = []  # where each sequence's generated proposals sit among its proposals
        for b, (props, verdict) in enumerate(zip(proposals, verdicts)):
            row: list[Judged | None] = []
            for a, v in zip(props, verdict):
                if v.agrees:
                    known[b][a.layers] = self.full[b]
                    stats[b]["verified"] += 1
                    stats[b]["near_ties"] += v.min_margin < NEAR_TIE
                row.append(Judged(a, v.agrees, (v.kl,) if exact else (-self.full[b].score, v.kl))
                           if v.agrees or exact else None)
            closest = sorted((k for k, j in enumerate(row) if j is None), key=lambda k: verdict[k].kl)
            chosen = closest[: self.settings.search_generate]
            for k in closest[len(chosen):]:
                row[k] = Judged(props[k], False, (math.inf,))
            stats[b]["pruned"] += len(closest) - len(chosen)
            stats[b]["generated"] += len(chosen)
            wanted.append([props[k] for k in chosen])
            slots.append(chosen)
            judged.append(row)
        threshold = [f.score - self.settings.tolerance for f in self.full]
        for b, (allocations, outs) in enumerate(zip(wanted, self.generate(wanted))):
            for k, a, out in zip(slots[b], allocations, outs):
                known[b][a.layers] = out
                judged[b][k] = Judged(a, out.score >= threshold[b], (-out.score, verdicts[b][k].kl))
        return judged
