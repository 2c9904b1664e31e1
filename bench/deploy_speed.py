"""What each kind of decision saves in wall-clock: the full model, static allocations, 50/50 mixes of two
allocations (nested and not) by groups and through the lanes, per-sequence decisions deployed one prefill batch
at a time and with plan-level grouping (a 50/50 rule, over the model's own layers and over two variants with
their own weights, as healed variants have; the controller with --controller DIR) and per-token decisions, side
by side in one process on real XSum prompts.

Per configuration and batch cap: prefill seconds, decode tokens/s and end-to-end seconds, each as a ratio to the
full model's; for decisions that mix allocations, the ratio to the static allocation with the same mean layers
(the heterogeneity cost), end to end and in decode speed; and the layer-count bound (full layers / mean layers).  Static allocations are also
timed with the prompt read under the allocation (`--prompt-under-allocation`).  Every row decodes at most
--new-tokens tokens and stops at EOS, as in use.  Per-token decisions here are synthetic (each token picks a
member of the nested family at random, seeded, with the stated mean), since a probe needs labels; their cost
includes the skipped layers' key/value fill.  Self-speculative rows draft with an importance allocation and
check with the full model (outputs: the full model's); a second table gives their acceptance, each phase's
cost against one full decode step, and the decode ratio those measured costs predict beside the measured one.

    python bench/deploy_speed.py [--n 40] [--caps 8,16] [--new-tokens 48] [--offset 700] [--controller DIR]
                                 [--only NAME,...] [--window-mb MB]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skiporacle.controller.controller_run import load_controller
from skiporacle.controller.deploy import WINDOW_MB, controller_rule, deploy_decisions
from skiporacle.data.prompts import fit_prompt, prompt_budget
from skiporacle.data.tasks import load_task
from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.cache import AllocationCache
from skiporacle.eval.decode import greedy_decode, prefill_shared
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import encode_prompts, eos_ids
from skiporacle.heal.export import export_allocation
from skiporacle.eval.mixed_decode import cached_step_cost, decode_mixed
from skiporacle.eval.model import allocation_view, num_layers
from skiporacle.eval.speculative import SpeculativeStats, speculative_decode
from skiporacle.oracle.candidate_list import pinned_allocations
from skiporacle.oracle.workers import load_model_cached
from skiporacle.pertoken.token_generation import generate_per_token
from skiporacle.search.allocation import Allocation, full, uniform
from skiporacle.search.families import importance_family

# Vital layers of SmolLM2-135M (0, 1, 11, 28, 29) kept; the others dropped from the top of the middle down.
DROP_ORDER = [l for l in range(27, 1, -1) if l != 11]


def _kept(n: int, keep: int) -> Allocation:
    return importance_family(DROP_ORDER, n).members[n - keep]


@torch.inference_mode()  # no autograd graph: with one, a batch of 16 XSum prompts held 16 GB and ran 2x slower
def run_config(model, rows, pad, cap, chosen_of, protocol, under=False, per_token=None, draft=None) -> dict:
    """Seconds of prefill and decode, generated tokens and decode steps (each batch's longest output) over the
    planned batches of `rows`; with `draft` (allocation, k), self-speculative decoding and its statistics."""
    prefill_s = decode_s = 0.0
    tokens = layers = steps = 0
    stats = SpeculativeStats()
    for batch in plan_for(model, [len(r) for r in rows], cap):
        ids, mask = left_pad([rows[i] for i in batch], pad, model.device)
        chosen = [chosen_of(i) for i in batch]
        start = time.perf_counter()
        if draft is not None:
            cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
            prefill_s += time.perf_counter() - start
            start = time.perf_counter()
            out = speculative_decode(model, cache, ids[:, -1], mask, draft[0], draft[1], protocol.max_new_tokens,
                                     protocol.eos, stats)
            decode_s += time.perf_counter() - start
            tokens, layers, steps = tokens + sum(map(len, out)), layers + draft[0].num_layers * sum(map(len, out)), steps + max(map(len, out))
            continue
        if per_token is not None:
            family, decide = per_token
            prefill_shared(model, ids[:, :-1], mask[:, :-1])  # the engine's own prefill, timed apart
            read = time.perf_counter() - start
            start = time.perf_counter()
            out = generate_per_token(model, [rows[i] for i in batch], family, decide, 1, protocol, pad)
            prefill_s += read
            decode_s += max(time.perf_counter() - start - read, 1e-9)  # the call reads the prompt again inside
            tokens += sum(map(len, out.tokens))
            layers += sum(map(sum, out.layers_run))
            continue
        if under:
            (allocation,) = set(chosen)
            view = allocation_view(model, allocation)
            own, _ = prefill_shared(view, ids[:, :-1], mask[:, :-1])  # grouped by length, as generate_batch does
            cache = AllocationCache(allocation.layers, own, reserve=protocol.max_new_tokens + 1)
            prefill_s += time.perf_counter() - start
            start = time.perf_counter()
            out = greedy_decode(view, cache, ids[:, -1], mask, protocol.max_new_tokens, protocol.eos)
        else:
            cache, _ = prefill_shared(model, ids[:, :-1], mask[:, :-1])
            prefill_s += time.perf_counter() - start
            start = time.perf_counter()
            out, _ = decode_mixed(model, cache, ids, mask, chosen, protocol, chosen_of.path, chosen_of.cost)
        decode_s += time.perf_counter() - start
        tokens += sum(map(len, out))
        steps += max(map(len, out))
        layers += sum(len(t) * a.cost for t, a in zip(out, chosen))
    return {"prefill_s": prefill_s, "decode_s": decode_s, "total_s": prefill_s + decode_s, "tokens": tokens,
            "mean_layers": layers / max(tokens, 1), "steps": steps, "stats": stats if draft is not None else None}


def run_deployed(model, tokenizer, prompts, cap, allocations, decide, protocol, path, cost, window_bytes) -> dict:
    """`run_config`'s figures for a per-sequence rule deployed as `generate --controller` deploys: the prefill
    with features, then decode batches planned per prefill batch (window 0) or regrouped across them."""
    deployed = deploy_decisions(model, tokenizer, prompts, allocations, decide, protocol, cap, path=path, cost=cost,
                                window_bytes=window_bytes)
    out = [(len(g.tokens), allocations[c].cost) for g, c in zip(deployed.generations, deployed.choices)]
    tokens = sum(k for k, _ in out)
    decode_s = deployed.seconds - deployed.prefill_seconds  # decisions, regrouping and decoding
    return {"prefill_s": deployed.prefill_seconds, "decode_s": decode_s, "total_s": deployed.seconds, "tokens": tokens,
            "mean_layers": sum(k * c for k, c in out) / max(tokens, 1), "steps": 0, "stats": None,
            "loops": deployed.decode_loops}


def print_drafts(results: dict, base: dict) -> None:
    """Self-speculative rows: acceptance, tokens per check, each phase's cost against one full decode step, and
    the decode ratio those costs predict (full steps / (draft steps x draft cost + checks x check cost)) beside
    the measured one; the ideal is the same with every draft accepted."""
    step = base["decode_s"] / base["steps"]  # seconds of one full-model decode step of a batch
    print(f"\n{'draft':<46}{'accepted':>9}{'tok/check':>10}{'draft step':>11}{'check':>7}{'predicted x':>12}"
          f"{'measured x':>11}{'ideal x':>8}")
    for name, r in results.items():
        stats = r["stats"]
        if stats is None:
            continue
        k, checks, drafted = max(stats.steps), len(stats.steps), sum(stats.steps)
        r_draft = stats.draft_seconds / max(drafted, 1) / step
        r_check = stats.verify_seconds / checks / step
        predicted = r["steps"] / (drafted * r_draft + checks * r_check)
        ideal = (k + 1) / (k * r_draft + r_check)
        print(f"{name:<46}{100 * stats.acceptance:8.1f}%{stats.tokens_per_round:10.2f}{r_draft:11.2f}{r_check:7.2f}"
              f"{predicted:12.2f}{base['decode_s'] / r['decode_s']:11.2f}{ideal:8.2f}"
              f"   near-ties {stats.near_ties}")


class Choice:
    """chosen_of(i) -> the allocation of sequence i, with the decoding path for mixed batches."""

    def __init__(self, pick, path="groups", cost=None):
        self.pick, self.path, self.cost = pick, path, cost

    def __call__(self, i: int) -> Allocation:
        return self.pick(i)


def _decider(members: int, target_member: float, seed: int):
    """decide(hidden) -> a member per row: member 0 (all layers) or m, mixed so the mean member is the target."""
    generator = torch.Generator().manual_seed(seed)
    top = int(np.ceil(target_member))
    share = target_member / top if top else 0.0

    def decide(hidden: torch.Tensor) -> torch.Tensor:
        pick = torch.rand(len(hidden), generator=generator) < share
        return torch.where(pick, top, 0).to(hidden.device)

    return decide


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--caps", default="8,16")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--offset", type=int, default=700)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--static", default="28,27,24,20",
                   help="layer counts of the static rows (default: 28,27,24,20); a decision's heterogeneity cost needs "
                        "the one at its rounded mean")
    p.add_argument("--controller", help="a controller folder: time its per-sequence decisions too")
    p.add_argument("--taus", default="", help="with --controller: comma-separated thresholds (default: its own)")
    p.add_argument("--only", default="", help="comma-separated name parts: run only the decisions whose names hold one, "
                                              "or =NAME for one name exactly (the full model always runs)")
    p.add_argument("--window-mb", default=str(WINDOW_MB),
                   help=f"prompt-cache memory the plan-level rows hold, MB; a comma-separated list gives a row per size "
                        f"(default: {WINDOW_MB}, generate's default)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_cached("smollm2-135m", "float32", "cpu")
    n = num_layers(model)
    task, examples = load_task("xsum", limit=args.n, offset=args.offset)
    _, budget = prompt_budget(model, tokenizer, args.new_tokens)
    prompts = [fit_prompt(task, e, tokenizer, budget)[0] for e in examples]
    rows = encode_prompts(tokenizer, prompts)
    protocol = DecodeProtocol(args.new_tokens, eos=eos_ids(model, tokenizer))
    pad, cost = tokenizer.pad_token_id, cached_step_cost(model)
    a30, a28, a24, a20 = full(n), _kept(n, 28), _kept(n, 24), _kept(n, 20)
    other24 = uniform(24, n)  # 24 layers, not nested with the importance family's
    family = importance_family(DROP_ORDER, n, keep=(0, 1))
    statics = {k: _kept(n, k) for k in map(int, args.static.split(","))}
    configs = [("full", Choice(lambda i: a30), {})]
    configs += [(f"static {k}", Choice(lambda i, a=a: a), {}) for k, a in statics.items()]
    configs += [
        ("full, prompt under", Choice(lambda i: a30), {"under": True}),
        ("static 24, prompt under", Choice(lambda i: a24), {"under": True}),
    ]
    for name, x, y in (("nested 20/28", a20, a28), ("non-nested 24/uniform:24", a24, other24)):
        for path in ("groups", "lanes"):
            configs.append((f"mix {name}, {path}", Choice(lambda i, x=x, y=y: x if i % 2 else y, path), {}))
    for target in (24, 27):
        configs.append((f"per-token, mean {target}", Choice(lambda i: a30),
                        {"per_token": (family, _decider(len(family.members), n - target, 0))}))
    half = lambda features, indices: [i % 2 for i in indices]  # noqa: E731  (a 50/50 per-sequence rule)
    variants = tempfile.TemporaryDirectory(prefix="deploy-variants-")
    own = [Allocation(a.layers, n, f"variant {a.spec}", str(Path(variants.name) / a.spec.replace(":", "-")))
           for a in (a24, other24)]
    for variant, of in zip(own, (a24, other24)):  # the model's own weights, copied: timed as a healed variant
        export_allocation(model, "smollm2-135m", of, Path(variant.weights))
        allocation_view(model, variant)  # loaded once, here, not inside a timed row
    configs.append(("static variant 24", Choice(lambda i: own[0]), {}))
    sizes = [int(mb) for mb in args.window_mb.split(",")]
    deployed = []
    windows = [(0, "by batch")] + [(mb * 2**20, "plan-level" if len(sizes) == 1 else f"plan-level {mb} MB") for mb in sizes]
    for name, pair in (("per-seq 24/uniform:24", [a24, other24]), ("per-seq variants 24/uniform:24", own)):
        for window, how in windows:
            deployed.append((f"{name}, {how}", (pair, window, half)))
    if args.controller:  # its candidates and threshold(s); its features come from the deployment's own prefill
        stored, fitted = load_controller(Path(args.controller))
        candidates = pinned_allocations(stored["candidates"], n)
        for tau in [float(t) for t in args.taus.split(",") if t] or [stored["tau"]]:
            rule = controller_rule(fitted, [a.cost for a in candidates], tau)
            for window, how in windows:
                deployed.append((f"controller tau {tau:.2f}, {how}", (candidates, window, rule)))
    drafts = [(a28, 4), (a24, 4), (a24, 2), (a20, 2)]
    for draft, k in drafts:
        configs.append((f"draft {draft.cost}, k {k} (lossless)", Choice(lambda i: a30), {"draft": (draft, k)}))
    wanted = [part for part in args.only.split(",") if part]
    def picked(name: str) -> bool:  # "=NAME" names one decision exactly, other parts match within names
        return not wanted or any(name == part[1:] if part.startswith("=") else part in name for part in wanted)

    configs = [c for c in configs if c[0] == "full" or picked(c[0])]
    deployed = [d for d in deployed if picked(d[0])]
    print(f"# deploy speed: {len(rows)} XSum prompts (rows {args.offset}-{args.offset + len(rows) - 1}), "
          f"at most {args.new_tokens} new tokens, fp32, {args.threads} threads, {platform.processor() or platform.machine()}")
    for cap in map(int, args.caps.split(",")):
        run_config(model, rows[:cap], pad, cap, Choice(lambda i: a30), protocol)  # warm-up at this batch size
        results = {name: run_config(model, rows, pad, cap, chosen_of, protocol, **extra)
                   for name, chosen_of, extra in configs}
        for name, (pair, window, rule) in deployed:
            results[name] = run_deployed(model, tokenizer, prompts, cap, pair, rule, protocol, "auto", cost, window)
        again = run_config(model, rows, pad, cap, configs[0][1], protocol)  # the full model first and last
        print(f"\nbatch cap {cap}: the full model took {results['full']['total_s']:.2f} s first and "
              f"{again['total_s']:.2f} s last (the run-to-run noise); the faster is the baseline")
        base = results["full"] = min(results["full"], again, key=lambda r: r["total_s"])
        print(f"{'decision':<46}{'layers':>7}{'prefill s':>10}{'decode tok/s':>13}{'total s':>9}"
              f"{'prefill x':>10}{'decode x':>9}{'total x':>8}{'vs static':>10}{'dec vs st':>10}{'bound':>7}{'loops':>6}")
        for name, r in results.items():
            rate = r["tokens"] / r["decode_s"]
            static = results.get(("static variant " if "variants" in name else "static ") + str(round(r["mean_layers"])))
            mixes = static and not name.startswith("static")
            hetero = f"{static['total_s'] / r['total_s']:.2f}" if mixes else ""
            decode_hetero = f"{rate / (static['tokens'] / static['decode_s']):.2f}" if mixes else ""
            print(f"{name:<46}{r['mean_layers']:7.2f}{r['prefill_s']:10.2f}{rate:13.1f}{r['total_s']:9.2f}"
                  f"{base['prefill_s'] / r['prefill_s']:10.2f}{rate / (base['tokens'] / base['decode_s']):9.2f}"
                  f"{base['total_s'] / r['total_s']:8.2f}{hetero:>10}{decode_hetero:>10}{n / r['mean_layers']:7.2f}"
                  f"{r.get('loops', ''):>6}")
        print_drafts(results, base)


if __name__ == "__main__":
    main()
