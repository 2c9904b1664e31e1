"""`skiporacle savings` (one task's rows: every static decision timed and scored beside the full model) and
`skiporacle savings-table` (several of those tables in one `savings.json` and its markdown)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from skiporacle.cli.arguments import add_data_args, add_model_args
from skiporacle.cli.run_settings import placement_of, settings_from_args
from skiporacle.data.errors import BadInput
from skiporacle.data.files import refuse_other_settings, write_json_atomic
from skiporacle.data.fingerprint import content_hash
from skiporacle.eval.generate import with_model_eos
from skiporacle.heal.export import EXPORT_METADATA
from skiporacle.heal.variants import HEAL_METADATA, read_heal_metadata, refuse_heal_overlap, variant_allocation
from skiporacle.oracle.inputs import load_inputs, load_named_model
from skiporacle.oracle.savings import Decision, measure, merge_tables, savings_markdown, savings_rows
from skiporacle.search.allocation import Allocation, check_spec, full, parse_spec

ROW_LABELS = ("unseen-rows", "unseen-task")
SETTINGS = "settings.json"


def savings(args: argparse.Namespace) -> int:
    """Measure --decision (and the full model) on the rows into --out/blocks.jsonl, then write savings.json/md."""
    out = Path(args.out)
    if args.block_rows < 1:
        raise BadInput(f"--block-rows must be at least 1, got {args.block_rows}")
    for spec in args.decision:
        if not Path(spec).is_dir():
            check_spec(spec)
    settings = settings_from_args(args)
    fingerprint = json.loads(json.dumps({**asdict(settings), "decisions": args.decision, "twins": args.twins,
                                         "rows": args.rows, "block_rows": args.block_rows}))
    if (out / SETTINGS).exists():
        if not args.resume:
            raise BadInput(f"{str(out)!r} holds a savings run; pass --resume to continue it, or choose another --out")
        refuse_other_settings(out, json.loads((out / SETTINGS).read_text(encoding="utf-8")), fingerprint, list(fingerprint))
    model, tokenizer = load_named_model(settings.model, settings.dtype, placement_of(args).device)
    inputs = load_inputs(settings, model, tokenizer)
    n = inputs.num_layers
    evaluated = ({f"{settings.task}:{i}" for i in inputs.ids}, {content_hash(s) for s in inputs.sources})
    decisions = [Decision("full", full(n), None, n)]
    models = {None: model}
    for spec in args.decision:
        if Path(spec).is_dir():
            folder = Path(spec)
            layers = _folder_layers(folder, settings.model, n, evaluated, settings.task if args.rows == "unseen-task" else None)
            decision = Decision(f"{folder.name} ({len(layers)} layers)", full(len(layers)), str(folder.resolve()),
                                len(layers))
            models[decision.folder] = load_named_model(decision.folder, settings.dtype, placement_of(args).device)[0]
            # The training-free twin: the same layers in the base model, with its weights.
            twins = [Decision(f"base:{folder.name}", Allocation(layers, n, ",".join(map(str, layers))), None,
                              len(layers))] if args.twins else []
        else:
            allocation = parse_spec(spec, n)
            decision, twins = Decision(allocation.spec, allocation, None, allocation.cost), []
        for d in [decision] + twins:
            if d.name in {d.name for d in decisions}:
                raise BadInput(f"--decision {spec!r} names a decision twice")
            decisions.append(d)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SETTINGS, fingerprint)
    protocol = with_model_eos(settings.protocol, model, tokenizer)
    blocks = measure(decisions, models, tokenizer, inputs.ids, inputs.prompts, inputs.scored_references(),
                     settings.metric, protocol, settings.batch_size, args.block_rows, out,
                     progress=lambda k, total: print(f"skiporacle: block {k}/{total} done", flush=True))
    rows = savings_rows(blocks, decisions, n, settings.task, args.rows)
    write_json_atomic(out / "savings.json", {"model": settings.model, "task": settings.task, "rows": args.rows,
                                             "metric": settings.metric, "offset": settings.offset, "table": rows})
    table = savings_markdown(rows, settings.metric)
    (out / "savings.md").write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"skiporacle: {out / 'savings.json'}, {out / 'savings.md'}")
    return 0


def _folder_layers(folder: Path, base_model: str, n: int, evaluated: tuple[set, set],
                   unseen_task: str | None) -> tuple[int, ...]:
    """The base model's layers that a healed variant or an exported folder keeps; a variant of another model, one
    whose heal rows overlap the evaluated rows (by id or content), or one healed on `unseen_task`, is refused."""
    if (folder / HEAL_METADATA).is_file():
        allocation = variant_allocation(folder, n, base_model, on_base=False)
        data = read_heal_metadata(folder)["data"]
        refuse_heal_overlap(folder, data, *evaluated)
        if unseen_task in data["sources"]:
            raise BadInput(f"--rows unseen-task: {str(folder)!r} was healed on {unseen_task}, so {unseen_task} is "
                           f"not an unseen task for it; use --rows unseen-rows")
        return allocation.layers
    if (folder / EXPORT_METADATA).is_file():
        meta = json.loads((folder / EXPORT_METADATA).read_text(encoding="utf-8"))
        if meta["base_model"] != base_model or meta["num_layers"] != n:
            raise BadInput(f"{str(folder)!r} was exported from {meta['base_model']}, not {base_model}")
        return parse_spec(",".join(map(str, meta["layers"])), n).layers
    raise BadInput(f"--decision {str(folder)!r}: a folder without {HEAL_METADATA} or {EXPORT_METADATA}")


def savings_table(args: argparse.Namespace) -> int:
    """Merge savings.json files into --out (json) and --out with .md (markdown)."""
    rows = merge_tables([Path(p) for p in args.tables])
    out = Path(args.out)
    write_json_atomic(out, rows)
    table = savings_markdown(rows, "quality")  # the tables' metrics may differ from task to task
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


def add_savings_parsers(sub) -> None:
    sav = sub.add_parser("savings", help="every static decision timed and scored beside the full model on the same rows",
                         description=(
                             "Generate the rows with the full model and with each --decision (a layer spec, a healed "
                             "variant folder or an exported folder), block by block in one process, each reading the "
                             "prompt with its own layers (the deployable protocol, what export writes); write "
                             "OUT/savings.json and OUT/savings.md: %% of layers, quality and its paired difference from "
                             "the full model with 95 %% intervals, the measured wall-clock ratio, and whether the "
                             "decision is non-inferior (paired interval's low end above -1 point). Resumes by block."))
    add_data_args(sav)
    add_model_args(sav, prompt_under_allocation=False)
    sav.set_defaults(prompt_under_allocation=True)  # every decision reads the prompt with its own layers
    sav.add_argument("--decision", action="append", required=True, metavar="SPEC|FOLDER",
                     help="a decision beside the full model; repeat for several")
    sav.add_argument("--twins", action="store_true",
                     help="beside each folder decision, its training-free twin: the same layers with the base weights")
    sav.add_argument("--rows", required=True, choices=ROW_LABELS,
                     help="what these rows are to the decisions: unseen rows of a healed task, or an unseen task")
    sav.add_argument("--block-rows", type=int, default=32, help="rows timed together per decision (default: 32)")
    sav.add_argument("--out", required=True, help="run folder (blocks.jsonl, settings.json, savings.json, savings.md)")
    sav.add_argument("--resume", action="store_true", help="continue the run in --out at its first unfinished block")
    tab = sub.add_parser("savings-table", help="several savings.json tables in one (e.g. docs/savings.json)",
                         description="Concatenate the rows of savings.json files of one model into --out and --out.md.")
    tab.add_argument("tables", nargs="+", help="savings.json files")
    tab.add_argument("--out", required=True, help="the merged JSON file (its markdown beside it, .md)")
