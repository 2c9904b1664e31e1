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
    for line in result.lines(out):
        print(line)
    return 0


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
