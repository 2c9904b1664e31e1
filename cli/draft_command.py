"""`skiporacle generate --draft SPEC|VARIANT --draft-tokens K`: the full model's greedy outputs, drafted by an
allocation of the model's own layers (importance:N in the order of --importance's ranking) or by a healed variant folder, and checked by the full model (`eval/speculative.py`), so the outputs are the full
model's whatever the draft; printed with the draft's acceptance and its wall-clock against the full model's
plain decoding on the same prompts, or streamed (`--out`) like any other decision."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from skiporacle.cli.output_stream import OutputStream, stream_line
from skiporacle.data.errors import BadInput
from skiporacle.data.files import read_appended
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import generate as run_generate
from skiporacle.eval.metrics import sequence_scores
from skiporacle.eval.speculative import SpeculativeStats, generate_speculative
from skiporacle.heal.variants import read_heal_metadata, variant_allocation
from skiporacle.eval.ranking import read_ranking
from skiporacle.search.allocation import Allocation, check_spec, full, parse_spec
from skiporacle.search.spaces import importance_space


RANKING = "runs/ranking.json"  # the ranking importance:N drafts follow unless --importance names another


def check_draft(text: str) -> None:
    """Refuse (BadInput) a --draft that is neither a layer spec, importance:N nor a healed variant folder."""
    if Path(text).is_dir():
        read_heal_metadata(text)
    elif text.startswith("importance:"):
        if not text.partition(":")[2].isdigit():
            raise BadInput(f"--draft {text!r}: importance:N takes a layer count")
    else:
        check_spec(text)


def draft_allocation(text: str, num_layers: int, model: str, ranking: str | None) -> Allocation:
    """One --draft as an allocation of the model: a healed variant folder, importance:N (N layers kept in the
    order of the ranking file `ranking`), or a layer spec."""
    if Path(text).is_dir():
        return variant_allocation(text, num_layers, model)
    kind, _, budget = text.partition(":")
    if kind != "importance":
        return parse_spec(text, num_layers)
    order = read_ranking(Path(ranking or RANKING), model, num_layers)["drop_order"]
    return importance_space([int(budget)], order)[0]


def check_draft_args(args: argparse.Namespace) -> None:
    """Refuse (BadInput) a draft that is neither a layer spec nor a healed variant folder, and what a draft cannot
    be combined with, before any model loads."""
    check_draft(args.draft)
    if args.draft_tokens < 1:
        raise BadInput(f"--draft-tokens must be at least 1, got {args.draft_tokens}")
    if args.controller:
        raise BadInput("--draft and --controller: a controller's choice of draft is not deployable yet; give --draft SPEC")
    if args.layers != "all":
        raise BadInput("--draft outputs the full model's tokens; --layers does not apply (drop it)")
    if args.prompt_under_allocation:
        raise BadInput("--draft reads each prompt with the full model; drop --prompt-under-allocation")


def generate_with_draft(args: argparse.Namespace, settings, inputs, model, tokenizer,
                        stream: OutputStream | None) -> int:
    """Run the draft over every prompt (`stream`: an open --out stream or None) and print what it achieved."""
    draft = draft_allocation(args.draft, inputs.num_layers, settings.model, args.importance)
    protocol, everything = settings.protocol, full(inputs.num_layers)
    scored, stats = inputs.scored_references(), SpeculativeStats()
    wanted = None if stream is None else {i for i, e in enumerate(inputs.ids) if e not in stream.done}
    run_generate(model, tokenizer, inputs.prompts[:1], everything, DecodeProtocol(2))  # warm-up
    start, outputs = time.perf_counter(), {}
    for batch in generate_speculative(model, tokenizer, inputs.prompts, draft, args.draft_tokens, protocol, stats,
                                      settings.batch_size, wanted):
        scores = sequence_scores(settings.metric, [g.text for _, g in batch], [scored[i] for i, _ in batch])
        if stream is not None:
            stream.write([stream_line(inputs.ids[i], g, everything, s) for (i, g), s in zip(batch, scores)])
        outputs.update((i, (g, s)) for (i, g), s in zip(batch, scores))
    seconds = time.perf_counter() - start
    print(f"draft {draft.spec} ({draft.cost} of {inputs.num_layers} layers), {args.draft_tokens} tokens a round: "
          f"{100 * stats.acceptance:.1f} % of drafted tokens accepted, {stats.tokens_per_round:.2f} tokens per check; "
          f"draft {stats.draft_seconds:.1f} s, checks {stats.verify_seconds:.1f} s; {stats.near_ties} near-ties")
    if stream is not None:
        print(stream.summary(read_appended(stream.path), seconds))
        return 0
    start = time.perf_counter()
    baseline = run_generate(model, tokenizer, inputs.prompts, everything, protocol, max_batch=settings.batch_size)
    full_seconds = time.perf_counter() - start
    for i, example_id in enumerate(inputs.ids):
        g, score = outputs[i]
        print(f"[{example_id}] {settings.metric}={score:.2f} ({len(g.tokens)} tokens)\n  {g.text}")
    same = sum(outputs[i][0].tokens == b.tokens for i, b in enumerate(baseline))
    tokens = sum(len(g.tokens) for g, _ in outputs.values())
    print(f"\noutputs equal to the full model's plain decoding: {same} of {len(baseline)} "
          f"({stats.near_ties} near-ties counted in the checks)")
    print(f"time: drafted {seconds:.1f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s) vs full model {full_seconds:.1f} s: "
          f"speed ratio {full_seconds / max(seconds, 1e-9):.2f}x")
    return 0
