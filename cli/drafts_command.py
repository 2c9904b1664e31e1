"""`skiporacle drafts`: acceptance labels of several self-speculative drafts per sequence, then whether a
per-prompt choice of draft beats the best static draft (`oracle/draft_labels.py`, `controller/draft_choice.py`).

OUT/drafts.jsonl holds one line per labelled sequence (resumable like `generate --out`); OUT/draft_choice.json
the figures; the table is printed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from skiporacle.cli.arguments import add_data_args, add_model_args
from skiporacle.cli.draft_command import RANKING, check_draft, draft_allocation
from skiporacle.cli.output_stream import open_stream
from skiporacle.cli.run_settings import placement_of, settings_from_args
from skiporacle.controller.draft_choice import draft_choice
from skiporacle.data.errors import BadInput
from skiporacle.data.files import read_appended, write_json_atomic
from skiporacle.eval.features import scalar_columns
from skiporacle.oracle.bootstrap import RESAMPLES
from skiporacle.oracle.draft_labels import DraftTable, draft_line, label_drafts
from skiporacle.oracle.inputs import load_inputs, load_named_model

LABELS, CHOICE = "drafts.jsonl", "draft_choice.json"


def add_drafts_parser(sub) -> None:
    """`skiporacle drafts`."""
    p = sub.add_parser("drafts", help="acceptance labels of self-speculative drafts, and a per-prompt draft choice",
                       description=(
                           "Per sequence, decode the full model's greedy output speculatively with every --draft (each "
                           "drafts --draft-tokens tokens, the full model checks them), all from one prefill, and record "
                           "each draft's checks, drafted and accepted tokens and its measured seconds. Then judge by "
                           "k-fold cross-validation whether a controller that picks each prompt's draft from its "
                           "prefill features runs faster than the best single draft, beside the in-sample oracle, "
                           "with 95 % bootstrap intervals over sequences. Writes OUT/drafts.jsonl (resumable) and "
                           "OUT/draft_choice.json."))
    add_data_args(p)
    add_model_args(p, prompt_under_allocation=False)
    g = p.add_argument_group("drafts")
    g.add_argument("--draft", action="append", required=True, metavar="SPEC|VARIANT",
                   help=("a draft (repeat for several): importance:N (N layers kept in --importance's order), "
                         "uniform:N, exit:L, a layer list like 0-10,12,15-29, or a healed variant folder"))
    g.add_argument("--draft-tokens", type=int, default=2, metavar="K", help="tokens drafted per check (default: 2)")
    g.add_argument("--importance", default=RANKING, metavar="FILE",
                   help=f"the layer ranking for importance:N drafts (default: {RANKING}, which `make ranking` writes)")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default: 0)")
    g.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default: {RESAMPLES})")
    g.add_argument("--out", required=True, help="output folder, e.g. runs/drafts-xsum")
    g.add_argument("--resume", action="store_true", help="continue a killed run in --out; no row is labelled twice")
    p.set_defaults(prompt_under_allocation=False)


def _check_args(args: argparse.Namespace) -> None:
    for text in args.draft:
        check_draft(text)
    if len(set(args.draft)) < len(args.draft):
        raise BadInput("--draft: a draft is named twice")
    if args.draft_tokens < 1:
        raise BadInput(f"--draft-tokens must be at least 1, got {args.draft_tokens}")
    if args.folds < 2:
        raise BadInput(f"--folds must be at least 2, got {args.folds}")
    if args.limit < 2 * args.folds:
        raise BadInput(f"--limit {args.limit} is too few rows for {args.folds}-fold cross-validation "
                       f"(at least {2 * args.folds})")


def drafts(args: argparse.Namespace) -> int:
    """Label every row (resuming OUT), then write and print the draft choice's figures."""
    _check_args(args)
    settings = settings_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} is a file; name a folder")
    fingerprint = json.loads(json.dumps({**asdict(settings), "drafts": args.draft, "draft_tokens": args.draft_tokens}))
    model, tokenizer = load_named_model(settings.model, settings.dtype, placement_of(args).device)
    inputs = load_inputs(settings, model, tokenizer)
    if len(set(inputs.ids)) < len(inputs.ids):
        raise BadInput("the rows' ids repeat, so a resumed labels file could not tell them apart; give --id-field")
    allocations = [draft_allocation(t, inputs.num_layers, settings.model, args.importance) for t in args.draft]
    stream = open_stream(out / LABELS, fingerprint, args.resume)  # after every check: bad input writes nothing
    wanted = {i for i, e in enumerate(inputs.ids) if e not in stream.done}
    done = len(stream.done)
    for batch in label_drafts(model, tokenizer, inputs.prompts, allocations, args.draft_tokens, settings.protocol,
                              settings.batch_size, wanted):
        stream.write([draft_line(inputs.ids[row.index], row) for row in batch])
        done += len(batch)
        print(f"skiporacle: {done}/{len(inputs.ids)} sequences labelled", flush=True)
    table = DraftTable.from_lines(read_appended(stream.path))
    figures = draft_choice(table, [a.spec for a in allocations], [a.cost for a in allocations],
                           scalar_columns(inputs.num_layers), args.folds, args.seed, args.resamples)
    write_json_atomic(out / CHOICE, {"model": settings.model, "task": settings.task, "offset": settings.offset,
                                     "draft_tokens": args.draft_tokens, **figures})
    print(choice_table(figures), end="")
    print(f"skiporacle: {out / CHOICE}")
    return 0


def _ci(pair) -> str:
    return "" if pair is None else f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def choice_table(figures: dict) -> str:
    """The figures of `draft_choice` as a fixed-width table (speed: plain decoding's time over the decision's)."""
    lines = [f"{figures['rows']} sequences; speed = the full model's plain decoding time / the decision's "
             "(decoding only, prefill excluded); outputs equal the full model's except at near-ties", "",
             f"{'decision':42} {'speed [95 % CI]':>24} {'accepted':>9} {'tok/check':>9}  {'vs best static [95 % CI]':>30}"
             f" {'kept':>6}"]
    rows = [(f"draft {d['draft']} ({d['layers']} layers)", d) for d in figures["drafts"]]
    rows += list(figures["decisions"].items())
    for name, d in rows:
        kept = "" if d["kept"] is None else f"{100 * d['kept']:.0f} %"
        diff = d["speed_vs_best_static"]
        lines.append(f"{name:42} {d['speed']:>7.3f}{_ci(d['speed_ci95']):>17} {100 * d['acceptance']:>8.1f}% "
                     f"{d['tokens_per_check']:>9.2f}  {diff['estimate']:>+8.3f}{_ci(diff['ci95']):>22} {kept:>6}")
    differing = sum(d["outputs_differing"] for d in figures["drafts"])
    lines.append(f"\noutputs differing from the full model's plain decoding: {differing} "
                 f"(near-ties in the checks: {sum(d['near_ties'] for d in figures['drafts'])})")
    return "\n".join(lines) + "\n"
