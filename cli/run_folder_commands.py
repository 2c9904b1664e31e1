"""The subcommands that read a finished run folder: dump, curves, report, compare, plausibility, perplexity.

Each takes parsed arguments and returns an exit code.  Only plausibility, perplexity and `curves --similarity`
run the model.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from skiporacle.cli.run_settings import placement_of
from skiporacle.eval.decode_protocol import protocol_of
from skiporacle.data.errors import BadInput
from skiporacle.data.files import write_json_atomic
from skiporacle.eval.similarity import similarity
from skiporacle.eval.teacher_forcing import nll, teacher_forced_passes
from skiporacle.oracle.candidate_list import pinned_allocations
from skiporacle.oracle.compare import compare_runs
from skiporacle.oracle.curves import write_curves, write_similarity
from skiporacle.oracle.inputs import load_named_model
from skiporacle.oracle.plausibility_file import write_plausibility
from skiporacle.oracle.records import load_run
from skiporacle.oracle.report import report_command
from skiporacle.oracle.schema import SequenceRecord, dump_rows
from skiporacle.oracle.summary import resummarize


def _finished(out: Path) -> tuple[dict, list[SequenceRecord]]:
    """(settings, records) of the run in `out`; BadInput if it holds no finished sequence yet."""
    settings, records, _ = load_run(out)
    if not records:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    return settings, records


def dump(args: argparse.Namespace) -> int:
    """Export one row per sequence x candidate as CSV or Parquet."""
    out = Path(args.run)
    _, records = _finished(out)
    rows = dump_rows(records)
    table = pa.Table.from_pylist(rows)
    target = Path(args.output) if args.output else out / f"allocations.{args.format}"
    if not target.parent.is_dir():
        raise BadInput(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    try:
        if args.format == "csv":

            pcsv.write_csv(table, target)
        else:

            pq.write_table(table, target)
    except OSError as err:
        raise BadInput(f"cannot write {str(target)!r} ({err.strerror or err})") from None
    print(f"skiporacle: {len(rows)} rows ({len(records)} sequences) written to {target}")
    return 0


def curves(args: argparse.Namespace) -> int:
    """Write curves.csv, curves.png and similarity.png for a run."""
    out = Path(args.run)
    settings, records = _finished(out)
    if args.resamples < 1:
        raise BadInput(f"--resamples must be at least 1, got {args.resamples}")
    csv_path, png_path = write_curves(out, records, settings, args.resamples)
    print(f"skiporacle: wrote {csv_path} and {png_path}")
    if args.similarity > 0:

        model, tokenizer = load_named_model(settings["model"], settings["dtype"], placement_of(args).device)
        n_layers = records[0].full.cost
        budgets = [b for b in settings["budgets"] if b < n_layers]
        kept = records[: args.similarity]
        sims = similarity(model, tokenizer, [r.prompt for r in kept], [r.full.token_ids for r in kept], budgets)
        path = write_similarity(out, sims, n_layers, f"{settings['model']} on {settings['task']}")
        print(f"skiporacle: wrote {path}")
    return 0


def report(args: argparse.Namespace) -> int:
    """Write RUN/report.html, a self-contained page of the run (see skiporacle.oracle.report)."""
    return report_command(args)


def plausibility(args: argparse.Namespace) -> int:
    """The full model's NLL of every output of a run (RUN/plausibility.json), then the summary again."""
    out = Path(args.run)
    write_plausibility(out, args.margin, partial(load_named_model, device=placement_of(args).device))
    guard = resummarize(out).get("guarded")  # the guard's own rule decides what counts as plausible
    if guard is None:
        print(f"skiporacle: wrote {out / 'plausibility.json'}; summary.json has no guarded block (see guarded_skipped)")
        return 0
    print(f"skiporacle: {guard['plausible_percent']:.1f} % of candidate outputs are plausible (NLL <= full + "
          f"{args.margin:g} nats/token, or identical to the full output); the guard removes "
          f"{guard['rule_choices_removed']} rule choices; wrote {out / 'plausibility.json'} and updated summary.json")
    return 0


def perplexity(args: argparse.Namespace) -> int:
    """Reference perplexity of a run's sequences under each of its candidates; writes RUN/perplexity.json."""
    out = Path(args.run)
    settings, records = _finished(out)
    if "candidates" not in settings:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    n = records[0].full.cost
    allocations = pinned_allocations(settings["candidates"], n)
    model, tokenizer = load_named_model(settings["model"], settings["dtype"], placement_of(args).device)
    targets = [tokenizer(r.references[0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
               for r in records]
    start = time.perf_counter()
    nlls = teacher_forced_passes(model, tokenizer, [r.prompt for r in records], targets, allocations, nll,
                                 first_token=protocol_of(settings).first_token)
    tokens = sum(map(len, targets))
    table = [{"spec": a.spec, "cost": a.cost, "perplexity": math.exp(sum(row[k] for row in nlls) / tokens)}
             for k, a in enumerate(allocations)]
    write_json_atomic(out / "perplexity.json", {"sequences": len(records), "reference_tokens": tokens,
                                                "seconds": time.perf_counter() - start, "candidates": table})
    for row in table:
        print(f"{row['spec']:>24}  {row['cost']:>3} layers  perplexity {row['perplexity']:10.2f}")
    print(f"skiporacle: {tokens} reference tokens of {len(records)} sequences; wrote {out / 'perplexity.json'}")
    return 0


def compare(args: argparse.Namespace) -> int:
    """Paired comparison of two runs of the same sequences; writes RUN/compare-NAME.json."""
    run, against = Path(args.run), Path(args.against)
    result = compare_runs(run, against)
    path = run / f"compare-{against.resolve().name}.json"
    write_json_atomic(path, result)
    print(f"skiporacle: {result['sequences']} sequences; {run} minus {against} (95 % paired intervals); "
          f"full outputs differ on {result['full_outputs_differ']}")
    for key, name in (("rule", "rule"), ("exact", "exact-output rule"), ("knapsack", "knapsack at full quality")):
        r = result[key]
        first, second = (f"{v:.1f} %" if v is not None else "never" for v in (r["first"], r["second"]))
        diff = "n/a" if r["difference"] is None else f"{r['difference']:+.1f}"
        print(f"{name:>26}: {first} vs {second} of layers, difference {diff} "
              f"[{r['difference_ci95'][0]:+.1f}, {r['difference_ci95'][1]:+.1f}] points")
    full = result["full_mean_score"]
    print(f"{'full model mean score':>26}: difference {full['difference']:+.2f} "
          f"[{full['difference_ci95'][0]:+.2f}, {full['difference_ci95'][1]:+.2f}]; wrote {path}")
    return 0
