"""Greedy decode speed with real layer skipping: tokens/s at batch 1 and 16, 100/75/50/25 % of layers.

Every row decodes exactly --new-tokens tokens (EOS ignored) after a shared
full-model prefill of real XSum prompts, so all allocations do the same number
of steps; ratios are measured side by side in one process.

    python bench/decode_speed.py [--model smollm2-135m] [--new-tokens 32] [--repeats 2] [--device auto] [--dtype D]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from transformers import DynamicCache

from skiporacle.data.prompts import render_prompt
from skiporacle.data.tasks import load_task
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.device import default_dtype, describe, resolve_device
from skiporacle.eval.generate import encode_prompts, greedy_decode, left_pad, prefill
from skiporacle.eval.model import EMBEDDED_MODELS, layer_view, load_model, num_layers, timed_load
from skiporacle.oracle.inputs import DTYPES
from skiporacle.search.allocation import uniform


@torch.inference_mode()
def decode_rate(model, rows, pad_id, allocation, new_tokens: int, repeats: int) -> float:
    """Best-of-`repeats` generated tokens per second (decode only, prefill excluded)."""
    ids, mask = left_pad(rows, pad_id, model.device)
    shared = prefill(model, ids[:, :-1], mask[:, :-1], DynamicCache())
    view = layer_view(model, allocation.layers)
    best = float("inf")
    for _ in range(repeats):
        cache = AllocationCache(allocation.layers, shared, reserve=new_tokens + 1)
        start = time.perf_counter()
        greedy_decode(view, cache, ids[:, -1], mask, new_tokens, frozenset())
        best = min(best, time.perf_counter() - start)
    return len(rows) * new_tokens / best


def load_times(name: str) -> tuple[float, float]:
    """Seconds to load `name` the first time (GGUF conversion into an empty cache) and from the cache."""
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("SKIPORACLE_CACHE")
        os.environ["SKIPORACLE_CACHE"] = tmp
        try:
            first = timed_load(name)[2]
            cached = timed_load(name)[2]
        finally:
            if old is None:
                del os.environ["SKIPORACLE_CACHE"]
            else:
                os.environ["SKIPORACLE_CACHE"] = old
    return first, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (a GPU if visible, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: float32 on the CPU, bfloat16 on a GPU")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = args.dtype or default_dtype(device)
    if args.model in EMBEDDED_MODELS:
        first, cached = load_times(args.model)
        print(f"# model load: {first:.1f} s the first time (GGUF conversion), {cached:.1f} s from the cache")
    model, tokenizer = load_model(args.model, DTYPES[dtype], device)
    n = num_layers(model)
    task, examples = load_task("xsum", limit=16)
    rows = encode_prompts(tokenizer, [render_prompt(task, e, tokenizer) for e in examples])
    rows = sorted(rows, key=len)[:16]
    print(f"# decode speed, {args.model} ({n} layers), {dtype}, {describe(device)}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; prompts: XSum, {min(map(len, rows))}-{max(map(len, rows))} tokens")
    print("| layers kept | batch 1 tokens/s | speed-up | batch 16 tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    base = {}
    for share in (1.0, 0.75, 0.5, 0.25):
        allocation = uniform(round(share * n), n)
        rates = {b: decode_rate(model, rows[:b], tokenizer.pad_token_id, allocation, args.new_tokens, args.repeats)
                 for b in (1, 16)}
        base = base or rates
        print(f"| {allocation.cost}/{n} ({100 * share:.0f} %) | {rates[1]:.1f} | {rates[1] / base[1]:.2f}x "
              f"| {rates[16]:.1f} | {rates[16] / base[16]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
