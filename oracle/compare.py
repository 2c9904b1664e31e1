"""Two runs on the same sequences, compared with paired bootstrap intervals (`skiporacle compare`).

Typical use: a per-sequence search run against the fixed-space run of the same
rows.  Sequences are matched by id and must carry the same prompt (checked by
content).  Each resample draws the same sequences for both runs (positions in
id order, the first run's seed), so the interval of a difference is paired.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skiporacle.data.errors import BadInput
from skiporacle.oracle.records import load_run
from skiporacle.oracle.bootstrap import interval, mean_ci, resample_rows
from skiporacle.oracle.stats import knapsack_stats
from skiporacle.oracle.table import RunTable
from skiporacle.oracle.schema import SequenceRecord


def _figures(records: list[SequenceRecord], tolerance: float, rows: np.ndarray) -> dict:
    """Per-sequence % of layers of the rule and the exact rule, and the knapsack's % at full quality
    (point and per resample), of records sorted by id."""
    table = RunTable.from_records(records)
    n = table.num_layers
    knap, samples = knapsack_stats(table.scores, table.costs, rows, n)
    return {"rule": 100 * table.chosen_layers(table.rule(tolerance)) / n,
            "exact": 100 * table.chosen_layers(table.exact_rule()) / n,
            "knapsack": (knap["percent_layers_at_full_quality"], samples),
            "full": table.full_scores, "outputs": [r.full.output for r in records]}


def compare_runs(first: Path, second: Path) -> dict:
    """Paired differences first − second: rule and exact-rule mean % of layers, knapsack % of layers at full
    quality, and the full model's mean score (which should not differ), each with its 95 % interval."""
    (settings_a, records_a, _), (settings_b, records_b, _) = load_run(first), load_run(second)
    ids = sorted(r.id for r in records_a)
    if not ids or ids != sorted(r.id for r in records_b):
        raise BadInput(f"{str(first)!r} and {str(second)!r} must hold the same finished sequences (by id)")
    a = sorted(records_a, key=lambda r: r.id)
    b = sorted(records_b, key=lambda r: r.id)
    if any(x.prompt != y.prompt for x, y in zip(a, b)):
        raise BadInput(f"{str(first)!r} and {str(second)!r} hold different prompts under the same ids")
    if settings_a.get("metric") != settings_b.get("metric") or a[0].full.cost != b[0].full.cost:
        raise BadInput(f"{str(first)!r} and {str(second)!r} differ in metric or model depth")
    rows = resample_rows(ids, settings_a["seed"])
    fa = _figures(a, settings_a["tolerance"], rows)
    fb = _figures(b, settings_b["tolerance"], rows)
    out = {"first": str(first), "second": str(second), "sequences": len(ids),
           "full_outputs_differ": sum(x != y for x, y in zip(fa["outputs"], fb["outputs"])),
           "resamples": len(rows), "seed": settings_a["seed"]}
    for key in ("rule", "exact"):
        diff = fa[key] - fb[key]
        out[key] = {"first": float(fa[key].mean()), "second": float(fb[key].mean()),
                    "difference": float(diff.mean()), "difference_ci95": mean_ci(diff, rows)}
    (pa, sa), (pb, sb) = fa["knapsack"], fb["knapsack"]
    out["knapsack"] = {"first": pa, "second": pb, "difference": None if pa is None or pb is None else pa - pb,
                       "difference_ci95": interval(sa - sb)}
    diff = fa["full"] - fb["full"]
    out["full_mean_score"] = {"difference": float(diff.mean()), "difference_ci95": mean_ci(diff, rows)}
    return out
