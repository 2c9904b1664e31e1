"""`skiporacle generate`: greedy outputs under one decision (an allocation, a healed variant folder as --model,
or a controller), printed or streamed to a JSON-lines file that a killed run resumes.

The stream (`--out FILE.jsonl`) is `cli/output_stream.py`'s.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from skiporacle.cli.draft_command import check_draft_args, generate_with_draft
from skiporacle.cli.output_stream import OutputStream, open_stream, stream_line
from skiporacle.cli.run_settings import placement_of, settings_from_args
from skiporacle.controller.controller_run import load_controller
from skiporacle.controller.deploy import generate_with_controller
from skiporacle.data.fingerprint import content_hash
from skiporacle.eval.decode_protocol import DecodeProtocol, protocol_of
from skiporacle.data.errors import BadInput
from skiporacle.data.files import read_appended
from skiporacle.eval.generate import Generation, generate as run_generate, generate_in_batches
from skiporacle.eval.metrics import all_corpus_scores, sequence_scores
from skiporacle.eval.mixed_decode import cached_step_cost
from skiporacle.oracle.candidate_list import pinned_allocations
from skiporacle.oracle.inputs import load_inputs, load_named_model
from skiporacle.search.allocation import check_spec, full, parse_spec


def generate(args: argparse.Namespace) -> int:
    """Greedy outputs under one allocation (or a controller's per-sequence choice), each with its score, then the
    mean; with --out, streamed to a JSON-lines file instead of printed."""
    if not args.controller:
        check_spec(args.layers)
    if args.draft:
        check_draft_args(args)
    if args.tau is not None and not (args.controller and 0 <= args.tau <= 1):
        raise BadInput(f"--tau is a probability threshold in [0, 1] for --controller, got {args.tau:g}"
                       + ("" if args.controller else " without --controller"))
    if args.plan_window_mb < 0:
        raise BadInput(f"--plan-window-mb is the prompt-cache memory held for regrouping, in MB (0: none), "
                       f"got {args.plan_window_mb}")
    device = placement_of(args).device
    settings = settings_from_args(args)
    controller = load_controller(Path(args.controller)) if args.controller else None
    if controller is not None and controller[0]["model"] != settings.model:
        raise BadInput(f"controller {args.controller!r} was trained on model {controller[0]['model']!r}, "
                       f"not {settings.model!r}")
    decision = ({"controller": str(Path(args.controller).resolve()), "tau": args.tau, "mixed_path": args.mixed_path,
                 "plan_window_mb": args.plan_window_mb}
                if args.controller else {"draft": args.draft, "draft_tokens": args.draft_tokens} if args.draft
                else {"layers": args.layers})
    fingerprint = json.loads(json.dumps({**asdict(settings), **decision}))
    stream = open_stream(Path(args.out), fingerprint, args.resume) if args.out else None
    model, tokenizer = load_named_model(settings.model, settings.dtype, device)
    inputs = load_inputs(settings, model, tokenizer)
    if stream is not None and len(set(inputs.ids)) < len(inputs.ids):
        raise BadInput("--out: the rows' ids repeat, so a resumed stream could not tell them apart; give --id-field")
    if controller is not None:
        return deploy(args, settings, inputs, model, tokenizer, stream, controller)
    if args.draft:
        return generate_with_draft(args, settings, inputs, model, tokenizer, stream)
    allocation = parse_spec(args.layers, inputs.num_layers)
    wanted = None if stream is None else {i for i, e in enumerate(inputs.ids) if e not in stream.done}
    scored = inputs.scored_references()
    texts, scores, tokens = [], [], 0
    start = time.perf_counter()
    for done in generate_in_batches(model, tokenizer, inputs.prompts, [allocation], settings.protocol,
                                    progress=True, max_batch=settings.batch_size, wanted=wanted):
        batch = [(i, generations[0]) for i, generations, _ in done]
        batch_scores = sequence_scores(settings.metric, [g.text for _, g in batch], [scored[i] for i, _ in batch])
        tokens += sum(len(g.tokens) for _, g in batch)
        if stream is not None:
            stream.write([stream_line(inputs.ids[i], g, allocation, s) for (i, g), s in zip(batch, batch_scores)])
            continue
        for (i, g), score in zip(batch, batch_scores):
            print(f"[{inputs.ids[i]}] {settings.metric}={score:.2f} ({len(g.tokens)} tokens)\n  {g.text}")
            texts.append(g.text)
            scores.append(score)
    seconds = time.perf_counter() - start
    print(f"\nallocation {allocation.spec}: {allocation.cost}/{allocation.num_layers} layers "
          f"({100 * allocation.fraction:.1f} %) per generated token; at most {settings.max_new_tokens} new tokens, "
          f"the first predicted by the {'full model' if settings.first_token == 'full' else 'allocation'}")
    if stream is not None:
        rows = read_appended(stream.path)
        scores = [r["score"] for r in rows]
        print(stream.summary(rows))
    print(f"mean {settings.metric} = {sum(scores) / max(len(scores), 1):.2f} over {len(scores)} sequences; "
          f"{tokens} tokens generated in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s)")
    if texts and (settings.metric.startswith("rouge") or settings.metric in ("bleu", "chrf")):
        corpus = all_corpus_scores(texts, scored)
        print("corpus: " + ", ".join(f"{k} {v:.2f}" for k, v in corpus.items()))
    return 0


def deploy(args: argparse.Namespace, settings, inputs, model, tokenizer, stream: OutputStream | None,
           controller: tuple[dict, object]) -> int:
    """`generate --controller DIR`: decide per sequence at prefill and generate with real skipping; printed and
    timed against the full model on the same sequences in this process, or (--out) streamed without the
    full model's run.  `controller`: the (settings, fitted) of `controller_run.load_controller`."""
    stored, fitted = controller
    if stored["num_layers"] != inputs.num_layers:
        raise BadInput(f"controller {args.controller!r} is for a model of {stored['num_layers']} layers; "
                       f"{settings.model!r} has {inputs.num_layers}")
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
    scored = inputs.scored_references()
    run_generate(model, tokenizer, inputs.prompts[:1], full(n), DecodeProtocol(2))  # warm-up: neither timed path pays first-call costs
    mixed = {"path": args.mixed_path, "cost": cached_step_cost(model) if args.mixed_path == "auto" else None,
             "window_bytes": args.plan_window_mb * 2**20}
    if stream is not None:
        def write(batch: list[tuple[int, Generation, int]]) -> None:
            scores = sequence_scores(settings.metric, [g.text for _, g, _ in batch], [scored[i] for i, _, _ in batch])
            stream.write([stream_line(inputs.ids[i], g, allocations[c], s) for (i, g, c), s in zip(batch, scores)])

        wanted = {i for i, e in enumerate(inputs.ids) if e not in stream.done}
        deployed = generate_with_controller(model, tokenizer, inputs.prompts, allocations, fitted, tau, protocol,
                                            settings.batch_size, wanted, write, **mixed)
        rows = read_appended(stream.path)
        layers = sum(r["layers"] for r in rows) / max(len(rows), 1)
        print(stream.summary(rows, deployed.seconds))
        print(f"controller (tau {tau:.2f}): mean {layers:.2f} of {n} layers ({100 * layers / n:.1f} %) per sequence; "
              f"mean {settings.metric} {sum(r['score'] for r in rows) / max(len(rows), 1):.2f}")
        return 0
    deployed = generate_with_controller(model, tokenizer, inputs.prompts, allocations, fitted, tau,
                                        protocol, settings.batch_size, **mixed)
    start = time.perf_counter()
    baseline = run_generate(model, tokenizer, inputs.prompts, full(n), protocol, max_batch=settings.batch_size)
    full_seconds = time.perf_counter() - start
    texts = [g.text for g in deployed.generations]
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
    print(f"{deployed.batches} prefill batches ({deployed.prefill_seconds:.1f} s); decode batches: "
          + ", ".join(f"{k} by {p}" for p, k in sorted(deployed.paths.items())))
    print(f"decisions: {1e3 * deployed.decide_seconds:.1f} ms in all, {1e6 * deployed.decide_seconds / len(texts):.0f} us "
          f"per sequence, {100 * deployed.decide_seconds / full_seconds:.3f} % of the full model's generation time")
    return 0
