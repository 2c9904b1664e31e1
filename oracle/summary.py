"""Aggregates of a run's records: rule oracles, exact knapsack curve, static baselines, with bootstrap
intervals; the split-reference and guarded oracles when the run allows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skiporacle.data.errors import BadInput
from skiporacle.data.files import package_versions
from skiporacle.data.files import write_json_atomic
from skiporacle.data.tasks import scored_references
from skiporacle.eval.metrics import all_corpus_scores, sequence_scores
from skiporacle.oracle.guard import guarded, missing_sequences, read_plausibility
from skiporacle.oracle.records import SUMMARY, load_run
from skiporacle.oracle.splitref import has_split, split_reference, split_scores
from skiporacle.oracle.table import RunTable
from skiporacle.oracle.bootstrap import RESAMPLES, mean_ci, paired, resample_rows
from skiporacle.oracle.stats import knapsack_stats, layer_token_percents, rule_stats, token_matrix
from skiporacle.oracle.schema import SequenceRecord


def summarize(out: Path, settings_dict: dict, wall_seconds: float, extra: dict) -> dict:
    """Compute the summary of the run in `out` and write summary.json.

    Point estimates use the records in file order, as always; intervals resample sequences by their
    position in id order (`stats.resample_rows`, the run's seed), so no figure depends on record order.
    """
    settings, records, _ = load_run(out)
    table = RunTable.from_records(records)
    specs, costs, scores, identical, full_scores = table.specs, table.costs, table.scores, table.identical, table.full_scores
    n_layers = table.num_layers
    n = len(records)
    tolerance = settings_dict["tolerance"]
    tokens = token_matrix(records)
    boot = resample_rows([r.id for r in records], settings["seed"])
    rule = table.rule(tolerance)
    exact = table.exact_rule()
    curve = table.knapsack()
    full_mean = float(full_scores.mean())
    reach = curve.layers_to_reach(full_mean)
    knap, knap_percents = knapsack_stats(scores, costs, boot, n_layers)
    summary = {
        "model": settings["model"],
        "task": settings["task"] if not settings.get("data_file") else f"file:{settings['data_file']}",
        "metric": settings["metric"],
        "sequences": n,
        "num_layers": n_layers,
        "seed": settings["seed"],
        "versions": package_versions(),
        "full_mean_score": full_mean,
        "rule": rule_stats(rule, scores, costs, n_layers, tolerance, tokens, boot),
        "rule_exact": rule_stats(exact, scores, costs, n_layers, None, tokens, boot),
        "knapsack": {
            "layers_at_full_quality": reach,
            "percent_layers_at_full_quality": None if reach is None else 100 * reach / n_layers,
            "curve": [
                {"mean_layers": m, "percent_layers": 100 * m / n_layers, "mean_score": y}
                for m, y in curve.points(n_layers)
            ],
            **{k: v for k, v in knap.items() if k.endswith("_ci95") or k.startswith("gain")},
        },
        "static": [
            {"spec": s, "space": space, "cost": c, "percent_layers": 100 * c / n_layers,
             "mean_score": float(scores[:, k].mean()), "identical_percent": float(100 * identical[:, k].mean()),
             "mean_score_ci95": mean_ci(scores[:, k], boot), "mean_percent_layers_per_sequence": 100 * c / n_layers,
             **layer_token_percents(np.full(n, k), costs, tokens, n_layers)}
            for k, (s, space, c) in enumerate(zip(specs, table.spaces, costs))
        ],
        **_training_free(table, tolerance, tokens, boot, knap, knap_percents, rule),
        "full_mean_score_ci95": mean_ci(full_scores, boot),
        "full_metrics": full_metrics(records, settings["metric"], scored_references(settings["task"])),
        "bootstrap": {"resamples": RESAMPLES, "seed": settings["seed"], "interval": "95 % percentile",
                      "resampled": "sequences, by position in id order; the same resamples for every figure"},
    }
    if records[0].search is not None:
        summary["search"] = search_figures(records, n_layers, boot)
    if has_split(records):
        first, others = split_scores(records, settings["metric"], out)
        counts = [len(r.references) for r in records]
        summary["split_reference"] = {"references_per_sequence": {"min": min(counts), "max": max(counts)},
                                      **split_reference(first, others, costs, n_layers, tolerance, boot, tokens)}
    plausibility = read_plausibility(out)
    missing = [] if plausibility is None else missing_sequences(records, plausibility)
    if missing:  # a table older than the records: the run's own figures stand, the guard waits for a new table
        summary["guarded_skipped"] = (f"plausibility.json lacks {len(missing)} of the {n} sequences (e.g. "
                                      f"{missing[0]!r}); rerun skiporacle plausibility, then resummarize")
    elif plausibility is not None:
        summary["guarded"] = guarded(records, plausibility, scores, costs, tolerance, tokens, boot,
                                     knap["percent_layers_at_full_quality"], knap_percents, rule)
    summary.update({"wall_seconds": wall_seconds, **extra})
    write_json_atomic(out / SUMMARY, summary)
    return summary


def search_figures(records: list[SequenceRecord], n_layers: int, boot: np.ndarray) -> dict:
    """A per-sequence search's effort: mean proposals judged, verified, generated and pruned per sequence,
    fill generations, near-ties among verified proposals, the share of proposals judged without generating
    them (verification alone), and where the paths stopped (with intervals)."""
    stats = {k: np.array([r.search[k] for r in records], dtype=float)
             for k in ("evaluations", "verified", "generated", "pruned", "fill_generations", "near_ties", "stop_cost")}
    stop = 100 * stats.pop("stop_cost") / n_layers
    return {**{f"mean_{k}_per_sequence": float(v.mean()) for k, v in stats.items()},
            "near_ties": int(stats["near_ties"].sum()),
            "generations_saved_percent": float(100 * (1 - stats["generated"].sum() / max(stats["evaluations"].sum(), 1))),
            "mean_percent_layers_at_stop": float(stop.mean()), "mean_percent_layers_at_stop_ci95": mean_ci(stop, boot)}


def resummarize(out: Path) -> dict:
    """Recompute summary.json of the run in `out` from its records, keeping the timing fields
    (wall_seconds, workers, resumed_sequences, machine) of the summary.json already there."""
    settings, records, old = load_run(out)
    if not records:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    old = old or {}
    kept = {k: old[k] for k in ("workers", "resumed_sequences", "machine") if k in old}
    return summarize(out, settings, old.get("wall_seconds"), kept)


def full_metrics(records: list[SequenceRecord], metric: str, references_scored: int = 0) -> dict:
    """The full model's outputs under the other metrics of the task's family, against the references a
    sequence is scored with (the first `references_scored`, or all with 0; CNN/DM: the highlights).

    ROUGE tasks: rouge1/2/L/Lsum; BLEU/chrF tasks: bleu and chrf; exact match: itself.  `corpus` is
    sacrebleu's corpus score for BLEU/chrF and the per-sequence mean otherwise; `sequence_mean` is
    the mean of per-sequence scores (sentence BLEU/chrF).  All 0-100.
    """
    outputs = [r.full.output for r in records]
    refs = [r.references[:references_scored] if references_scored else r.references for r in records]
    if metric == "exact_match":
        value = float(np.mean(sequence_scores(metric, outputs, refs)))
        return {"corpus": {metric: value}, "sequence_mean": {metric: value}}
    names = ("bleu", "chrf") if metric in ("bleu", "chrf") else ("rouge1", "rouge2", "rougeL", "rougeLsum")
    corpus = all_corpus_scores(outputs, refs)
    means = {m: float(np.mean(sequence_scores(m, outputs, refs))) if m in ("bleu", "chrf") else corpus[m]
             for m in names}
    return {"corpus": {m: corpus[m] for m in names}, "sequence_mean": means}


def _training_free(table: RunTable, tolerance, tokens, boot, knap, knap_percents, rule) -> dict:
    """The oracle figures again without the healed candidates, when there are any, and the paired
    differences with healed - training-free."""
    keep = table.training_free_columns()
    if len(keep) == len(table.specs):
        return {}
    free_table = table.subset(keep)
    n_layers = table.num_layers
    free_rule = free_table.rule(tolerance)
    free, free_percents = knapsack_stats(free_table.scores, free_table.costs, boot, n_layers)
    reach = free["percent_layers_at_full_quality"]
    layers, free_layers = table.chosen_layers(rule), free_table.chosen_layers(free_rule)
    whole = knap["percent_layers_at_full_quality"]
    return {"training_free": {
        "rule": rule_stats(free_rule, free_table.scores, free_table.costs, n_layers, tolerance, tokens[:, keep], boot),
        "knapsack_percent_layers_at_full_quality": reach,
        "knapsack_percent_layers_at_full_quality_ci95": free["percent_layers_at_full_quality_ci95"],
        "paired_difference": {
            "knapsack_percent_layers_at_full_quality": paired(
                None if whole is None or reach is None else whole - reach, knap_percents, free_percents),
            "rule_mean_layers": {"estimate": float((layers - free_layers).mean()),
                                 "ci95": mean_ci(layers - free_layers, boot)},
        },
    }}
