"""Measure the rounding differences the tests' float comparisons see, against their derived tolerances.

Runs the tests that compare floats through `tests/rounding.py` RUNS times, cycling through other kernel
dispatches (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS: what another processor would run) and, with --load,
beside one busy process per core.  Prints, per comparison, the largest difference seen, its tolerance and the
headroom (tolerance / difference); writes them as JSON to --out.

    python bench/tolerances.py --runs 50 --load        # about 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_verify.py", "tests/test_model.py", "tests/test_crossdecode.py", "tests/test_pertoken_eval.py",
         "tests/test_protocol.py", "tests/test_device.py"]
SELECTED = ("agreement_and_first or kl_equals or ragged or layer_view_forward or gemma3_view or margins_are_the or "
            "early_exit_labels_equal or perplexity_commands or cuda_attention")
# Kernel dispatches to cycle through: {} is this machine's own choice.
DISPATCHES = ({}, {"ATEN_CPU_CAPABILITY": "default"}, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
              {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})


def _busy(stop_at: float) -> None:
    x = 1.0
    while time.time() < stop_at:
        x = (x * 1.000001) % 7.0


def run_once(log: Path, env: dict[str, str]) -> int:
    """One pytest run of the selected comparisons, appending to `log`; its exit code."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, "-k", SELECTED],
                          cwd=ROOT, env={**os.environ, **env, "SKIPORACLE_TOLERANCE_LOG": str(log)},
                          capture_output=True, text=True)
    if done.returncode:
        print(done.stdout[-3000:], file=sys.stderr)
    return done.returncode


def summarize(log: Path) -> list[dict]:
    """Per (test, tolerance): the largest difference over every run and comparison, and the headroom."""
    worst: dict[tuple[str, float], list] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        key = (row["test"], row["tolerance"])
        seen = worst.setdefault(key, [0.0, 0])
        seen[0], seen[1] = max(seen[0], row["difference"]), seen[1] + 1
    return [{"test": t, "tolerance": tol, "largest_difference": d, "comparisons": n,
             "headroom": tol / d if d else None} for (t, tol), (d, n) in sorted(worst.items())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", action="store_true", help="one busy process per core beside the tests")
    parser.add_argument("--out", default="runs/tolerances.json")
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp(prefix="skiporacle-tolerances-")) / "log.jsonl"
    busy = []
    if args.load:
        stop_at = time.time() + 24 * 3600
        busy = [multiprocessing.Process(target=_busy, args=(stop_at,), daemon=True) for _ in range(os.cpu_count() or 1)]
        for p in busy:
            p.start()
    failures = 0
    try:
        for k, env in zip(range(args.runs), itertools.cycle(DISPATCHES)):
            failures += run_once(log, env) != 0
            print(f"run {k + 1}/{args.runs} {env or 'native dispatch'}: {failures} failed so far", flush=True)
    finally:
        for p in busy:
            p.terminate()
    rows = summarize(log)
    print(f"\n{'largest diff':>12} {'tolerance':>10} {'headroom':>9}  test")
    for r in sorted(rows, key=lambda r: -(r["largest_difference"] / r["tolerance"])):
        room = f"{r['headroom']:.0f}x" if r["headroom"] else "exact"
        print(f"{r['largest_difference']:12.3g} {r['tolerance']:10.3g} {room:>9}  {r['test']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": args.runs, "load": args.load, "failed_runs": failures,
                                          "dispatches": DISPATCHES, "comparisons": rows}, indent=1) + "\n")
    print(f"{failures} of {args.runs} runs failed; wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
