"""Compute-vs-quality curves of a run, and the figure of the similarity study (`eval/similarity.py`).

x is the mean % of decoder layers per generated token, y the mean metric.
Bands are 95 % percentile bootstrap intervals over sequences.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skiporacle.oracle.candidate_list import static_series  # noqa: E402
from skiporacle.oracle.choose import KnapsackCurve  # noqa: E402
from skiporacle.oracle.frontier import best_totals, frontiers  # noqa: E402
from skiporacle.oracle.splitref import has_split, held_out_curve, split_scores  # noqa: E402
from skiporacle.oracle.bootstrap import RESAMPLES, interval, mean_ci, resample_rows  # noqa: E402
from skiporacle.oracle.table import RunTable  # noqa: E402
from skiporacle.oracle.schema import SequenceRecord

FIELDS = ("series", "spec", "percent_layers", "mean_score", "low", "high")


def curve_rows(records: list[SequenceRecord], tolerance: float, resamples: int = RESAMPLES, seed: int = 0,
               metric: str | None = None, out: Path | None = None) -> list[dict]:
    """One row per plotted point: static candidates by space, knapsack curve, rule points, full model.

    Bands resample sequences by position in id order (`stats.resample_rows`), as summary.json's
    intervals do.  With `metric` and records that all have >= 2 references, also the split-reference
    series (see oracle/splitref.py; scores cached in `out`): `knapsack-first-reference` (choose and
    score with references[0]), `knapsack-split-reference` (choose with references[0], score with the
    others), `rule-split-reference` and `full-split-reference` (the full model on the others).
    """
    table = RunTable.from_records(records)
    specs, costs, scores, full = table.specs, table.costs, table.scores, table.full_scores
    n, n_layers = len(records), table.num_layers
    boot = resample_rows([r.id for r in records], seed, resamples)
    rows = []

    def point(series, spec, layers, values):
        lo, hi = mean_ci(values, boot)
        rows.append({"series": series, "spec": spec, "percent_layers": 100 * layers / n_layers,
                     "mean_score": float(values.mean()), "low": lo, "high": hi})

    def curve(series, points, samples):
        for k, (m, y) in enumerate(points):
            ys = [s[k] for s in samples]
            lo, hi = interval(ys) if all(np.isfinite(ys)) else (np.nan, np.nan)
            rows.append({"series": series, "spec": f"budget:{m:g}", "percent_layers": 100 * m / n_layers,
                         "mean_score": y, "low": float(lo), "high": float(hi)})

    for k, (spec, space, cost) in enumerate(zip(specs, table.spaces, costs)):
        if k != table.full_column:
            point(space, spec, cost, scores[:, k])
    point("full", "all", n_layers, full)
    for series, choice in (("rule", table.rule(tolerance)), ("rule-exact", table.exact_rule())):
        mean_layers = float(np.mean(table.chosen_layers(choice)))
        point(series, series, mean_layers, scores[np.arange(n), table.or_full(choice)])
    training_free = table.training_free_columns()
    subsets = [("knapsack", table)]
    if len(training_free) < len(specs):  # healed candidates present: also the curve without them
        subsets.append(("knapsack-training-free", table.subset(training_free)))
    for series, sub in subsets:
        fr = frontiers(sub.scores, sub.costs)
        boots = [KnapsackCurve(best_totals(fr, r, max(sub.costs)), n) for r in boot]
        points = sub.knapsack().points(n_layers)
        curve(series, points, [[b.mean_score_at(m) for m, _ in points] for b in boots])
    if metric is not None and has_split(records):
        first, others = split_scores(records, metric, out)
        everyone = np.arange(n)
        grid = held_out_curve(first, others, costs, everyone, n_layers)
        samples = [{m: (a, b) for m, a, b in held_out_curve(first, others, costs, r, n_layers)} for r in boot]
        for series, part in (("knapsack-first-reference", 0), ("knapsack-split-reference", 1)):
            curve(series, [(p[0], p[1 + part]) for p in grid],
                  [[s.get(p[0], (np.nan, np.nan))[part] for p in grid] for s in samples])
        first_table = RunTable(specs, costs, first, table.identical)
        choice = first_table.rule(tolerance)
        point("rule-split-reference", "rule-split-reference", float(np.mean(first_table.chosen_layers(choice))),
              others[everyone, first_table.or_full(choice)])
        point("full-split-reference", "all", n_layers, others[:, table.full_column])
    return rows


def write_curves(out: Path, records: list[SequenceRecord], settings: dict, resamples: int = RESAMPLES) -> tuple[Path, Path]:
    """Write curves.csv and curves.png into the run folder."""
    rows = curve_rows(records, settings["tolerance"], resamples, settings["seed"], settings["metric"], out)
    csv_path, png_path = out / "curves.csv", out / "curves.png"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    full = next(r for r in rows if r["series"] == "full")
    labels = {"knapsack": "knapsack oracle", "knapsack-training-free": "knapsack oracle, training-free only",
              "healed-base": "static healed variants' layers, base weights",
              "knapsack-first-reference": "knapsack oracle, chosen and scored with reference 1",
              "knapsack-split-reference": "knapsack oracle, chosen with reference 1, scored with the others"}
    for series in static_series() + ["knapsack", "knapsack-training-free", "knapsack-first-reference",
                                     "knapsack-split-reference"]:
        pts = sorted((r for r in rows if r["series"] == series), key=lambda r: r["percent_layers"])
        if not pts:
            continue
        curve = series.startswith("knapsack")
        if not curve:
            pts.append(full)
        x = [p["percent_layers"] for p in pts]
        line = ax.plot(x, [p["mean_score"] for p in pts], marker="" if curve else "o",
                       ls=":" if series.endswith("free") else "--" if series.endswith("reference") else "-",
                       ms=4, label=labels.get(series, f"static {series}"))[0]
        ax.fill_between(x, [p["low"] for p in pts], [p["high"] for p in pts], color=line.get_color(), alpha=0.15)
    for series, marker in (("rule", "*"), ("rule-exact", "D"), ("rule-split-reference", "P")):
        r = next((r for r in rows if r["series"] == series), None)
        if r is None:
            continue
        ax.errorbar(r["percent_layers"], r["mean_score"], yerr=[[r["mean_score"] - r["low"]], [r["high"] - r["mean_score"]]],
                    marker=marker, ms=11 if marker == "*" else 7, ls="", label=f"per-sequence {series}", zorder=5)
    ax.axhline(full["mean_score"], color="black", ls="--", lw=1, label="full model")
    held = next((r for r in rows if r["series"] == "full-split-reference"), None)
    if held is not None:
        ax.axhline(held["mean_score"], color="grey", ls=":", lw=1, label="full model, scored with references 2+")
    ax.set_xlabel("mean % of layers per generated token")
    ax.set_ylabel(f"mean {settings['metric']} (0-100)")
    ax.set_title(f"{settings['model']} on {settings['task']} (N={len(records)})")
    ax.set_xlim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path


def write_similarity(out: Path, sims: dict[str, list[tuple[int, float]]], n_layers: int, title: str) -> Path:
    """Plot similarity.png: cosine to the full model's final hidden state against % of layers."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, pts in sims.items():
        ax.plot([100 * c / n_layers for c, _ in pts], [s for _, s in pts], marker="o", label=name)
    ax.set_xlabel("% of layers per generated token")
    ax.set_ylabel("mean cosine similarity to full model")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "similarity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
