"""The result of a controller's evaluation (controller.json): typed at its top level, written and printed here.

`figures` is the evaluation of the label variant the run's controller uses (`controller.evaluate.evaluate`,
with the fixed threshold, the learning curve and which labels were used); `without_guard` is the evaluation
with unguarded labels beside it when the run has a plausibility table.  Units: % of the model's layers per
generated token, scores 0-100 in the run's metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skiporacle.data.files import write_json_atomic

CONTROLLER_JSON = "controller.json"


@dataclass(frozen=True)
class ControllerEvaluation:
    run: str  # the evaluated run folder
    train_run: str  # the run the controller was trained on (`run` itself under cross-validation)
    mode: str  # "cross-validation" or "cross-run"
    folds: int | None
    model: str
    task: str
    metric: str
    num_layers: int
    candidates: list[str]  # specs, the full model last
    costs: list[int]  # layers per generated token of each candidate
    settings: dict  # the EvalSettings as a dict
    figures: dict
    without_guard: dict | None
    split_reference_oracle: dict | None  # as the run's summary.json holds it
    decision_microseconds_per_sequence: float
    final_controller_train_seconds: float
    deploy_tau: float
    wall_seconds: float

    def to_json(self) -> dict:
        """controller.json's object, key for key as it has always been written."""
        head = {k: getattr(self, k) for k in ("run", "train_run", "mode", "folds", "model", "task", "metric",
                                              "num_layers", "candidates", "costs", "settings")}
        return {**head, **self.figures, **({"without_guard": self.without_guard} if self.without_guard else {}),
                "split_reference_oracle": self.split_reference_oracle,
                "decision_microseconds_per_sequence": self.decision_microseconds_per_sequence,
                "final_controller_train_seconds": self.final_controller_train_seconds,
                "deploy_tau": self.deploy_tau, "wall_seconds": self.wall_seconds}

    def write(self, out: Path) -> Path:
        """Write OUT/controller.json atomically; returns its path."""
        write_json_atomic(out / CONTROLLER_JSON, self.to_json())
        return out / CONTROLLER_JSON

    def lines(self, out: Path) -> list[str]:
        """The evaluation for the terminal: headline figures with their 95 % intervals (`out`: the controller's folder)."""
        f = self.figures
        lines = []
        lo_hi = f["intervals"]
        lines.append(f"skiporacle: {self.mode} on {f['sequences']} sequences of {self.run} "
                     f"({f['labels']} labels); wrote {out / CONTROLLER_JSON} and {out / 'controller.png'}")
        lines.append(f"full model: mean {self.metric} {f['full_mean_score']:.2f}")
        lines.append(f"oracle (in-sample knapsack): full quality at {_fmt(f['oracle_layers_at_full_quality_percent'], lo_hi['oracle_layers_at_full_quality_percent'])} of layers")
        lines.append(f"controller (held-out, threshold mode): {_fmt(f['layers_at_full_quality_percent'], lo_hi['layers_at_full_quality_percent'])}; "
                     f"budget mode {_fmt(f['budget_mode']['layers_at_full_quality_percent'], f['budget_mode']['interval'])}")
        fixed = f["fixed_threshold"]
        lines.append(f"controller at a threshold chosen on {fixed['tau_chosen_on']}: {fixed['percent_layers']:.1f} % of layers "
                     f"[{_span(fixed['percent_layers_ci95'])}], mean {self.metric} minus full {fixed['mean_score_minus_full']:+.2f} "
                     f"[{_span(fixed['mean_score_minus_full_ci95'])}] (paired)")
        kept = f["saving_kept"]
        lines.append("saving kept: " + ("none (the oracle saves nothing)" if kept is None else
                                       f"{100 * kept:.0f} % of the oracle's saving, 95 % interval "
                                       + _span(lo_hi["saving_kept"], scale=100)))
        base = f["baselines"]
        lines.append(f"best single candidate (in-sample): full quality at {_fmt(base['static_layers_at_full_quality_percent'], base['static_interval'])}; "
                     f"controller minus it, paired: [{_span(base['controller_minus_static_percent_paired'])}] points")
        lines.append(f"baselines: shuffled oracle {_fmt(base['shuffled_oracle_layers_at_full_quality_percent'], None)}, "
                     f"prompt-length controller {_fmt(base['prompt_length_layers_at_full_quality_percent'], base['prompt_length_interval'])}")
        if "learning_curve" in f:
            lines.append("learning curve (training rows per fold: held-out layers at full quality): " + ", ".join(
                f"{p['train_rows']}: {_fmt(p['layers_at_full_quality_percent'], None)}" for p in f["learning_curve"]))
        lines.append(f"deployable controller (tau {self.deploy_tau:.2f}): {out / 'model'}")
        return lines


def _fmt(value: float | None, span) -> str:
    text = "never" if value is None else f"{value:.1f} %"
    return text + (f" [{_span(span)}]" if span else "")


def _span(span, scale: float = 1.0) -> str:
    return "n/a" if not span else f"{scale * span[0]:.1f}-{scale * span[1]:.1f}"
