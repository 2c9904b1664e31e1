"""The subcommands behind `skiporacle`: each takes parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.tasks import check_prompt_options
from skiporacle.oracle.records import load_run
from skiporacle.oracle.run import OracleSettings, run_oracle
from skiporacle.oracle.setup import load_examples, load_inputs, load_model_cached, prompt_budget
from skiporacle.search.spaces import parse_budgets, parse_spaces


def _settings(args: argparse.Namespace, spaces: tuple[str, ...] = (), budgets: tuple[int, ...] = ()) -> OracleSettings:
    for name, value, low in (("--limit", args.limit, 1), ("--offset", args.offset, 0),
                             ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--calibration", getattr(args, "calibration", 0), 0),
                             ("--workers", getattr(args, "workers", 1), 1), ("--batch-size", args.batch_size, 0),
                             ("--threads", getattr(args, "threads", None), 1)):
        if value is not None and value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    if args.data and not (args.input_field and args.reference_field):
        raise BadInput("--data needs --input-field and --reference-field")
    check_prompt_options(getattr(args, "instruction", None), getattr(args, "template", None))
    settings = OracleSettings(
        model=args.model, task=args.task if not args.data else "file", data_file=args.data,
        input_field=args.input_field, reference_field=args.reference_field, id_field=args.id_field,
        limit=args.limit, offset=args.offset, spaces=spaces, budgets=budgets, metric=args.metric or "",
        max_new_tokens=args.max_new_tokens or 0, dtype=args.dtype, seed=getattr(args, "seed", 0),
        tolerance=getattr(args, "tolerance", 0.0), calibration=getattr(args, "calibration", 0),
        prompt_under_allocation=args.prompt_under_allocation, batch_size=args.batch_size,
        importance_file=getattr(args, "importance", None), first_token=getattr(args, "first_token", "allocation"),
        instruction=getattr(args, "instruction", None), template=getattr(args, "template", None),
    )
    if not settings.metric or not settings.max_new_tokens:  # the task's defaults
        task, _ = load_examples(settings, 1, 0)
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
    from skiporacle.search.allocation import parse_spec

    settings = _settings(args)
    inputs = load_inputs(settings)
    if args.controller:
        from skiporacle.controller.commands import deploy

        return deploy(args, settings, inputs)
    allocation = parse_spec(args.layers, inputs.num_layers)
    model, tokenizer = load_model_cached(settings.model, settings.dtype)
    start = time.perf_counter()
    outputs = run_generate(model, tokenizer, inputs.prompts, allocation, settings.max_new_tokens,
                           settings.prompt_under_allocation, progress=True, max_batch=settings.batch_size,
                           first_token=settings.first_token)
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
    budgets = tuple(parse_budgets(args.budgets, 10**6))
    if args.scheduler and not args.scheduler.startswith("tcp://"):
        raise BadInput(f"--scheduler {args.scheduler!r}: expected tcp://HOST:PORT")
    settings = _settings(args, spaces, budgets)
    out = Path(args.out)
    summary = run_oracle(settings, out, resume=args.resume, workers=args.workers, scheduler=args.scheduler,
                         threads=args.threads)
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
    from skiporacle.oracle.records import check_writable
    from skiporacle.oracle.ranking import cached_drop_order

    settings = _settings(args)
    inputs = load_inputs(_replace(settings, calibration=0))
    target = Path(args.out)
    check_writable(target.parent)
    target.unlink(missing_ok=True)  # measure afresh: the rows may be the same ids of another model or prompt
    order = cached_drop_order(target, settings.model, settings.dtype, inputs.ids, inputs.prompts,
                              settings.max_new_tokens, progress=True)
    print(f"skiporacle: drop order (least damaging first) {','.join(map(str, order))}; wrote {target}")
    return 0


def dump(args: argparse.Namespace) -> int:
    """Export one row per sequence x candidate as CSV or Parquet."""
    import pyarrow as pa

    out = Path(args.run)
    _, records, _ = load_run(out)
    if not records:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    rows = []
    for r in records:
        base = {"id": r["id"], "full_score": r["full"]["score"], "full_output": r["full"]["output"],
                "choice_tolerance": r["choice"]["tolerance"], "choice_exact": r["choice"]["exact"]}
        for c in r["candidates"] + [{**r["full"], "spec": "all", "fraction": 1.0, "identical": True}]:
            rows.append({**base, "spec": c["spec"], "cost": c["cost"], "fraction": c["fraction"],
                         "score": c["score"], "tokens": c["tokens"], "identical": c["identical"],
                         "output": c["output"]})
    table = pa.Table.from_pylist(rows)
    target = Path(args.output) if args.output else out / f"allocations.{args.format}"
    if not target.parent.is_dir():
        raise BadInput(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    try:
        if args.format == "csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, target)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, target)
    except OSError as err:
        raise BadInput(f"cannot write {str(target)!r} ({err.strerror or err})") from None
    print(f"skiporacle: {len(rows)} rows ({len(records)} sequences) written to {target}")
    return 0


def curves(args: argparse.Namespace) -> int:
    """Write curves.csv, curves.png and similarity.png for a run."""
    from skiporacle.oracle.curves import similarity, write_curves, write_similarity

    out = Path(args.run)
    settings, records, _ = load_run(out)
    if not records:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    if args.resamples < 1:
        raise BadInput(f"--resamples must be at least 1, got {args.resamples}")
    csv_path, png_path = write_curves(out, records, settings, args.resamples)
    print(f"skiporacle: wrote {csv_path} and {png_path}")
    if args.similarity > 0:
        model, tokenizer = load_model_cached(settings["model"], settings["dtype"])
        n_layers = records[0]["full"]["cost"]
        budgets = [b for b in settings["budgets"] if b < n_layers]
        sims = similarity(model, tokenizer, records[: args.similarity], budgets)
        path = write_similarity(out, sims, n_layers, f"{settings['model']} on {settings['task']}")
        print(f"skiporacle: wrote {path}")
    return 0


def report(args: argparse.Namespace) -> int:
    """Write RUN/report.html, a self-contained page of the run (see skiporacle.oracle.report)."""
    from skiporacle.oracle.report import report_command

    return report_command(args)


def heal(args: argparse.Namespace) -> int:
    """Distil one allocation into a healed variant folder (resumable)."""
    from skiporacle.data.prompts import fit_prompt
    from skiporacle.eval.model import EMBEDDED_MODELS, num_layers
    from skiporacle.heal.distil import HealSettings, heal as run_heal, refuse_existing
    from skiporacle.heal.texts import example_id, heal_examples, split_holdout
    from skiporacle.oracle.ranking import cached_drop_order
    from skiporacle.search.allocation import parse_spec
    from skiporacle.search.spaces import importance_space

    for name, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 2),
                             ("--examples", args.examples, 1), ("--holdout", args.holdout, 1), ("--lora", args.lora, 0),
                             ("--calibration", args.calibration, 1), ("--checkpoint-every", args.checkpoint_every, 1)):
        if value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    learning_rate = args.lr if args.lr is not None else (3e-3 if args.lora else 3e-4)
    if not learning_rate > 0:
        raise BadInput(f"--lr must be positive, got {learning_rate}")
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    if not sources:
        raise BadInput("--sources: no task given")
    out = Path(args.out)
    refuse_existing(out)  # before the model loads and the layers are ranked
    model_name = args.model if args.model in EMBEDDED_MODELS else str(Path(args.model).resolve())
    model, tokenizer = load_model_cached(model_name, "float32")
    n = num_layers(model)
    calibration: tuple[str, ...] = ()
    kind, _, budget = args.layers.partition(":")
    if kind == "importance":
        if not budget or "," in budget:
            raise BadInput(f"--layers {args.layers!r}: expected importance:N with one budget N")
        (keep,) = parse_budgets(budget, n)
        # Rank on the first training rows: held-out rows then measure KL on rows that chose nothing.
        _, training = split_holdout(heal_examples(sources, args.examples), args.holdout)
        examples = training[: args.calibration]
        if not examples:
            raise BadInput(f"--layers {args.layers!r}: no training rows to rank the layers on "
                           f"(--examples {args.examples} per task, --holdout {args.holdout})")
        max_new_tokens = 48  # the oracle's default: rank layers on continuations as long as it decodes
        _, budget = prompt_budget(model, tokenizer, max_new_tokens)
        prompts = [fit_prompt(task, e, tokenizer, budget)[0] for task, e in examples]
        calibration = tuple(example_id(task, e) for task, e in examples)
        out.parent.mkdir(parents=True, exist_ok=True)
        order = cached_drop_order(out.parent / "importance.json", model_name, "float32", list(calibration), prompts,
                                  max_new_tokens, progress=True)
        allocation = importance_space([keep], order)[0]
    else:
        allocation = parse_spec(args.layers, n)
    if allocation.is_full:
        raise BadInput(f"--layers {args.layers!r} keeps every layer: nothing to heal")
    settings = HealSettings(
        model=model_name, layers=allocation.layers, spec=allocation.spec, steps=args.steps, learning_rate=learning_rate,
        batch_size=args.batch_size, seq_len=args.seq_len, bf16=args.bf16, lora_rank=args.lora, seed=args.seed,
        sources=sources, examples=args.examples, holdout=args.holdout, checkpoint_every=args.checkpoint_every,
    )
    meta = run_heal(settings, model, tokenizer, out, resume=args.resume, calibration_ids=calibration)
    print(f"skiporacle: healed {allocation.spec} ({allocation.cost}/{n} layers: {','.join(map(str, allocation.layers))}) "
          f"in {meta['train_seconds']:.0f} s of training; held-out KL {meta['kl']['initial']:.4f} -> "
          f"{meta['kl']['final']:.4f} nats/token; saved to {out}")
    return 0


def plausibility(args: argparse.Namespace) -> int:
    """The full model's NLL of every output of a run (RUN/plausibility.json), then the summary again."""
    from skiporacle.oracle.plausibility import write_plausibility
    from skiporacle.oracle.summary import resummarize

    out = Path(args.run)
    write_plausibility(out, args.margin, load_model_cached)
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
    import math

    from skiporacle.eval.teacher import nll, teacher_forced_passes
    from skiporacle.oracle.records import write_json_atomic
    from skiporacle.search.allocation import Allocation

    out = Path(args.run)
    settings, records, _ = load_run(out)
    if not records or "candidates" not in settings:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    n = records[0]["full"]["cost"]
    allocations = [Allocation(tuple(c[1]), n, c[0], c[2] if len(c) > 2 else "") for c in settings["candidates"]]
    model, tokenizer = load_model_cached(settings["model"], settings["dtype"])
    targets = [tokenizer(r["references"][0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
               for r in records]
    start = time.perf_counter()
    nlls = teacher_forced_passes(model, tokenizer, [r["prompt"] for r in records], targets, allocations, nll,
                                 first_token=settings.get("first_token", "allocation"))
    tokens = sum(map(len, targets))
    table = [{"spec": a.spec, "cost": a.cost, "perplexity": math.exp(sum(row[k] for row in nlls) / tokens)}
             for k, a in enumerate(allocations)]
    write_json_atomic(out / "perplexity.json", {"sequences": len(records), "reference_tokens": tokens,
                                                "seconds": time.perf_counter() - start, "candidates": table})
    for row in table:
        print(f"{row['spec']:>24}  {row['cost']:>3} layers  perplexity {row['perplexity']:10.2f}")
    print(f"skiporacle: {tokens} reference tokens of {len(records)} sequences; wrote {out / 'perplexity.json'}")
    return 0
