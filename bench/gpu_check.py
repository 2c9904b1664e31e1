"""`make gpu-check`: everything a GPU machine should confirm, in one command, in under 8 minutes, offline.

1. the tests that are skipped without a GPU (tests/test_device.py, needs_gpu), run on it;
2. decode tokens/s of the embedded model at 30 and 15 layers (batch 16, 32 new tokens, bfloat16);
3. the oracle engine (the cross-candidate decoder) at N = 8 XSum prompts against the plain per-candidate loop,
   float32, with their output agreement and the near-ties behind any difference;
4. bfloat16 against float32: the engine's outputs in bfloat16 against the plain loop's float32 ones;
5. the batch plan against the device's memory: the planned limits and batches, and the peak memory the engine used.

Writes one JSON (--out) and prints a table.  On a machine without a GPU it says so in one line and exits 0.

    python bench/gpu_check.py [--out runs/gpu-check.json] [--model smollm2-135m]
    python bench/gpu_check.py --cpu --n 2      # the same steps on the CPU, to check this script without a GPU
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30


def gpu_tests() -> dict:
    """The GPU tests' outcome: pytest's exit code and its last line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                           "tests/test_device.py"], cwd=ROOT, capture_output=True, text=True)
    counts = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    summary = counts[-1].strip("= ") if counts else (done.stdout + done.stderr).strip()[-300:]
    return {"exit_code": done.returncode, "summary": summary, "seconds": round(time.perf_counter() - start, 1)}


def decode_speed(model, tokenizer, rows) -> dict:
    """Tokens/s at all layers and at half of them (uniform), and their ratio."""
    sys.path.insert(0, str(ROOT / "bench"))
    from decode_speed import decode_rate

    from skiporacle.eval.model import num_layers
    from skiporacle.search.allocation import uniform

    n = num_layers(model)
    rates = {keep: decode_rate(model, rows, tokenizer.pad_token_id, uniform(keep, n), 32, 2) for keep in (n, n // 2)}
    return {"batch": len(rows), "new_tokens": 32, "tokens_per_second": {str(k): round(v, 1) for k, v in rates.items()},
            "speed_up_at_half": round(rates[n // 2] / rates[n], 2)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def engine_against_plain(model32, model16, tokenizer, prompts, allocations, new: int) -> dict:
    """Wall time of the plain loop and of the engine (float32, and bfloat16), with output agreement."""
    from skiporacle.eval.decode_protocol import DecodeProtocol
    from skiporacle.eval.generate import generate_candidates

    device = model32.device.type
    _sync(device)
    start = time.perf_counter()
    margins: list = []
    columns = []
    for allocation in allocations:
        margins.append([])
        columns.append(generate_candidates(model32, tokenizer, prompts, [allocation], DecodeProtocol(new, decoder="per-candidate"),
                                           margins=margins[-1]))
    _sync(device)
    plain_s = time.perf_counter() - start
    reference = [[col[i][0].tokens for col in columns] for i in range(len(prompts))]
    ties = [[m[i][0] for m in margins] for i in range(len(prompts))]
    out = {"candidates": len(allocations), "sequences": len(prompts), "plain_seconds": round(plain_s, 2)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for name, model in (("engine_float32", model32), ("engine_bfloat16", model16)):
        _sync(device)
        start = time.perf_counter()
        outputs = generate_candidates(model, tokenizer, prompts, allocations, DecodeProtocol(new))
        _sync(device)
        seconds = time.perf_counter() - start
        pairs = [(ref, got.tokens, tie) for r_row, g_row, t_row in zip(reference, outputs, ties)
                 for ref, got, tie in zip(r_row, g_row, t_row)]
        differ = [(ref, got, tie) for ref, got, tie in pairs if tuple(ref) != tuple(got)]
        at_tie = sum(1 for ref, got, tie in differ if _first_margin(ref, got, tie) < 1e-4)
        out[name] = {"seconds": round(seconds, 2), "vs_plain": round(plain_s / seconds, 2),
                     "agreement_percent": round(100 * (len(pairs) - len(differ)) / len(pairs), 2),
                     "differ": len(differ), "of_which_near_ties": at_tie}
    out["engine_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2) if device == "cuda" else None
    return out


def _first_margin(ref, got, margins) -> float:
    """The reference's top-2 margin where the two outputs first differ (inf where one is a prefix of the other)."""
    at = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), None)
    return margins[at] if at is not None and at < len(margins) else float("inf")


def batch_plan(model, rows) -> dict:
    """The limits planned from the free memory, the batches of the rows, and the device's memory."""
    from skiporacle.eval.batching import SCORE_BYTES_PER_BATCH, TOKENS_PER_BATCH, batch_limits, plan_for
    from skiporacle.eval.memory import available_bytes

    on_gpu = model.device.type == "cuda"
    free, total = torch.cuda.mem_get_info(model.device) if on_gpu else (available_bytes("cpu"), available_bytes("cpu"))
    limits = batch_limits(model)
    tokens, scores = (limits.tokens, limits.score_bytes) if limits else (TOKENS_PER_BATCH, SCORE_BYTES_PER_BATCH)
    plan = plan_for(model, [len(r) for r in rows])
    long_plan = plan_for(model, [512] * 2000)  # a serving-sized input: 2000 prompts of 512 tokens
    return {"free_gib": round(free / GIB, 2), "total_gib": round(total / GIB, 2),
            "limits": {"tokens": tokens, "score_bytes": scores},
            "batches_of_the_prompts": [len(b) for b in plan],
            "rows_per_batch_2000x512": max(len(b) for b in long_plan)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-check.json")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=8, help="oracle prompts (default: 8)")
    parser.add_argument("--cpu", action="store_true", help="run the steps on the CPU (slow): a check of this script")
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if not args.cpu and not torch.cuda.is_available():
        print("skiporacle gpu-check: no GPU visible to torch here (torch.cuda.is_available() is False); nothing to check")
        return 0
    from skiporacle.data.prompts import render_prompt
    from skiporacle.data.tasks import load_task
    from skiporacle.eval.device import describe
    from skiporacle.eval.generate import encode_prompts
    from skiporacle.eval.model import load_model, num_layers
    from skiporacle.search.allocation import early_exit, full, uniform

    start = time.perf_counter()
    report = {"device": describe(device), "torch": torch.__version__, "gpu_tests": gpu_tests()}
    model32, tokenizer = load_model(args.model, torch.float32, device)
    model16, _ = load_model(args.model, torch.bfloat16, device)
    task, examples = load_task("xsum", limit=16)
    prompts = [render_prompt(task, e, tokenizer) for e in examples]
    rows = encode_prompts(tokenizer, prompts)
    report["decode_bfloat16"] = decode_speed(model16, tokenizer, rows)
    n = num_layers(model32)
    allocations = [uniform(b, n) for b in (8, 16, 24, 28)] + [early_exit(b, n) for b in (16, 24)] + [full(n)]
    report["oracle_n8"] = engine_against_plain(model32, model16, tokenizer, prompts[:args.n], allocations, 48)
    report["batch_plan"] = batch_plan(model16, rows)
    report["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return 0 if report["gpu_tests"]["exit_code"] == 0 else 1


def print_table(r: dict) -> None:
    d, o, p = r["decode_bfloat16"], r["oracle_n8"], r["batch_plan"]
    rates = d["tokens_per_second"]
    rows = [("device", f"{r['device'].get('gpu', '?')} ({r['device'].get('gpus', '?')} visible), torch {r['torch']}"),
            ("GPU tests", f"{r['gpu_tests']['summary']} ({r['gpu_tests']['seconds']} s)"),
            ("decode bf16, batch 16", " / ".join(f"{k} layers {v} tok/s" for k, v in rates.items())
             + f"; half the layers {d['speed_up_at_half']}x"),
            (f"oracle N={o['sequences']}, plain loop", f"{o['plain_seconds']} s, {o['candidates']} candidates"),
            *[(f"oracle N={o['sequences']}, {k.replace('_', ' ')}", f"{o[k]['seconds']} s ({o[k]['vs_plain']}x plain), agreement "
               f"{o[k]['agreement_percent']} % ({o[k]['differ']} differ, {o[k]['of_which_near_ties']} at near-ties)")
              for k in ("engine_float32", "engine_bfloat16")],
            ("batch plan", f"limits {p['limits']['tokens']} tokens / {p['limits']['score_bytes'] / GIB:.1f} GiB scores; "
                           f"batches {p['batches_of_the_prompts']}; 2000 x 512 tokens: {p['rows_per_batch_2000x512']} rows"),
            ("memory", f"engine peak {o['engine_peak_memory_gib']} GiB of {p['total_gib']} GiB ({p['free_gib']} free)"),
            ("total", f"{r['seconds']} s")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
