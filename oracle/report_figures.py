"""The figures of report.html: which keys of summary.json and controller.json the page shows, and how.

Contract: a figure row is shown only when its key is present; its interval is KEY_ci95 (summary.json) or the
named interval key (controller.json); a paired difference ({"estimate", "ci95"}) shows both.  Every row
carries its dotted key, so a reader (or a test) can check the shown text against the file: `fmt(lookup(file, key))`.
"""

from __future__ import annotations

# (group, [(label, key)]): the interval of KEY is KEY_ci95; rows whose key is absent are left out.
_RULE = [("mean % of layers per generated token", "mean_percent_layers"), ("mean layers", "mean_layers"),
         ("mean score", "mean_score"), ("token-weighted % of layers", "percent_layer_tokens"),
         ("sequences that skip", "skipping_sequences")]
_KNAPSACK = [("% of layers at full quality", "percent_layers_at_full_quality"),
             ("layers at full quality", "layers_at_full_quality"),
             ("gain at full compute (score)", "gain_at_full_compute")]
_PAIRED = [("knapsack % of layers at full quality (paired)", "paired_difference.knapsack_percent_layers_at_full_quality"),
           ("rule mean layers (paired)", "paired_difference.rule_mean_layers"),
           ("gain at full compute (paired)", "paired_difference.gain_at_full_compute")]
HEADLINE = [
    ("Full model", [("mean score", "full_mean_score")]),
    ("Rule: cheapest candidate scoring ≥ full − tolerance", [(a, f"rule.{k}") for a, k in _RULE]),
    ("Exact rule: cheapest token-identical candidate", [(a, f"rule_exact.{k}") for a, k in _RULE]),
    ("Knapsack oracle", [(a, f"knapsack.{k}") for a, k in _KNAPSACK]),
    ("Training-free candidates only", [("knapsack % of layers at full quality", "training_free.knapsack_percent_layers_at_full_quality"),
                                       ("rule mean % of layers", "training_free.rule.mean_percent_layers")]
     + [(f"healed − training-free, {a}", f"training_free.{k}") for a, k in _PAIRED]),
    ("Split reference, in-sample (choose and judge with references[0])",
     [("full model mean score", "split_reference.in_sample.full_mean_score")]
     + [(f"rule {a}", f"split_reference.in_sample.rule.{k}") for a, k in _RULE[:3]]
     + [(f"knapsack {a}", f"split_reference.in_sample.knapsack.{k}") for a, k in _KNAPSACK]),
    ("Split reference, held out (choose with references[0], judge with references[1:])",
     [("full model mean score", "split_reference.held_out.full_mean_score")]
     + [(f"rule {a}", f"split_reference.held_out.rule.{k}") for a, k in _RULE[:3]]
     + [("rule mean score − full", "split_reference.held_out.rule.mean_score_minus_full")]
     + [(f"knapsack {a}", f"split_reference.held_out.knapsack.{k}") for a, k in _KNAPSACK]
     + [("resamples not reaching full quality", "split_reference.held_out.knapsack.resamples_not_reaching")]
     + [(f"held out − in-sample, {a}", f"split_reference.{k}") for a, k in _PAIRED]),
    ("Plausibility-guarded oracles", [("margin (nats/token)", "guarded.margin"),
                                      ("plausible candidate outputs, %", "guarded.plausible_percent"),
                                      ("unguarded rule choices that are implausible", "guarded.rule_choices_removed")]
     + [(f"rule {a}", f"guarded.rule.{k}") for a, k in _RULE[:3]]
     + [(f"knapsack {a}", f"guarded.knapsack.{k}") for a, k in _KNAPSACK[:2]]
     + [(f"guarded − unguarded, {a}", f"guarded.{k}") for a, k in _PAIRED]),
]
CONTROLLER_ROWS = [
    ("controller: % of layers at full quality", "layers_at_full_quality_percent", "intervals.layers_at_full_quality_percent"),
    ("in-sample oracle on the same sequences", "oracle_layers_at_full_quality_percent", "intervals.oracle_layers_at_full_quality_percent"),
    ("share of the oracle's saving kept", "saving_kept", "intervals.saving_kept"),
    ("guarded oracle: % of layers at full quality", "oracle_layers_at_full_quality_percent_guarded", None),
    ("budget mode: % of layers at full quality", "budget_mode.layers_at_full_quality_percent", "budget_mode.interval"),
    ("best single static candidate", "baselines.static_layers_at_full_quality_percent", "baselines.static_interval"),
    ("prompt-length baseline", "baselines.prompt_length_layers_at_full_quality_percent", "baselines.prompt_length_interval"),
    ("shuffled oracle", "baselines.shuffled_oracle_layers_at_full_quality_percent", None),
]


def lookup(tree: dict | None, key: str):
    """The value at dotted `key` in nested dicts, or KeyError."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(key)
        tree = tree[part]
    return tree


def fmt(value) -> str:
    """How the page shows a figure: ints as they are, numbers to 2 decimals, [low, high] pairs, None as '–'."""
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def _row(tree: dict, label: str, key: str, ci_key: str | None) -> dict | None:
    """One figure row (None when the figure is absent); a paired-difference block shows estimate and ci95."""
    try:
        value = lookup(tree, key)
    except KeyError:
        return None
    if isinstance(value, dict) and "estimate" in value:
        key, ci_key = f"{key}.estimate", f"{key}.ci95"
        value = value["estimate"]
    try:
        ci = fmt(lookup(tree, ci_key)) if ci_key else ""
    except KeyError:
        ci, ci_key = "", None
    return {"label": label, "key": key, "ci_key": ci_key or "", "value": fmt(value), "ci": ci}


def headline(summary: dict) -> list[dict]:
    """Figure groups of summary.json present in this run, plus the full model's other metrics."""
    groups = []
    for name, rows in HEADLINE:
        kept = [r for r in (_row(summary, label, key, f"{key}_ci95") for label, key in rows) if r]
        if kept:
            groups.append({"name": name, "rows": kept})
    corpus = summary.get("full_metrics", {}).get("corpus", {})
    rows = [_row(summary, f"{m} (corpus)", f"full_metrics.corpus.{m}", None) for m in corpus]
    if rows:
        groups.insert(1, {"name": "Full model, other metrics", "rows": rows})
    return groups


def controller_block(data: dict | None) -> dict | None:
    """Rows and notes of RUN/controller/controller.json, or None without one."""
    if data is None:
        return None
    rows = [r for r in (_row(data, label, key, ci) for label, key, ci in CONTROLLER_ROWS) if r]
    mode = data.get("mode", "?") + (f", {data['folds']} folds" if data.get("folds") else "")
    notes = [f"Evaluation: {mode}; every sequence is decided by a controller that never saw it. "
             f"Deployed threshold tau = {fmt(data.get('deploy_tau'))}."]
    return {"rows": rows, "notes": notes}
