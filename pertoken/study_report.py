"""The per-token study's figure (pertoken.png) and printed summary, both from pertoken.json's content."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skiporacle.data.files import write_atomic  # noqa: E402


def plot_pertoken(path: Path, result: dict) -> None:
    """Score vs % of layers per generated token: the fixed-rate line with its band, the controller's tau points
    with error bars (both intervals), the full model, and the per-token oracles' mean layers as vertical lines."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    fixed = result["fixed_rate"]
    x = [p["percent_layers"] for p in fixed]
    ax.plot(x, [p["mean_score"] for p in fixed], color="tab:blue", marker="o", ms=3, lw=1.6,
            label="fixed rate, importance:B (same drop order)")
    ax.fill_between(x, [p["mean_score_ci95"][0] for p in fixed], [p["mean_score_ci95"][1] for p in fixed],
                    color="tab:blue", alpha=0.15, lw=0)
    for p in result["tau_points"]:
        lo, hi = p["mean_score_ci95"]
        xlo, xhi = p["percent_layers_ci95"]
        ax.errorbar([p["percent_layers"]], [p["mean_score"]], yerr=[[p["mean_score"] - lo], [hi - p["mean_score"]]],
                    xerr=[[p["percent_layers"] - xlo], [xhi - p["percent_layers"]]], fmt="s", color="tab:red",
                    ms=4, capsize=2, lw=1)
        ax.annotate(f"{p['tau']:g}", (p["percent_layers"], p["mean_score"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color="tab:red")
    ax.plot([], [], "s", color="tab:red", label="per-token controller (probe), at each tau")
    full = result["full_model"]["mean_score"]
    ax.scatter([100.0], [full], marker="*", s=90, color="k", zorder=4, label="full model")
    styles = {"importance": ("tab:green", "--"), "early_exit": ("tab:purple", ":")}
    for name, (colour, style) in styles.items():
        block = result["oracle"][name]
        ax.axvline(block["percent_layers"], color=colour, ls=style, lw=1.2,
                   label=f"per-token oracle, {name.replace('_', '-')} family: {block['percent_layers']:.1f} %")
    ref = result["oracle"]["layerskip_reference"]
    ax.axvline(ref["percent_layers"], color="tab:gray", ls="-.", lw=0.8,
               label=f"LayerSkip's per-token early-exit oracle on {ref['model']}: {ref['percent_layers']:.1f} % (reference)")
    ax.set_title(f"{result['model']} on {result['task']}: per-token controller vs fixed rates, "
                 f"{len(result['rows']['evaluation']['ids'])} sequences", fontsize=10)
    ax.set_xlabel("mean % of decoder layers per generated token")
    ax.set_ylabel(f"mean {result['metric']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))


def _span(span, fmt: str = ".2f") -> str:
    return "n/a" if not span else f"[{span[0]:{fmt}}, {span[1]:{fmt}}]"


def summary_lines(result: dict, out: Path) -> list[str]:
    """The printed summary: oracles, probe accuracy, the tau table against fixed rates, and the verdict."""
    n, metric = result["num_layers"], result["metric"]
    full = result["full_model"]
    lines = [f"skiporacle: per-token study of {result['model']} on {result['task']}, "
             f"{len(result['rows']['evaluation']['ids'])} evaluation and {len(result['rows']['training']['ids'])} "
             f"training sequences; wrote {out / 'pertoken.json'} and {out / 'pertoken.png'}",
             f"full model: mean {metric} {full['mean_score']:.2f} {_span(full['mean_score_ci95'])}, "
             f"{full['tokens']} tokens"]
    for name in ("importance", "early_exit"):
        b = result["oracle"][name]
        lines.append(f"per-token oracle, {name.replace('_', '-')} family: {b['mean_layers']:.2f} of {n} layers "
                     f"({b['percent_layers']:.1f} %) {_span(b['percent_layers_ci95'], '.1f')} % per token")
    ref = result["oracle"]["layerskip_reference"]
    ties = result["near_ties"]
    lines.append(f"  reference: LayerSkip's per-token early-exit oracle, {ref['mean_layers']} of {ref['num_layers']} "
                 f"layers ({ref['percent_layers']} %) on {ref['model']}; near-ties here (top-2 margin < "
                 f"{ties['margin_below']:g}): {ties['tokens']} of {ties['of']} tokens")
    probe = result["probe"]
    members = probe["members"]
    aucs = [m["auc"] for m in members if m["auc"] is not None]
    lines.append(f"probe (L2 {probe['alpha']:g}, {probe['training_tokens']} training tokens): on "
                 f"{probe['evaluation_tokens']} evaluation tokens, accuracy per member "
                 f"{min(m['accuracy'] for m in members):.2f}-{max(m['accuracy'] for m in members):.2f}"
                 + (f", AUC {min(aucs):.2f}-{max(aucs):.2f}" if aucs else ", AUC n/a (one class)"))
    lines.append(f"{'tau':>6} {'% layers':>9} {'layers':>7} {'mean ' + metric:>13} {'fixed rate':>11} "
                 f"{'difference (paired 95 %)':>28} {'agree':>6} {'decided ok':>10}")
    for p in result["tau_points"]:
        diff = p["controller_minus_fixed_rate"]
        fixed = p["fixed_rate_at_equal_compute"]
        tf = p["teacher_forced"]
        lines.append(f"{p['tau']:>6g} {p['percent_layers']:>8.1f}% {p['mean_layers_per_token']:>7.2f} "
                     f"{p['mean_score']:>13.2f} {'beyond range' if fixed is None else format(fixed['mean_score'], '.2f'):>11} "
                     f"{'n/a' if diff is None else format(diff['estimate'], '+.2f') + ' ' + _span(diff['ci95']):>28} "
                     f"{tf['agreement_with_cheapest_correct']:>6.2f} {tf['decided_correct']:>10.2f}")
    lines.append("  charged for the key/value fill of skipped layers: " + "; ".join(
        f"tau {p['tau']:g} {p['percent_layers_charged']:.1f} % " + (
            "beyond range" if p["controller_minus_fixed_rate_charged"] is None else
            f"{p['controller_minus_fixed_rate_charged']['estimate']:+.2f} {_span(p['controller_minus_fixed_rate_charged']['ci95'])}")
        for p in result["tau_points"]))
    lines.append("  (fixed rate: interpolated at the point's layers per token; agree, decided ok: teacher-forced on the "
                 "evaluation tokens, the share where the probe decides the oracle's cheapest correct member, and where "
                 "its decided member gives the full model's token)")
    lines.append(f"verdict (paper: per-token controller no better than fixed rates at equal compute): {result['verdict']}")
    return lines
