"""Larger models with random weights: build, save, load through the loader, memory, and one oracle batch.

Each model of tests/large_configs.py (real configurations of Llama-3.2-1B, Qwen2.5-1.5B, Gemma-3-1B and
OPT-1.3B) is built with random weights, saved to a temporary folder, loaded back by
`skiporacle.eval.model.load_model` (the memory check included) and run on one oracle batch: PROMPTS random
prompts of PROMPT_TOKENS tokens x CANDIDATES allocations (the full model, then uniform skipping at 75 % and
50 % of the layers) x NEW_TOKENS greedy tokens, EOS ignored.  Each model runs in its own process, so its
peak memory is its own.  Random weights make the outputs meaningless; the timings and memory are real.

    python bench/large_models.py [--models llama-3.2-1b,qwen2.5-1.5b,gemma-3-1b,opt-1.3b] [--dtype float32]
        [--device auto] [--prompts 4] [--candidates 3] [--new-tokens 16] [--prompt-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from large_configs import LARGE_CONFIGS, build_config  # noqa: E402  (the configurations the tests check)

from skiporacle.eval.batching import left_pad  # noqa: E402
from skiporacle.eval.decode import prefill  # noqa: E402
from skiporacle.eval.device import default_dtype, describe, resolve_device  # noqa: E402
from skiporacle.eval.decode_protocol import DecodeProtocol  # noqa: E402
from skiporacle.eval.generate import generate_batch  # noqa: E402
from skiporacle.eval.memory import GIB, parameter_count  # noqa: E402
from skiporacle.eval.model import load_model, num_layers  # noqa: E402
from skiporacle.oracle.inputs import DTYPES  # noqa: E402
from skiporacle.search.allocation import full, uniform  # noqa: E402


def rss_gib() -> float:
    """Resident memory of this process now, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, dtype: str, device: torch.device, prompts: int, candidates: int, new_tokens: int,
            prompt_tokens: int) -> dict:
    """Build, save, load and run one model; return its figures."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skiporacle.eval.model import resolve_model

    config = build_config(name)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).eval()
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"), local_files_only=True).save_pretrained(folder)
        save_s = time.perf_counter() - start
        del model
        before = rss_gib()
        start = time.perf_counter()
        model, _ = load_model(folder, DTYPES[dtype], device)
        sync(device)
        load_s = time.perf_counter() - start
        loaded = rss_gib() - before
    n = num_layers(model)
    allocations = [full(n), uniform(round(0.75 * n), n), uniform(round(0.5 * n), n)][:candidates]
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(10, config.vocab_size - 10, (prompts, prompt_tokens), generator=generator).tolist()
    generate_batch(model, rows[:1], allocations[:1], DecodeProtocol(2, eos=frozenset()), 0)  # warm-up
    ids, mask = left_pad(rows, 0, model.device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        prefill(model, ids[:, :-1], mask[:, :-1], DynamicCache())  # the batch's shared prefill alone
    sync(device)
    prefill_s = time.perf_counter() - start
    timings = {}
    for decoder in ("together", "per-candidate"):
        sync(device)
        start = time.perf_counter()
        out = generate_batch(model, rows, allocations, DecodeProtocol(new_tokens, decoder=decoder, eos=frozenset()), 0)
        sync(device)
        timings[decoder] = time.perf_counter() - start
    generated = sum(len(t) for row in out for t in row)
    layer_tokens = sum(len(t) * a.cost for row in out for t, a in zip(row, allocations))
    weights = parameter_count(config) * torch.tensor([], dtype=DTYPES[dtype]).element_size()
    return {"model": name, "dtype": dtype, **describe(device), "layers": n, "parameters": parameter_count(config),
            "weights_gib": weights / GIB, "build_s": build_s, "save_s": save_s, "load_s": load_s,
            "rss_after_load_gib": loaded, "peak_rss_gib": peak_gib(), "batch": f"{prompts}x{candidates}x{new_tokens}",
            "prompt_tokens": prompt_tokens, "prefill_s": prefill_s, "generated_tokens": generated, "layer_tokens": layer_tokens,
            "batch_s_together": timings["together"], "batch_s_per_candidate": timings["per-candidate"],
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(LARGE_CONFIGS))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: float32 on the CPU, bfloat16 on a GPU")
    parser.add_argument("--device", default="auto", help="auto (a GPU if visible, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one model in this process, print its JSON line
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = args.dtype or default_dtype(device)
    if args.one:
        print(json.dumps(measure(args.one, dtype, device, args.prompts, args.candidates, args.new_tokens,
                                 args.prompt_tokens)), flush=True)
        return
    print(f"# large models, random weights, {dtype}, {describe(device)}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; one batch of {args.prompts} prompts x {args.prompt_tokens} "
          f"tokens x {args.candidates} candidates x {args.new_tokens} new tokens")
    print("| model | layers | parameters | weights GiB | build s | load s | RSS after load GiB | peak RSS GiB "
          "| prefill s | batch s (together) | batch s (per-candidate) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        command = [sys.executable, __file__, "--one", name, "--dtype", dtype, "--device", str(device),
                   "--prompts", str(args.prompts), "--candidates", str(args.candidates),
                   "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['layers']} | {r['parameters'] / 1e9:.2f} B | {r['weights_gib']:.2f} | {r['build_s']:.1f} "
              f"| {r['load_s']:.1f} | {r['rss_after_load_gib']:.2f} | {r['peak_rss_gib']:.2f} "
              f"| {r['prefill_s']:.1f} | {r['batch_s_together']:.1f} | {r['batch_s_per_candidate']:.1f} |", flush=True)
        print(f"<!-- {json.dumps(r)} -->", flush=True)


if __name__ == "__main__":
    main()
