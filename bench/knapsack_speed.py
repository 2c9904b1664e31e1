"""The exact knapsack at paper scale: the plain programme against the frontier one, side by side.

    python bench/knapsack_speed.py           # about 2 minutes: the old programme at N = 10,000 once
    python bench/knapsack_speed.py --full    # about 3.5 minutes: the old one at 10,000 for both cost settings
    python bench/knapsack_speed.py --quick   # about 20 s: the old programme at N = 1,000 only

K = 24 candidates with uniform random scores in [0, 100].  Two cost settings: the default grid (8, 12,
16, 20, 24, 26, 28, 29 layers over three spaces with one 29 dropped, as the real grid keeps 24
candidates after deduplication, then the full model at 30) and random integer costs 1..30 with the
full model (30) last.  By default the old programme runs at N = 10,000 on the default grid only.

New programme: time is the best of `--repeats` untraced calls, peak memory tracemalloc's peak over a
separate traced call (numpy's buffers are traced), less what was traced before it.  Old programme: one
untraced call, and a traced one for memory up to `--old-trace-max-n` (tracing slows its many large
allocations by about a third); above that the memory column is its three float64 arrays of
N * max cost + 1 entries, marked *.  "agree" means the same `best_total` bit for bit, hence the
same `mean_score_at`, `points` and `layers_to_reach`.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from skiporacle.oracle.choose import _knapsack_reference, knapsack


def measure(fn, scores, costs, repeats: int, trace: bool = True):
    """(curve, best seconds of `repeats` untraced calls, peak bytes of one more, traced call or None)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        curve = fn(scores, costs)
        times.append(time.perf_counter() - start)
    if not trace:
        return curve, min(times), None
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fn(scores, costs)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return curve, min(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--old-max-n", type=int, default=10000, help="largest N the old programme runs at")
    ap.add_argument("--quick", action="store_true", help="the old programme at N <= 1,000 only")
    ap.add_argument("--full", action="store_true", help="the old programme at every N for every cost setting")
    ap.add_argument("--old-trace-max-n", type=int, default=1000,
                    help="largest N whose old-programme memory is traced (tracing slows it by about a third); "
                         "above it the figure is its three float64 arrays of N * max cost + 1, marked *")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    old_max = 1000 if args.quick else args.old_max_n
    rng = np.random.default_rng(args.seed)
    grid = ([8, 12, 16, 20, 24, 26, 28, 29] * 3)[:-1] + [30]
    settings = [("default grid", grid), ("random 1..30", [int(c) for c in rng.integers(1, 31, size=23)] + [30])]
    print(f"{'costs':<13} {'N':>6} {'K':>3} | {'old s':>8} {'old MB':>7} | {'new s':>7} {'new MB':>7} | "
          f"{'speed-up':>8} | agree")
    for setting, (name, costs) in enumerate(settings):
        old_max_here = old_max if setting == 0 or args.full else min(old_max, 1000)
        for n in (int(s) for s in args.sizes.split(",")):
            scores = rng.uniform(0, 100, size=(n, len(costs)))
            new, t_new, m_new = measure(knapsack, scores, costs, args.repeats)
            if n <= old_max_here:
                old, t_old, m_old = measure(_knapsack_reference, scores, costs, 1, n <= args.old_trace_max_n)
                agree = "yes" if np.array_equal(old.best_total, new.best_total) else "NO"
                mem = f"{m_old / 1e6:7.1f}" if m_old is not None else f"{3 * 8 * (n * max(costs) + 1) / 1e6:6.1f}*"
                old_cols, ratio = f"{t_old:8.2f} {mem}", f"{t_old / t_new:7.0f}×"
            else:
                old_cols, ratio, agree = f"{'-':>8} {'-':>7}", f"{'-':>8}", "-"
            print(f"{name:<13} {n:>6} {len(costs):>3} | {old_cols} | {t_new:7.2f} {m_new / 1e6:7.1f} | "
                  f"{ratio} | {agree}", flush=True)


if __name__ == "__main__":
    main()
