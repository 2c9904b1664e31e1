"""Which draft suits a prompt: a per-sequence draft choice against the best static draft, judged by k-fold CV.

From a labels table (`oracle/draft_labels.py`), the measured seconds give per-unit costs: plain decoding's
seconds per output token, and each draft's seconds per drafted token and per check (totals over counts).  A
row's time under draft d is then drafted[i, d] * draft_cost[d] + checks[i, d] * check_cost[d], and a
decision's speed is the full model's plain decoding time over its summed time (prefill excluded: every
decision reads the prompt the same way).  Summed over rows, each static draft's time is its measured time.

Decisions, on the same rows:
- each static draft, and the best of them chosen on these rows (in-sample) or on each fold's training rows;
- the in-sample oracle: per row, the draft it ran fastest with;
- the controller: a ridge regression, per draft, of seconds per output token from the prompt's features,
  trained on the other folds; a row runs the draft predicted fastest.
`kept` is the share of the oracle's time saving over the best static draft that a decision keeps.

Shapes: N sequences, D drafts, F features, R bootstrap resamples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skiporacle.controller.classifier import fit_values
from skiporacle.controller.evaluate import fold_of
from skiporacle.oracle.bootstrap import interval, resample_rows
from skiporacle.oracle.draft_labels import DraftTable


def row_seconds(table: DraftTable) -> tuple[np.ndarray, np.ndarray]:
    """(plain decoding's seconds per row [N], each draft's seconds per row [N, D]) from the measured unit costs."""
    plain = table.tokens * (table.plain_seconds.sum() / max(table.tokens.sum(), 1))
    draft_cost = table.draft_seconds.sum(0) / np.maximum(table.drafted.sum(0), 1)  # [D] s per drafted token
    check_cost = table.check_seconds.sum(0) / np.maximum(table.checks.sum(0), 1)  # [D] s per check
    return plain, table.drafted * draft_cost + table.checks * check_cost


def controller_choices(features: np.ndarray, per_token: np.ndarray, scalar_columns: int,
                       folds: np.ndarray) -> np.ndarray:
    """Out-of-fold choices [N]: row i runs the draft whose seconds per token [N, D], as predicted by a ridge
    regression trained on the other folds, is least."""
    choices = np.zeros(len(features), dtype=int)
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        fitted = fit_values(features[train], per_token[train], scalar_columns)
        choices[test] = fitted.regress(features[test]).argmin(1)
    return choices


def static_by_fold(seconds: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Choices [N]: every row of a fold runs the draft fastest in total on the other folds' rows."""
    choices = np.zeros(len(seconds), dtype=int)
    for f in np.unique(folds):
        choices[folds == f] = seconds[folds != f].sum(0).argmin()
    return choices


def _figures(choices: np.ndarray, plain: np.ndarray, seconds: np.ndarray, table: DraftTable, rows: np.ndarray,
             reference: np.ndarray, oracle: np.ndarray) -> dict:
    """Speed against plain decoding (with its interval), acceptance, tokens per check, and the paired speed
    difference from `reference`'s choices and `kept` against `oracle`'s."""
    pick = np.arange(len(choices)), choices
    time = seconds[pick]
    samples = plain[rows].sum(1) / time[rows].sum(1)
    ref_time, oracle_time = seconds[np.arange(len(choices)), reference], seconds[np.arange(len(choices)), oracle]
    ref_samples = plain[rows].sum(1) / ref_time[rows].sum(1)
    gap = ref_time.sum() - oracle_time.sum()
    return {"speed": float(plain.sum() / time.sum()), "speed_ci95": interval(samples),
            "acceptance": float(table.accepted[pick].sum() / max(table.drafted[pick].sum(), 1)),
            "tokens_per_check": float(table.tokens.sum() / max(table.checks[pick].sum(), 1)),
            "speed_vs_best_static": {"estimate": float(plain.sum() / time.sum() - plain.sum() / ref_time.sum()),
                                     "ci95": interval(samples - ref_samples)},
            "kept": float((ref_time.sum() - time.sum()) / gap) if gap > 0 else None,
            "choices": np.bincount(choices, minlength=seconds.shape[1]).tolist()}


def draft_choice(table: DraftTable, specs: Sequence[str], costs: Sequence[int], scalar_columns: int,
                 folds: int = 5, seed: int = 0, resamples: int = 200) -> dict:
    """Every decision's figures on the table's rows (see the module docstring), and each draft's own."""
    plain, seconds = row_seconds(table)
    n = len(plain)
    if n < 2 * folds:
        raise ValueError(f"{n} labelled rows are too few for {folds}-fold cross-validation")
    fold = fold_of(n, folds, seed)
    rows = resample_rows(table.ids, seed, resamples)
    oracle = seconds.argmin(1)
    best = np.full(n, seconds.sum(0).argmin())
    decisions = {
        "oracle (in-sample)": oracle,
        "best static (in-sample)": best,
        "best static (chosen on training folds)": static_by_fold(seconds, fold),
        "controller (cross-validated)": controller_choices(table.features, seconds / np.maximum(table.tokens, 1)[:, None],
                                                           scalar_columns, fold),
    }
    return {
        "rows": n, "folds": folds, "seed": seed, "resamples": resamples,
        "unit_seconds": {"plain_per_token": float(table.plain_seconds.sum() / max(table.tokens.sum(), 1))},
        "drafts": [{"draft": spec, "layers": int(cost), "outputs_differing": int((~table.same[:, d]).sum()),
                    "near_ties": int(table.near_ties[:, d].sum()),
                    **_figures(np.full(n, d), plain, seconds, table, rows, best, oracle), "kept": None}
                   for d, (spec, cost) in enumerate(zip(specs, costs))],
        "decisions": {name: _figures(c, plain, seconds, table, rows, best, oracle) for name, c in decisions.items()},
    }
