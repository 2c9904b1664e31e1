"""The split-reference oracle: choose with one reference, judge with the others.

The in-sample oracles pick, per sequence, the allocation that scores best
against the very references they are judged on, so part of their gain is
fitting the metric's noise.  With several references per sequence the
choice can be held out: candidates are scored against `references[0]` only
(CNN/DM's original highlights, the paper's reference; WMT's first
reference), the rule and the knapsack choose with those scores, and the
chosen outputs are then scored against `references[1:]` with the task's
metric taking them as its reference set (so ROUGE, chrF and exact match
take the best of the held-out references, as they do for any multi-reference
sequence, and BLEU clips n-grams over all of them).  "Full quality" is the
full model's mean on the held-out references.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from skiporacle.data.files import write_json_atomic
from skiporacle.eval.metrics import sequence_scores
from skiporacle.oracle.choose import FULL, cheapest_matching, or_full
from skiporacle.oracle.frontier import SLACK, chosen_totals, frontiers
from skiporacle.oracle.bootstrap import interval, mean_ci, paired
from skiporacle.oracle.stats import knapsack_stats, rule_stats
from skiporacle.oracle.schema import SequenceRecord

SPLIT_SCORES = "split_scores.json"  # cache of the re-scored outputs: ROUGE against 10 references is slow
STEP = 0.25  # curve grid, in mean layers per sequence (as KnapsackCurve.points)


def has_split(records: list[SequenceRecord]) -> bool:
    """Whether every record has at least two references."""
    return bool(records) and all(len(r.references) >= 2 for r in records)


def split_scores(records: list[SequenceRecord], metric: str, out: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first [N, K], others [N, K]): every output (full model last) scored against references[0] alone
    and against references[1:].  Needs `has_split(records)`.

    Identical outputs of a sequence are scored once.  With `out`, scores are read from and written to
    out/split_scores.json, keyed by a digest of the metric, references and outputs of each record.
    """
    path = out / SPLIT_SCORES if out is not None else None
    cache = {}
    if path is not None and path.exists():
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))["sequences"]
        except (ValueError, KeyError, TypeError):
            cache = {}  # a damaged cache is only recomputed
    outputs = [[c.output for c in r.columns] for r in records]
    keys = [hashlib.sha256(json.dumps([metric, r.references, o]).encode()).hexdigest()
            for r, o in zip(records, outputs)]
    todo = [i for i, r in enumerate(records) if cache.get(r.id, {}).get("key") != keys[i]]
    texts = [(i, t) for i in todo for t in dict.fromkeys(outputs[i])]
    if texts:
        first = sequence_scores(metric, [t for _, t in texts], [records[i].references[:1] for i, _ in texts])
        others = sequence_scores(metric, [t for _, t in texts], [records[i].references[1:] for i, _ in texts])
        table = {(i, t): (a, b) for (i, t), a, b in zip(texts, first, others)}
        for i in todo:
            pairs = [table[i, t] for t in outputs[i]]
            cache[records[i].id] = {"key": keys[i], "first": [a for a, _ in pairs], "others": [b for _, b in pairs]}
        if path is not None:
            write_json_atomic(path, {"metric": metric, "sequences": cache})
    first = np.array([cache[r.id]["first"] for r in records])
    others = np.array([cache[r.id]["others"] for r in records])
    return first, others


def held_out_reach(first: np.ndarray, others: np.ndarray, costs: Sequence[int], rows: np.ndarray) -> float | None:
    """Smallest mean layers per sequence at which the knapsack, choosing with `first`, has a mean
    `others` score >= the full model's mean `others` score on the rows (None if no budget does)."""
    base, _, held = chosen_totals(frontiers(first, costs), rows, others)
    hits = np.nonzero(held >= others[rows, -1].sum() - SLACK)[0]
    return (base + int(hits[0])) / len(rows) if len(hits) else None


def held_out_curve(first: np.ndarray, others: np.ndarray, costs: Sequence[int], rows: np.ndarray,
                   n_layers: int) -> list[tuple[float, float, float]]:
    """(mean layers, mean `first` score, mean `others` score) of the knapsack's choice at every budget
    on a grid of STEP layers, where feasible."""
    n = len(rows)
    base, best, held = chosen_totals(frontiers(first, costs), rows, others)
    points = []
    for m in (k * STEP for k in range(int(round(n_layers / STEP)) + 1)):
        c = int(np.floor(m * n + 1e-9)) - base
        if c >= 0:
            c = min(c, len(held) - 1)
            points.append((m, float(best[c] / n), float(held[c] / n)))
    return points


def split_reference(first: np.ndarray, others: np.ndarray, costs: Sequence[int], n_layers: int, tolerance: float,
                    boot: np.ndarray, tokens: np.ndarray | None = None) -> dict:
    """The `split_reference` block of summary.json (see the module docstring), intervals over `boot`."""
    n = len(first)
    everyone = np.arange(n)
    choice = cheapest_matching(first, costs, first[:, FULL], tolerance)
    inside, in_percents = knapsack_stats(first, costs, boot, n_layers)
    held_rule = rule_stats(choice, others, costs, n_layers, tolerance, tokens, boot)
    chosen = or_full(choice, costs)
    lag = others[everyone, chosen] - others[:, FULL]
    held_rule.update({"mean_score_minus_full": float(lag.mean()), "mean_score_minus_full_ci95": mean_ci(lag, boot)})
    point = held_out_reach(first, others, costs, everyone)
    samples = [held_out_reach(first, others, costs, rows) for rows in boot]
    # A resample on which no budget reaches full quality counts as needing every layer (censored at 100 %).
    percents = np.array([100.0 if s is None else 100 * s / n_layers for s in samples])
    gain = others[everyone, _cheapest_best(first, costs)] - others[:, FULL]
    in_gain = first.max(axis=1) - first[:, FULL]
    curve = held_out_curve(first, others, costs, everyone, n_layers)
    return {
        "choose_with": "references[0]",
        "evaluate_with": "references[1:]",
        "in_sample": {
            "full_mean_score": float(first[:, FULL].mean()),
            "full_mean_score_ci95": mean_ci(first[:, FULL], boot),
            "rule": rule_stats(choice, first, costs, n_layers, tolerance, tokens, boot),
            "knapsack": inside,
        },
        "held_out": {
            "full_mean_score": float(others[:, FULL].mean()),
            "full_mean_score_ci95": mean_ci(others[:, FULL], boot),
            "rule": held_rule,
            "knapsack": {
                "layers_at_full_quality": point,
                "percent_layers_at_full_quality": None if point is None else 100 * point / n_layers,
                "layers_at_full_quality_ci95": interval(percents * n_layers / 100),
                "percent_layers_at_full_quality_ci95": interval(percents),
                "resamples_not_reaching": sum(s is None for s in samples),
                "gain_at_full_compute": float(gain.mean()),
                "gain_at_full_compute_ci95": mean_ci(gain, boot),
                "curve": [{"mean_layers": m, "percent_layers": 100 * m / n_layers, "mean_score_first": a,
                           "mean_score": b} for m, a, b in curve],
            },
        },
        "paired_difference": {
            "knapsack_percent_layers_at_full_quality": paired(
                None if point is None or inside["percent_layers_at_full_quality"] is None
                else 100 * point / n_layers - inside["percent_layers_at_full_quality"], percents, in_percents),
            "gain_at_full_compute": {"estimate": float((gain - in_gain).mean()),
                                     "ci95": mean_ci(gain - in_gain, boot)},
        },
    }


def _cheapest_best(scores: np.ndarray, costs: Sequence[int]) -> np.ndarray:
    """Per row, the cheapest candidate with the row's best score: the knapsack's choice with every layer allowed."""
    costs = np.asarray(costs)
    best = scores >= scores.max(axis=1, keepdims=True)
    return np.array([min(np.nonzero(row)[0], key=lambda k: (costs[k], k)) for row in best])
