"""Oracle scoring speed: the plain per-candidate loop, the engine's two decoders, and bfloat16, side by side.

(a) plain: for each candidate allocation, batched greedy generation over all
    sequences, the full-model prefill redone for every candidate.  This is the
    reference: it also records every token's top-2 logit margin.
(b) per-candidate engine: one full-model prefill per batch shared by every
    candidate, candidates decoded one after another (`--decoder per-candidate`).
(c) together engine: every candidate of a batch in one decode loop, each layer
    run once per step on the rows that keep it, shared-prefix attention
    (`--decoder together`, the default).
(d) --bf16: (c) with the model in bfloat16, against the float32 outputs of (a).

For each path: wall time, ratio to (a), output agreement with (a), and every
disagreement's cause: the reference's top-2 margin where the two outputs first
differ.  A margin under --tie (1e-4) is a near-tie, which float rounding
between batch shapes (about 2e-5 on the embedded model) can flip.  Also the
useful FLOP rate against a torch.matmul rate measured in the same process,
and the floor: the useful FLOPs (one full prefill per sequence, the kept
layers of every generated token, the LM head) at the matmul rate.

    python bench/oracle_speed.py [--task xsum] [--n 50] [--paths plain,per-candidate,together,bf16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import encode_prompts, generate_candidates
from skiporacle.eval.device import describe, resolve_device
from skiporacle.eval.model import decoder_layers, load_model
from skiporacle.oracle.candidate_list import build_candidates
from skiporacle.oracle.inputs import load_inputs
from skiporacle.oracle.oracle_settings import DEFAULTS, OracleSettings

PATHS = ("plain", "per-candidate", "together", "bf16")


def matmul_gflops(size: int = 1024, repeats: int = 20, device: torch.device | str = "cpu") -> float:
    """fp32 torch.matmul rate of this process on `device`, GFLOP/s (best of a few timings)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.matmul(a, b)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def useful_gflop(model, prompt_tokens: int, layer_tokens: int, generated: int) -> float:
    """Weight-matmul FLOPs the engine must do: full-model prefill, each generated token's kept layers, the LM head."""
    per_layer = sum(p.numel() for n, p in decoder_layers(model)[0].named_parameters() if p.dim() == 2)
    head = model.get_output_embeddings().weight.numel()
    n_layers = len(decoder_layers(model))
    return 2 * (prompt_tokens * n_layers * per_layer + layer_tokens * per_layer + generated * head) / 1e9


def first_difference(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next(t for t in range(min(len(a), len(b)) + 1) if t == min(len(a), len(b)) or a[t] != b[t])


def disagreements(reference, margins, outputs, tie: float) -> tuple[int, int, int]:
    """(outputs compared, outputs that differ, of those the ones that first differ at a reference near-tie)."""
    pairs = differ = at_tie = 0
    for i, row in enumerate(outputs):
        for a, generation in enumerate(row):
            pairs += 1
            want = reference[i][a].tokens
            if generation.tokens != want:
                differ += 1
                t = first_difference(want, generation.tokens)
                at_tie += t < len(margins[i][a]) and margins[i][a][t] < tie
    return pairs, differ, at_tie


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="xsum")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--space", default=",".join(DEFAULTS.spaces))
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULTS.budgets)))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"which of {','.join(PATHS)} to run (plain always runs)")
    parser.add_argument("--tie", type=float, default=1e-4, help="top-2 logit margin below which a token is a near-tie")
    parser.add_argument("--device", default="auto", help="auto (a GPU if visible, else the CPU), cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = resolve_device(args.device)  # the reference paths run in float32 on it; "bf16" adds bfloat16
    settings = OracleSettings(model=args.model, task=args.task, limit=args.n, spaces=tuple(args.space.split(",")),
                              budgets=tuple(int(b) for b in args.budgets.split(",")), metric="rougeL",
                              max_new_tokens=args.max_new_tokens)
    model, tokenizer = load_model(args.model, torch.float32, device)
    inputs = load_inputs(settings, model, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        allocations = build_candidates(settings, inputs, Path(tmp), model, tokenizer, progress=False)
    prompts, new = inputs.prompts, args.max_new_tokens
    gflops = matmul_gflops(device=device)

    runs: dict[str, tuple[float, list]] = {}
    columns, column_margins = [], []  # [allocation][sequence][0]
    start = time.perf_counter()
    for allocation in allocations:
        column_margins.append([])
        columns.append(generate_candidates(model, tokenizer, prompts, [allocation], DecodeProtocol(new, decoder="per-candidate"),
                                           margins=column_margins[-1]))
    runs["plain"] = (time.perf_counter() - start, [[col[i][0] for col in columns] for i in range(len(prompts))])
    margins = [[m[i][0] for m in column_margins] for i in range(len(prompts))]  # [sequence][allocation][token]
    for path in args.paths.split(","):
        if path in ("per-candidate", "together"):
            start = time.perf_counter()
            outputs = generate_candidates(model, tokenizer, prompts, allocations, DecodeProtocol(new, decoder=path))
            runs[path] = (time.perf_counter() - start, outputs)
        elif path == "bf16":
            half, _ = load_model(args.model, torch.bfloat16, device)
            start = time.perf_counter()
            outputs = generate_candidates(half, tokenizer, prompts, allocations, DecodeProtocol(new))
            runs["together, bfloat16"] = (time.perf_counter() - start, outputs)

    plain_s, reference = runs["plain"]
    generated = sum(len(g.tokens) for row in reference for g in row)
    layer_tokens = sum(len(g.tokens) * a.cost for row in reference for g, a in zip(row, allocations))
    prompt_tokens = sum(len(r) for r in encode_prompts(tokenizer, prompts))
    useful = useful_gflop(model, prompt_tokens, layer_tokens, generated)
    ties = sum(gap < args.tie for row in margins for m in row for gap in m)
    print(f"# oracle speed: {args.model}, {args.task}, N={len(prompts)}, {len(allocations)} candidates "
          f"({args.space}; budgets {args.budgets}; + full), max {new} new tokens, {torch.get_num_threads()} threads, "
          f"{describe(device)}")
    print("| path | wall s | vs plain | agreement | differ | of which at a near-tie | useful GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (seconds, outputs) in runs.items():
        pairs, differ, at_tie = disagreements(reference, margins, outputs, args.tie)
        print(f"| {name} | {seconds:.1f} | {plain_s / seconds:.2f}x | {100 * (pairs - differ) / pairs:.2f} % | {differ} "
              f"| {at_tie} | {useful / seconds:.1f} | {100 * useful / seconds / gflops:.0f} % |", flush=True)
    floor = useful / gflops
    print(f"torch.matmul fp32 rate in this process: {gflops:.1f} GFLOP/s. Useful work {useful:.0f} GFLOP: prompt tokens "
          f"{prompt_tokens}, generated tokens {generated}, layer-tokens {layer_tokens}. Floor at the matmul rate: "
          f"{floor:.1f} s; together engine at {runs.get('together', (float('nan'),))[0] / floor:.2f}x the floor.")
    print(f"Reference near-ties (top-2 margin < {args.tie:g}): {ties} of {generated} generated tokens.")


if __name__ == "__main__":
    main()
