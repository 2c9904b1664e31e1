"""controller.png: the controller's compute-vs-quality curve on the oracle's plot, with the baselines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skiporacle.controller.labels import Labels  # noqa: E402
from skiporacle.oracle.choose import knapsack  # noqa: E402

STYLE = {  # series: (label, colour, line style)
    "threshold": ("controller, threshold mode (held-out)", "tab:red", "-"),
    "budget": ("controller, budget mode (held-out)", "tab:orange", "-"),
    "prompt_length": ("prompt-length controller (held-out)", "tab:olive", ":"),
    "shuffled_oracle": ("shuffled oracle (choices of other sequences)", "tab:gray", "--"),
}


def plot_controller(path: Path, result: dict, labels: Labels) -> None:
    """Write the figure; x = mean % of layers per generated token, y = mean score."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    n_layers = labels.num_layers
    curve = knapsack(labels.scores, labels.costs)
    xs, ys = zip(*[(100 * m / n_layers, y) for m, y in curve.points(n_layers)])
    ax.plot(xs, ys, color="tab:blue", lw=2, label="knapsack oracle (in-sample: chosen and scored on the same data)")
    split = ((result.get("split_reference_oracle") or {}).get("held_out") or {}).get("knapsack", {})
    if split.get("curve"):
        pts = split["curve"]
        ax.plot([p["percent_layers"] for p in pts], [p["mean_score"] for p in pts], color="tab:cyan", lw=1.5,
                label="split-reference oracle (chosen on ref 1, scored on the others)")
    for name, (label, colour, style) in STYLE.items():
        pts = sorted(result["curves"][name], key=lambda p: p["percent_layers"])
        x = [p["percent_layers"] for p in pts]
        ax.plot(x, [p["mean_score"] for p in pts], color=colour, ls=style, lw=1.6, label=label)
        if name == "threshold":
            ax.fill_between(x, [p["low"] for p in pts], [p["high"] for p in pts], color=colour, alpha=0.15, lw=0)
    static = result["baselines"]["static"]
    ax.scatter([s["percent_layers"] for s in static], [s["mean_score"] for s in static], color="k", s=14, zorder=3,
               label="static candidates")
    ax.axhline(result["full_mean_score"], color="k", lw=0.8, ls="--", label="full model")
    head = result["layers_at_full_quality_percent"]
    ax.set_title(f"{result['model']} on {result['task']}: {result['mode']}, {result['sequences']} sequences"
                 + (f"\ncontroller reaches full quality at {head:.1f} % of layers" if head is not None else ""),
                 fontsize=10)
    ax.set_xlabel("mean % of decoder layers per generated token")
    ax.set_ylabel(f"mean {result['metric']}")
    ax.set_xlim(min(xs + (100.0,)) - 2, 101)
    ax.set_ylim(bottom=max(0.0, float(np.nanmin(ys)) - 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
