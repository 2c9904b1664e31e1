"""The plausibility guard: rule out candidate outputs the full model finds implausible.

RUN/plausibility.json (written by `skiporacle plausibility`) holds the full model's
teacher-forced mean NLL, in nats per token, of every output of a run:
`{"margin": 2.0, "sequences": {"<id>": {"full": <NLL of the full output>,
"candidates": {"<spec>": <NLL>, ...}}}}`.  A candidate is plausible iff its
NLL <= the full output's NLL + margin.  An NLL of null (e.g. an empty output,
which has no mean) is implausible unless the output is token-identical to the
full model's; the full model itself is always plausible.  The guarded oracles
are the rule and knapsack that may only pick plausible candidates, with no
look at the references to decide which those are.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from skiporacle.data.errors import BadInput
from skiporacle.data.files import read_json_object
from skiporacle.oracle.choose import FULL, cheapest_matching, or_full
from skiporacle.oracle.plausibility_file import PLAUSIBILITY
from skiporacle.oracle.bootstrap import mean_ci, paired
from skiporacle.oracle.stats import knapsack_stats, rule_stats
from skiporacle.oracle.schema import SequenceRecord


def _nll(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BadInput(f"{PLAUSIBILITY}: {where} is {value!r}, not a number or null")
    return float(value)


PLAUSIBILITY_MARGIN = 2.0  # nats/token: the default margin of `skiporacle plausibility` and of the savings table


def is_plausible(nll: float | None, full_nll: float | None, identical: bool, margin: float) -> bool:
    """The guard's rule for one output: identical to the full model's, or its NLL at most the full output's + margin
    (an NLL of None, an output with no mean, is implausible unless identical)."""
    return identical or (nll is not None and full_nll is not None and nll <= full_nll + margin)


def plausible_mask(records: list[SequenceRecord], plausibility: dict, margin: float) -> np.ndarray:
    """Plausible [N, K] (bool), columns as `RunTable`'s, the full model (last) always True.

    BadInput if a record's id or one of its candidate specs is missing from `plausibility`, or an NLL
    or the margin is not a number.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise BadInput(f"{PLAUSIBILITY}: margin {margin!r} is not a number >= 0")
    sequences = plausibility.get("sequences") if isinstance(plausibility, dict) else None
    if not isinstance(sequences, dict):
        raise BadInput(f"{PLAUSIBILITY}: no \"sequences\" object")
    mask = np.ones((len(records), len(records[0].candidates) + 1), dtype=bool) if records else np.ones((0, 1), bool)
    for i, record in enumerate(records):
        entry = sequences.get(record.id)
        if not isinstance(entry, dict) or not isinstance(entry.get("candidates"), dict):
            raise BadInput(f"{PLAUSIBILITY}: no entry with candidates for sequence {record.id!r}")
        full = _nll(entry.get("full"), f"the full NLL of {record.id!r}")
        for k, c in enumerate(record.candidates):
            if c.spec not in entry["candidates"]:
                raise BadInput(f"{PLAUSIBILITY}: sequence {record.id!r} has no NLL for {c.spec!r}")
            nll = _nll(entry["candidates"][c.spec], f"the NLL of {c.spec!r} for {record.id!r}")
            mask[i, k] = is_plausible(nll, full, c.identical, margin)
    return mask


def missing_sequences(records: list[SequenceRecord], plausibility: dict) -> list[str]:
    """Ids of the records that `plausibility` has no entry for (a table made before a run was resumed)."""
    table = plausibility.get("sequences")
    return [r.id for r in records if not isinstance(table, dict) or r.id not in table]


def read_plausibility(out: Path) -> dict | None:
    """The run's plausibility.json, or None without one (BadInput if it is not a JSON object with a margin)."""
    path = out / PLAUSIBILITY
    data = read_json_object(path)
    if data is None:
        return None
    if "margin" not in data:
        raise BadInput(f"{str(path)!r}: expected an object with \"margin\" and \"sequences\"")
    return data


def guarded(records: list[SequenceRecord], plausibility: dict, scores: np.ndarray, costs: list[int], tolerance: float,
            tokens: np.ndarray, boot: np.ndarray, unguarded_point: float | None, unguarded_percents: np.ndarray,
            unguarded_rule: np.ndarray) -> dict:
    """The `guarded` block of summary.json: rule and knapsack over plausible candidates only.

    The unguarded knapsack's % of layers at full quality (point, and per resample of `boot` [R]) and the
    unguarded rule's choices [N] give the paired differences guarded - unguarded.
    """
    n_layers = costs[FULL]
    margin = plausibility["margin"]
    mask = plausible_mask(records, plausibility, margin)
    kept = np.where(mask, scores, -np.inf)
    choice = cheapest_matching(kept, costs, scores[:, FULL], tolerance)
    knap, percents = knapsack_stats(kept, costs, boot, n_layers)
    rule = rule_stats(choice, scores, costs, n_layers, tolerance, tokens, boot)
    before = or_full(unguarded_rule, costs)
    after = or_full(choice, costs)
    layer_gap = np.asarray(costs, dtype=float)[after] - np.asarray(costs, dtype=float)[before]
    point = knap["percent_layers_at_full_quality"]
    return {
        "margin": margin,
        "plausible_percent": float(100 * mask[:, :-1].mean()) if mask.shape[1] > 1 else 100.0,
        "rule_choices_removed": int((~mask[np.arange(len(before)), before]).sum()),
        "rule": rule,
        "knapsack": knap,
        "paired_difference": {
            "knapsack_percent_layers_at_full_quality": paired(
                None if point is None or unguarded_point is None else point - unguarded_point,
                percents, unguarded_percents),
            "rule_mean_layers": {"estimate": float(layer_gap.mean()), "ci95": mean_ci(layer_gap, boot)},
        },
    }
