"""Batched vs one-by-one greedy outputs on the real model: how often they differ, and whether every
difference is a near-tie.

Both paths are the engine's own `generate` (full model and one skipping allocation): once with the
planned batches, once one prompt at a time.  Where two outputs first differ, the full model's (or the
allocation's) top-2 logit margin at that position is measured teacher-forced on the common prefix;
a difference whose margin is below --tie (default 1e-4) is a near-tie: float noise between batch
shapes (about 2e-5 on the embedded model) can flip it.

    python bench/near_ties.py [--task xsum] [--n 20] [--offset 500] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch

from skiporacle.data.prompts import fit_prompt
from skiporacle.data.tasks import load_task
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import generate
from skiporacle.eval.teacher_forcing import teacher_forced_passes
from skiporacle.data.prompts import prompt_budget
from skiporacle.eval.device import resolve_device
from skiporacle.oracle.workers import load_model_cached
from skiporacle.search.allocation import full, parse_spec


def margin(hidden: torch.Tensor, targets: torch.Tensor, head) -> float:
    """Top-2 logit margin at the last position of a teacher-forced continuation."""
    top = head(hidden[-1:]).float().topk(2, dim=-1).values[0]
    return float(top[0] - top[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="xsum")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--offset", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", default="0-4,6-29", help="a skipping allocation to check too (default: all but layer 5)")
    parser.add_argument("--tie", type=float, default=1e-4)
    parser.add_argument("--device", default="auto", help="auto (a GPU if visible, else the CPU), cpu, cuda or cuda:N")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_cached("smollm2-135m", "float32", str(resolve_device(args.device)))
    task, examples = load_task(args.task, limit=args.n, offset=args.offset)
    _, budget = prompt_budget(model, tokenizer, args.max_new_tokens)
    prompts = [fit_prompt(task, e, tokenizer, budget)[0] for e in examples]
    n_layers = model.config.num_hidden_layers
    for allocation in (full(n_layers), parse_spec(args.layers, n_layers)):
        batched = generate(model, tokenizer, prompts, allocation, DecodeProtocol(args.max_new_tokens))
        single = [generate(model, tokenizer, [p], allocation, DecodeProtocol(args.max_new_tokens))[0] for p in prompts]
        differ, ties = [], 0
        for i, (a, b) in enumerate(zip(batched, single)):
            if a.tokens == b.tokens:
                continue
            t = next(k for k in range(min(len(a.tokens), len(b.tokens)) + 1)
                     if k == min(len(a.tokens), len(b.tokens)) or a.tokens[k] != b.tokens[k])
            prefix = list(a.tokens[: t + 1])  # the margin that decided position t, teacher-forced
            (value,), = teacher_forced_passes(model, tokenizer, [prompts[i]], [prefix], [allocation], margin)
            differ.append((i, t, value))
            ties += value < args.tie
        print(f"{allocation.spec}: {len(prompts)} sequences, {len(differ)} differ between batched and one-by-one; "
              f"{ties} of them at a near-tie (top-2 margin < {args.tie:g})"
              + "".join(f"\n  sequence {i}: first difference at token {t}, margin {m:.2e}" for i, t, m in differ))


if __name__ == "__main__":
    main()
