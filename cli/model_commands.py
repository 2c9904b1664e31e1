"""The subcommands that run the model on a task's rows: generate, oracle, rank (and heal, controller by delegation).

Each takes parsed arguments and returns an exit code; `run_commands.py` holds those that read a finished run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.tasks import check_prompt_options
from skiporacle.eval.device import default_dtype, resolve_device
from skiporacle.oracle.candidates import parse_spaces
from skiporacle.oracle.inputs import load_examples, load_inputs, load_named_model
from skiporacle.oracle.run import run_oracle
from skiporacle.oracle.workers import check_scheduler
from skiporacle.oracle.settings import DEFAULTS, OracleSettings
from skiporacle.search.spaces import parse_budgets


def device_of(args: argparse.Namespace) -> str:
    """The device named by --device (default auto), checked: BadInput for one not usable here."""
    return str(resolve_device(getattr(args, "device", None)))


def _settings(args: argparse.Namespace, spaces: tuple[str, ...] = (), budgets: tuple[int, ...] = (),
              device: str | None = None) -> OracleSettings:
    """The run's settings from the arguments; --dtype defaults to the device's (float32 on the CPU)."""
    for name, value, low in (("--limit", args.limit, 1), ("--offset", args.offset, 0),
                             ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--calibration", getattr(args, "calibration", 0), 0),
                             ("--workers", getattr(args, "workers", 1), 1), ("--batch-size", args.batch_size, 0),
                             ("--threads", getattr(args, "threads", None), 1)):
        if value is not None and value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    if getattr(args, "tolerance", 0.0) < 0:
        raise BadInput(f"--tolerance must be at least 0 (score points below the full model's), got {args.tolerance:g}")
    if args.data and not (args.input_field and args.reference_field):
        raise BadInput("--data needs --input-field and --reference-field")
    check_prompt_options(getattr(args, "instruction", None), getattr(args, "template", None))
    settings = OracleSettings(
        model=args.model, task=args.task if not args.data else "file", data_file=args.data,
        input_field=args.input_field, reference_field=args.reference_field, id_field=args.id_field,
        limit=args.limit, offset=args.offset, spaces=spaces, budgets=budgets, metric=args.metric or "",
        max_new_tokens=args.max_new_tokens or 0, dtype=args.dtype or default_dtype(device or device_of(args)), seed=getattr(args, "seed", 0),
        tolerance=getattr(args, "tolerance", 0.0), calibration=getattr(args, "calibration", 0),
        prompt_under_allocation=args.prompt_under_allocation, batch_size=args.batch_size,
        importance_file=getattr(args, "importance", None), first_token=getattr(args, "first_token", "allocation"),
        instruction=getattr(args, "instruction", None), template=getattr(args, "template", None),
        decoder=getattr(args, "decoder", DEFAULTS.decoder),
        **{k: getattr(args, k) for k in ("search_rule", "search_generate", "search_width", "search_evaluations")
           if hasattr(args, k)},
    )
    task, examples = load_examples(settings, settings.limit, settings.offset)  # the data checked before the model loads
    if len(examples) < settings.limit:
        source = settings.data_file or settings.task
        print(f"skiporacle: --limit {settings.limit}: {source} has {len(examples)} row(s) from --offset "
              f"{settings.offset}; running those {len(examples)}")
    if not settings.metric or not settings.max_new_tokens:  # the task's defaults
        settings = _replace(settings, metric=settings.metric or task.metric,
                            max_new_tokens=settings.max_new_tokens or task.max_new_tokens)
    from skiporacle.eval.metrics import METRICS

    if settings.metric not in METRICS:
        raise BadInput(f"unknown metric {settings.metric!r}; choose from {', '.join(METRICS)}")
    return settings


def _replace(settings: OracleSettings, **changes) -> OracleSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def generate(args: argparse.Namespace) -> int:
    """Greedy outputs under one allocation, each with its score, then the mean."""
    from skiporacle.eval.generate import generate as run_generate
    from skiporacle.eval.metrics import all_corpus_scores, sequence_scores
    from skiporacle.search.allocation import check_spec, parse_spec

    if not args.controller:
        check_spec(args.layers)
    device = device_of(args)
    settings = _settings(args, device=device)
    model, tokenizer = load_named_model(settings.model, settings.dtype, device)
    inputs = load_inputs(settings, model, tokenizer)
    if args.controller:
        from skiporacle.controller.commands import deploy

        return deploy(args, settings, inputs, model, tokenizer)
    allocation = parse_spec(args.layers, inputs.num_layers)
    start = time.perf_counter()
    outputs = run_generate(model, tokenizer, inputs.prompts, allocation, settings.max_new_tokens,
                           settings.prompt_under_allocation, progress=True, max_batch=settings.batch_size,
                           first_token=settings.first_token, decoder=settings.decoder)
    seconds = time.perf_counter() - start
    texts = [g.text for g in outputs]
    scored = inputs.scored_references()
    scores = sequence_scores(settings.metric, texts, scored)
    for example_id, text, score, g in zip(inputs.ids, texts, scores, outputs):
        print(f"[{example_id}] {settings.metric}={score:.2f} ({len(g.tokens)} tokens)\n  {text}")
    tokens = sum(len(g.tokens) for g in outputs)
    print(f"\nallocation {allocation.spec}: {allocation.cost}/{allocation.num_layers} layers "
          f"({100 * allocation.fraction:.1f} %) per generated token; at most {settings.max_new_tokens} new tokens, "
          f"the first predicted by the {'full model' if settings.first_token == 'full' else 'allocation'}")
    print(f"mean {settings.metric} = {sum(scores) / len(scores):.2f} over {len(scores)} sequences; "
          f"{tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tokens/s)")
    if settings.metric.startswith("rouge") or settings.metric in ("bleu", "chrf"):
        corpus = all_corpus_scores(texts, scored)
        print("corpus: " + ", ".join(f"{k} {v:.2f}" for k, v in corpus.items()))
    return 0


def oracle(args: argparse.Namespace) -> int:
    """Run or resume the oracle search into --out."""
    spaces = tuple(parse_spaces(args.space))
    budgets = tuple(parse_budgets(args.budgets))
    device = device_of(args)
    settings = _settings(args, spaces, budgets, device)
    if args.scheduler:
        check_scheduler(args.scheduler)
    out = Path(args.out)
    summary = run_oracle(settings, out, resume=args.resume, workers=args.workers, scheduler=args.scheduler,
                         threads=args.threads, device=device)
    rule, exact, knap = summary["rule"], summary["rule_exact"], summary["knapsack"]
    reach = knap["percent_layers_at_full_quality"]
    print(f"skiporacle: {summary['sequences']} sequences in {out / 'allocations.jsonl'} "
          f"({summary['resumed_sequences']} resumed), summary in {out / 'summary.json'}")
    print(f"full model: mean {summary['metric']} {summary['full_mean_score']:.2f}")
    print(f"rule (score >= full - {settings.tolerance:g}): {rule['mean_percent_layers']:.1f} % of layers"
          f"{_ci(rule.get('mean_percent_layers_ci95'), ' %')}, "
          f"mean {rule['mean_score']:.2f}; exact-output rule: {exact['mean_percent_layers']:.1f} %")
    print("knapsack: full quality at " + (f"{reach:.1f} % of layers" if reach is not None else "no budget")
          + _ci(knap.get("percent_layers_at_full_quality_ci95"), " %"))
    if "search" in summary:
        found = summary["search"]
        print(f"search ({settings.spaces[0]}, {settings.search_rule} rule): paths stop at "
              f"{found['mean_percent_layers_at_stop']:.1f} % of layers{_ci(found['mean_percent_layers_at_stop_ci95'], ' %')}; "
              f"per sequence {found['mean_evaluations_per_sequence']:.1f} proposals judged, "
              f"{found['mean_generated_per_sequence']:.1f} generated, {found['mean_fill_generations_per_sequence']:.1f} "
              f"fill generations ({found['generations_saved_percent']:.0f} % of proposals needed no generation); "
              f"{found['near_ties']} near-ties among verified proposals")
    if "training_free" in summary:
        free = summary["training_free"]
        free_reach = free["knapsack_percent_layers_at_full_quality"]
        print(f"without healed candidates: rule {free['rule']['mean_percent_layers']:.1f} % of layers; knapsack "
              + (f"{free_reach:.1f} %" if free_reach is not None else "no budget"))
    return 0


def _ci(interval, unit: str) -> str:
    """" (95 % CI low-high unit)" after a figure, or nothing for a summary without that interval."""
    return f" (95 % CI {interval[0]:.1f}-{interval[1]:.1f}{unit})" if interval else ""


def controller(args: argparse.Namespace) -> int:
    """Train and evaluate a controller on an oracle run (see skiporacle.controller)."""
    from skiporacle.controller.commands import controller as run_controller

    return run_controller(args)


def rank(args: argparse.Namespace) -> int:
    """Rank the layers by importance on fixed rows; write the ranking for `oracle --importance`."""
    from skiporacle.eval.ranking import cached_drop_order
    from skiporacle.oracle.records import check_writable

    device = device_of(args)
    settings = _settings(args, device=device)
    model, tokenizer = load_named_model(settings.model, settings.dtype, device)
    inputs = load_inputs(_replace(settings, calibration=0), model, tokenizer)
    target = Path(args.out)
    check_writable(target.parent)
    target.unlink(missing_ok=True)  # measure afresh: the rows may be the same ids of another model or prompt
    order = cached_drop_order(target, model, tokenizer, settings.model, inputs.ids, inputs.prompts,
                              settings.max_new_tokens, progress=True)
    print(f"skiporacle: drop order (least damaging first) {','.join(map(str, order))}; wrote {target}")
    return 0


def heal(args: argparse.Namespace) -> int:
    """Distil one allocation into a healed variant folder (see skiporacle.heal.command)."""
    from skiporacle.heal.command import heal_command

    return heal_command(args)
