"""The subcommands that run the model on a task's rows: oracle and rank (generate has its own module).

Each takes parsed arguments and returns an exit code; `run_commands.py` holds those that read a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from skiporacle.cli.run_settings import placement_of, replace_settings, settings_from_args
from skiporacle.eval.ranking import cached_drop_order
from skiporacle.oracle.candidate_list import parse_spaces
from skiporacle.oracle.inputs import load_inputs, load_named_model
from skiporacle.oracle.records import check_writable
from skiporacle.oracle.oracle_run import run_oracle
from skiporacle.oracle.workers import check_scheduler
from skiporacle.search.spaces import parse_budgets


def oracle(args: argparse.Namespace) -> int:
    """Run or resume the oracle search into --out."""
    spaces = tuple(parse_spaces(args.space))
    budgets = tuple(parse_budgets(args.budgets))
    device = placement_of(args).device
    settings = settings_from_args(args, spaces, budgets)
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


def rank(args: argparse.Namespace) -> int:
    """Rank the layers by importance on fixed rows; write the ranking for `oracle --importance`."""
    device = placement_of(args).device
    settings = settings_from_args(args)
    model, tokenizer = load_named_model(settings.model, settings.dtype, device)
    inputs = load_inputs(replace_settings(settings, calibration=0), model, tokenizer)
    target = Path(args.out)
    check_writable(target.parent)
    target.unlink(missing_ok=True)  # measure afresh: the rows may be the same ids of another model or prompt
    order = cached_drop_order(target, model, tokenizer, settings.model, inputs.ids, inputs.prompts,
                              settings.max_new_tokens, progress=True)
    print(f"skiporacle: drop order (least damaging first) {','.join(map(str, order))}; wrote {target}")
    return 0
