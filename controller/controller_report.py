"""What `skiporacle controller` prints: the lines of a controller evaluation's result (controller.json)."""

from __future__ import annotations

from pathlib import Path


def controller_lines(result: dict, run: Path, out: Path) -> list[str]:
    """The evaluation of `result` (`controller_run.run_controller`) for the terminal, headline figures with their
    95 % intervals; `run` is the evaluated run folder, `out` the controller's."""
    lines = []
    lo_hi = result["intervals"]
    lines.append(f"skiporacle: {result['mode']} on {result['sequences']} sequences of {run} "
                 f"({result['labels']} labels); wrote {out / 'controller.json'} and {out / 'controller.png'}")
    lines.append(f"full model: mean {result['metric']} {result['full_mean_score']:.2f}")
    lines.append(f"oracle (in-sample knapsack): full quality at {_fmt(result['oracle_layers_at_full_quality_percent'], lo_hi['oracle_layers_at_full_quality_percent'])} of layers")
    lines.append(f"controller (held-out, threshold mode): {_fmt(result['layers_at_full_quality_percent'], lo_hi['layers_at_full_quality_percent'])}; "
                 f"budget mode {_fmt(result['budget_mode']['layers_at_full_quality_percent'], result['budget_mode']['interval'])}")
    fixed = result["fixed_threshold"]
    lines.append(f"controller at a threshold chosen on {fixed['tau_chosen_on']}: {fixed['percent_layers']:.1f} % of layers "
                 f"[{_span(fixed['percent_layers_ci95'])}], mean {result['metric']} minus full {fixed['mean_score_minus_full']:+.2f} "
                 f"[{_span(fixed['mean_score_minus_full_ci95'])}] (paired)")
    kept = result["saving_kept"]
    lines.append("saving kept: " + ("none (the oracle saves nothing)" if kept is None else
                                   f"{100 * kept:.0f} % of the oracle's saving, 95 % interval "
                                   + _span(lo_hi["saving_kept"], scale=100)))
    base = result["baselines"]
    lines.append(f"best single candidate (in-sample): full quality at {_fmt(base['static_layers_at_full_quality_percent'], base['static_interval'])}; "
                 f"controller minus it, paired: [{_span(base['controller_minus_static_percent_paired'])}] points")
    lines.append(f"baselines: shuffled oracle {_fmt(base['shuffled_oracle_layers_at_full_quality_percent'], None)}, "
                 f"prompt-length controller {_fmt(base['prompt_length_layers_at_full_quality_percent'], base['prompt_length_interval'])}")
    if "learning_curve" in result:
        lines.append("learning curve (training rows per fold: held-out layers at full quality): " + ", ".join(
            f"{p['train_rows']}: {_fmt(p['layers_at_full_quality_percent'], None)}" for p in result["learning_curve"]))
    lines.append(f"deployable controller (tau {result['deploy_tau']:.2f}): {out / 'model'}")
    return lines


def _fmt(value: float | None, span) -> str:
    text = "never" if value is None else f"{value:.1f} %"
    return text + (f" [{_span(span)}]" if span else "")


def _span(span, scale: float = 1.0) -> str:
    return "n/a" if not span else f"{scale * span[0]:.1f}-{scale * span[1]:.1f}"
