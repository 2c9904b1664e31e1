"""Oracle scoring speed: the plain per-candidate generate loop against the engine, side by side.

(a) plain: for each candidate allocation, batched greedy generation over all
    sequences, prompt included (the prompt is re-read for every candidate);
(b) engine: `generate_candidates`, one full-model prefill per batch shared by
    every candidate.
Prints wall times, the ratio, output agreement, and the engine's useful FLOP
rate against a torch.matmul rate measured in the same process.

    python bench/oracle_speed.py [--task xsum] [--n 50] [--space uniform,early-exit,importance] [--budgets ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from skiporacle.eval.generate import encode_prompts, generate, generate_candidates
from skiporacle.eval.model import decoder_layers
from skiporacle.oracle.cli import DEFAULT_BUDGETS, DEFAULT_SPACES
from skiporacle.oracle.run import OracleSettings, build_candidates
from skiporacle.oracle.setup import load_inputs, load_model_cached


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """fp32 torch.matmul rate of this process, GFLOP/s (best of a few timings)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def useful_gflop(model, prompt_tokens: int, layer_tokens: int, generated: int) -> float:
    """Weight-matmul FLOPs the engine must do: full-model prefill, each generated token's kept layers, the LM head."""
    per_layer = sum(p.numel() for n, p in decoder_layers(model)[0].named_parameters() if p.dim() == 2)
    head = model.get_output_embeddings().weight.numel()
    n_layers = len(decoder_layers(model))
    return 2 * (prompt_tokens * n_layers * per_layer + layer_tokens * per_layer + generated * head) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="xsum")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--space", default=DEFAULT_SPACES)
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    settings = OracleSettings(
        model=args.model, task=args.task, data_file=None, input_field=None, reference_field=None, id_field=None,
        limit=args.n, offset=0, spaces=tuple(args.space.split(",")), budgets=tuple(int(b) for b in args.budgets.split(",")),
        metric="rougeL", max_new_tokens=args.max_new_tokens, dtype="float32", seed=0, tolerance=0.0, calibration=8,
        prompt_under_allocation=False,
    )
    inputs = load_inputs(settings)
    with tempfile.TemporaryDirectory() as tmp:
        allocations = build_candidates(settings, inputs, Path(tmp), progress=False)
    model, tokenizer = load_model_cached(args.model, "float32")
    prompts = inputs.prompts
    gflops = matmul_gflops()

    start = time.perf_counter()
    plain = [generate(model, tokenizer, prompts, a, args.max_new_tokens) for a in allocations]
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    engine = generate_candidates(model, tokenizer, prompts, allocations, args.max_new_tokens)
    engine_s = time.perf_counter() - start

    pairs = [(plain[a][i].tokens, engine[i][a].tokens) for a in range(len(allocations)) for i in range(len(prompts))]
    agree = sum(p == e for p, e in pairs)
    generated = sum(len(e) for _, e in pairs)
    layer_tokens = sum(len(engine[i][a].tokens) * allocations[a].cost
                       for a in range(len(allocations)) for i in range(len(prompts)))
    prompt_tokens = sum(len(r) for r in encode_prompts(tokenizer, prompts))
    useful = useful_gflop(model, prompt_tokens, layer_tokens, generated)
    print(f"# oracle speed: {args.model}, {args.task}, N={len(prompts)}, {len(allocations)} candidates "
          f"({args.space}; budgets {args.budgets}; + full), max {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print("| path | wall s | ratio | agreement | near-ties | layer-tokens/s | useful GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| plain per-candidate loop | {plain_s:.1f} | 1.00x | - | - | {layer_tokens / plain_s:.0f} "
          f"| {useful / plain_s:.1f} | {100 * useful / plain_s / gflops:.0f} % |")
    print(f"| engine (shared prefill) | {engine_s:.1f} | {plain_s / engine_s:.2f}x | {100 * agree / len(pairs):.2f} % "
          f"| {len(pairs) - agree} | {layer_tokens / engine_s:.0f} | {useful / engine_s:.1f} "
          f"| {100 * useful / engine_s / gflops:.0f} % |")
    print(f"torch.matmul fp32 rate in this process: {gflops:.1f} GFLOP/s; prompt tokens {prompt_tokens}, "
          f"generated tokens {generated}")


if __name__ == "__main__":
    main()
