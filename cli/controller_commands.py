"""The controller's subcommands: `skiporacle controller` and `skiporacle generate --controller`."""

from __future__ import annotations

import argparse
import time
from functools import lru_cache, partial
from pathlib import Path

from skiporacle.cli.run_settings import placement_of, settings_from_args
from skiporacle.controller.deploy import generate_with_controller
from skiporacle.controller.evaluate import EvalSettings
from skiporacle.pertoken.study import run_pertoken
from skiporacle.pertoken.study_report import summary_lines
from skiporacle.pertoken.study_settings import parse_taus, Study
from skiporacle.controller.controller_run import load_controller, run_controller
from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.eval.decode_protocol import DecodeProtocol, protocol_of
from skiporacle.eval.generate import generate as run_generate
from skiporacle.eval.metrics import sequence_scores
from skiporacle.oracle.candidate_list import pinned_allocations
from skiporacle.oracle.inputs import load_named_model
from skiporacle.search.allocation import full


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


def deploy(args: argparse.Namespace, settings, inputs, model, tokenizer) -> int:
    """`generate --controller DIR`: decide per sequence at prefill, generate with real skipping, and time it
    against the full model on the same sequences in this process."""

    stored, fitted = load_controller(Path(args.controller))
    if stored["num_layers"] != inputs.num_layers:
        raise BadInput(f"controller {args.controller!r} is for a model of {stored['num_layers']} layers; "
                       f"{settings.model!r} has {inputs.num_layers}")
    if stored["model"] != settings.model:
        raise BadInput(f"controller {args.controller!r} was trained on model {stored['model']!r}, not {settings.model!r}")
    protocol = settings.protocol
    if protocol.first_token != protocol_of(stored).first_token or protocol.first_token != "allocation":
        raise BadInput(f"--controller deploys under --first-token allocation, the protocol of its labels; "
                       f"got {protocol.first_token!r}")
    if not protocol.shares_prompt:
        raise BadInput("--controller decodes with the prompt read by the full model, the protocol of its labels; "
                       "drop --prompt-under-allocation")
    seen = set(stored["train_content_hashes"]) & {content_hash(p) for p in inputs.prompts}
    if seen:
        raise BadInput(f"{len(seen)} of these prompts were among the controller's training rows (by content); "
                       "choose other rows (--offset) so that the scores are honest")
    tau = stored["tau"] if args.tau is None else args.tau
    n = inputs.num_layers
    allocations = pinned_allocations(stored["candidates"], n)
    run_generate(model, tokenizer, inputs.prompts[:1], full(n), DecodeProtocol(2))  # warm-up: neither timed path pays first-call costs
    deployed = generate_with_controller(model, tokenizer, inputs.prompts, allocations, fitted, tau,
                                        protocol, settings.batch_size)
    start = time.perf_counter()
    baseline = run_generate(model, tokenizer, inputs.prompts, full(n), protocol, max_batch=settings.batch_size)
    full_seconds = time.perf_counter() - start
    texts = [g.text for g in deployed.generations]
    scored = inputs.scored_references()
    scores = sequence_scores(settings.metric, texts, scored)
    full_scores = sequence_scores(settings.metric, [g.text for g in baseline], scored)
    for example_id, choice, text, score in zip(inputs.ids, deployed.choices, texts, scores):
        print(f"[{example_id}] {allocations[choice].spec} ({allocations[choice].cost} layers) "
              f"{settings.metric}={score:.2f}\n  {text}")
    layers = sum(allocations[c].cost for c in deployed.choices) / len(texts)
    tokens = sum(len(g.tokens) for g in deployed.generations)
    full_tokens = sum(len(g.tokens) for g in baseline)
    print(f"\ncontroller (tau {tau:.2f}): mean {layers:.2f} of {n} layers ({100 * layers / n:.1f} %) per sequence; "
          f"mean {settings.metric} {sum(scores) / len(scores):.2f} vs full model {sum(full_scores) / len(full_scores):.2f}")
    print(f"time: controller {deployed.seconds:.1f} s ({tokens / deployed.seconds:.1f} tokens/s) vs full model "
          f"{full_seconds:.1f} s ({full_tokens / full_seconds:.1f} tokens/s): speed ratio {full_seconds / deployed.seconds:.2f}x")
    print(f"decisions: {1e3 * deployed.decide_seconds:.1f} ms in all, {1e6 * deployed.decide_seconds / len(texts):.0f} us "
          f"per sequence, {100 * deployed.decide_seconds / full_seconds:.3f} % of the full model's generation time")
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
