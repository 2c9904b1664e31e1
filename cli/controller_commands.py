"""The controller's subcommands: `skiporacle controller` and `skiporacle generate --controller`."""

from __future__ import annotations

import argparse
from functools import lru_cache, partial
from pathlib import Path

from skiporacle.cli.run_settings import placement_of, settings_from_args
from skiporacle.controller.evaluate import EvalSettings
from skiporacle.pertoken.study import run_pertoken
from skiporacle.pertoken.study_report import summary_lines
from skiporacle.pertoken.study_settings import parse_taus, Study
from skiporacle.controller.controller_run import run_controller
from skiporacle.data.errors import BadInput
from skiporacle.oracle.inputs import load_named_model


def controller(args: argparse.Namespace) -> int:
    """Evaluate a controller on a run (k-fold, or trained on --train), save it, write controller.json/.png."""
    if args.folds < 2:
        raise BadInput(f"--folds must be at least 2, got {args.folds}")
    if args.resamples < 1:
        raise BadInput(f"--resamples must be at least 1, got {args.resamples}")
    if args.tolerance < 0:
        raise BadInput(f"--tolerance must be at least 0 (score points below the full model's), got {args.tolerance:g}")
    run = Path(args.run)
    out = Path(args.out) if args.out else run / ("controller" if not args.train else f"controller-from-{Path(args.train).name}")
    settings = EvalSettings(tolerance=args.tolerance, folds=args.folds, seed=args.seed, resamples=args.resamples)
    load = lru_cache(maxsize=1)(partial(load_named_model, device=placement_of(args).device))  # the train and test runs share a model
    result = run_controller(run, out, Path(args.train) if args.train else None, settings, load)
    lo_hi = result["intervals"]
    print(f"skiporacle: {result['mode']} on {result['sequences']} sequences of {run} "
          f"({result['labels']} labels); wrote {out / 'controller.json'} and {out / 'controller.png'}")
    print(f"full model: mean {result['metric']} {result['full_mean_score']:.2f}")
    print(f"oracle (in-sample knapsack): full quality at {_fmt(result['oracle_layers_at_full_quality_percent'], lo_hi['oracle_layers_at_full_quality_percent'])} of layers")
    print(f"controller (held-out, threshold mode): {_fmt(result['layers_at_full_quality_percent'], lo_hi['layers_at_full_quality_percent'])}; "
          f"budget mode {_fmt(result['budget_mode']['layers_at_full_quality_percent'], result['budget_mode']['interval'])}")
    fixed = result["fixed_threshold"]
    print(f"controller at a threshold chosen on {fixed['tau_chosen_on']}: {fixed['percent_layers']:.1f} % of layers "
          f"[{_span(fixed['percent_layers_ci95'])}], mean {result['metric']} minus full {fixed['mean_score_minus_full']:+.2f} "
          f"[{_span(fixed['mean_score_minus_full_ci95'])}] (paired)")
    kept = result["saving_kept"]
    print("saving kept: " + ("none (the oracle saves nothing)" if kept is None else
                             f"{100 * kept:.0f} % of the oracle's saving, 95 % interval "
                             + _span(lo_hi["saving_kept"], scale=100)))
    base = result["baselines"]
    print(f"best single candidate (in-sample): full quality at {_fmt(base['static_layers_at_full_quality_percent'], base['static_interval'])}; "
          f"controller minus it, paired: [{_span(base['controller_minus_static_percent_paired'])}] points")
    print(f"baselines: shuffled oracle {_fmt(base['shuffled_oracle_layers_at_full_quality_percent'], None)}, "
          f"prompt-length controller {_fmt(base['prompt_length_layers_at_full_quality_percent'], base['prompt_length_interval'])}")
    if "learning_curve" in result:
        print("learning curve (training rows per fold: held-out layers at full quality): " + ", ".join(
            f"{p['train_rows']}: {_fmt(p['layers_at_full_quality_percent'], None)}" for p in result["learning_curve"]))
    print(f"deployable controller (tau {result['deploy_tau']:.2f}): {out / 'model'}")
    return 0


def _fmt(value: float | None, span) -> str:
    text = "never" if value is None else f"{value:.1f} %"
    return text + (f" [{_span(span)}]" if span else "")


def _span(span, scale: float = 1.0) -> str:
    return "n/a" if not span else f"{scale * span[0]:.1f}-{scale * span[1]:.1f}"


def pertoken(args: argparse.Namespace) -> int:
    """`skiporacle pertoken`: the per-token oracle, a hidden-state probe and its controller with real skipping,
    against fixed skip rates at equal compute (see skiporacle.pertoken.study)."""
    for name, value, low in (("--train-offset", args.train_offset, 0), ("--train-limit", args.train_limit, 1),
                             ("--probe-layer", args.probe_layer, 0), ("--resamples", args.resamples, 1)):
        if value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    study = Study(train_offset=args.train_offset, train_limit=args.train_limit, importance=args.importance,
                  probe_layer=args.probe_layer, taus=parse_taus(args.taus), budgets=args.budgets, seed=args.seed,
                  resamples=args.resamples)
    device = placement_of(args).device
    settings = settings_from_args(args)
    name = Path(args.data).stem if args.data else args.task.replace(":", "-")
    out = Path(args.out or f"runs/pertoken-{name}")
    result = run_pertoken(settings, study, out, device)
    for line in summary_lines(result, out):
        print(line)
    return 0
