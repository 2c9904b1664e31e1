"""Aggregates of a run's records: rule oracles, exact knapsack curve, static baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skiporacle.eval.model import package_versions
from skiporacle.oracle.records import SUMMARY, load_run, write_json_atomic
from skiporacle.oracle.select import cheapest_identical, cheapest_matching, knapsack


def score_matrix(records: list[dict]) -> tuple[list[str], list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(specs, costs, scores [N, K], identical [N, K], full scores [N]); the last column is the full model."""
    specs = [c["spec"] for c in records[0]["candidates"]] + ["all"]
    costs = [c["cost"] for c in records[0]["candidates"]] + [records[0]["full"]["cost"]]
    scores = np.array([[c["score"] for c in r["candidates"]] + [r["full"]["score"]] for r in records])
    identical = np.array([[c["identical"] for c in r["candidates"]] + [True] for r in records])
    return specs, costs, scores, identical, scores[:, -1]


def space_of(spec: str) -> str:
    """The space a candidate spec belongs to: uniform, early-exit, importance, random, file, healed or full.

    `base:NAME`, the training-free twin of healed variant NAME, belongs to the healed space's training-free side.
    """
    head = spec.split(":", 1)[0]
    return {"uniform": "uniform", "exit": "early-exit", "importance": "importance", "all": "full",
            "healed": "healed", "base": "healed-base"}.get(
        head, "random" if head.startswith("random") else "file"
    )


def training_free_columns(specs: list[str]) -> list[int]:
    """Indices of the candidates that use the model's own weights (all but the `healed:` ones)."""
    return [k for k, s in enumerate(specs) if space_of(s) != "healed"]


def summarize(out: Path, settings_dict: dict, wall_seconds: float, extra: dict) -> dict:
    """Compute the summary of the run in `out` and write summary.json."""
    settings, records, _ = load_run(out)
    specs, costs, scores, identical, full_scores = score_matrix(records)
    n_layers = costs[-1]
    n = len(records)
    tolerance = settings_dict["tolerance"]
    rule = cheapest_matching(scores, costs, full_scores, tolerance)
    exact = cheapest_identical(identical, scores, costs)
    curve = knapsack(scores, costs)
    full_mean = float(full_scores.mean())
    reach = curve.layers_to_reach(full_mean)
    summary = {
        "model": settings["model"],
        "task": settings["task"] if not settings.get("data_file") else f"file:{settings['data_file']}",
        "metric": settings["metric"],
        "sequences": n,
        "num_layers": n_layers,
        "seed": settings["seed"],
        "versions": package_versions(),
        "full_mean_score": full_mean,
        "rule": _rule_stats(rule, scores, costs, n_layers, tolerance),
        "rule_exact": _rule_stats(exact, scores, costs, n_layers, None),
        "knapsack": {
            "layers_at_full_quality": reach,
            "percent_layers_at_full_quality": None if reach is None else 100 * reach / n_layers,
            "curve": [
                {"mean_layers": m, "percent_layers": 100 * m / n_layers, "mean_score": y}
                for m, y in curve.points(n_layers)
            ],
        },
        "static": [
            {"spec": s, "space": space_of(s), "cost": c, "percent_layers": 100 * c / n_layers,
             "mean_score": float(scores[:, k].mean()), "identical_percent": float(100 * identical[:, k].mean())}
            for k, (s, c) in enumerate(zip(specs, costs))
        ],
        **_training_free(specs, scores, costs, full_scores, tolerance),
        "wall_seconds": wall_seconds,
        **extra,
    }
    write_json_atomic(out / SUMMARY, summary)
    return summary


def _training_free(specs, scores, costs, full_scores, tolerance) -> dict:
    """The oracle figures again without the healed candidates, when there are any."""
    keep = training_free_columns(specs)
    if len(keep) == len(specs):
        return {}
    kept_costs = [costs[k] for k in keep]
    rule = cheapest_matching(scores[:, keep], kept_costs, full_scores, tolerance)
    reach = knapsack(scores[:, keep], kept_costs).layers_to_reach(float(full_scores.mean()))
    return {"training_free": {
        "rule": _rule_stats(rule, scores[:, keep], kept_costs, costs[-1], tolerance),
        "knapsack_percent_layers_at_full_quality": None if reach is None else 100 * reach / costs[-1],
    }}


def _rule_stats(choice: np.ndarray, scores: np.ndarray, costs: list[int], n_layers: int, tolerance) -> dict:
    chosen = np.where(choice >= 0, choice, len(costs) - 1)
    layers = np.array([costs[k] for k in chosen], dtype=float)
    return {
        "tolerance": tolerance,
        "mean_layers": float(layers.mean()),
        "mean_percent_layers": float(100 * layers.mean() / n_layers),
        "mean_score": float(scores[np.arange(len(chosen)), chosen].mean()),
        "skipping_sequences": int((layers < n_layers).sum()),
    }
