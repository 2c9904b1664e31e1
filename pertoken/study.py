"""`skiporacle pertoken`: does a learned per-token controller beat fixed skip rates at equal compute?

The seed paper (Glavas et al. 2024) found that it does not.  This study reproduces the question with
real skipping, on rows it never trained on:

1. evaluation rows (`--offset`, `--limit`) and training rows (`--train-offset`, `--train-limit`) of one
   task, refused if any prompt is shared by content; prompts built exactly like the oracle's;
2. the full model's greedy outputs on both (default first-token protocol "allocation");
3. two nested families: the importance family (layers dropped in the ranking's order, layers
   0..probe_layer never dropped) and the early-exit family;
4. the per-token oracle on the evaluation rows: teacher-forced on the full model's output, each token's
   cheapest member whose next token is the full model's (engine: `pertoken.token_labels.per_token_labels`);
5. the probe (`pertoken/probe.py`) trained on the training rows' labels of the importance family and
   judged against the evaluation rows' labels;
6. generation under the probe at each tau with real skipping (`pertoken.token_labels.generate_per_token`);
7. the fixed-rate baseline importance:B (the family's member of B layers) with the ordinary engine, and
   per tau point the paired difference controller - fixed rate at the point's mean layers per token.

Cost is layers per generated token, counted in whole layers (`layers_run`).  A skipped layer still
computes its key/value projections for later tokens (about 6 % of a layer on SmolLM2-135M); that is
not counted, so the controller's cost is slightly understated.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from skiporacle.pertoken.study_stats import cheapest_correct, oracle_block, tau_point, verdict
from skiporacle.pertoken.study_settings import Study, check_rows, refuse_shared
from skiporacle.pertoken.probe import fit_probe, member_accuracy
from skiporacle.data.errors import BadInput
from skiporacle.data.files import package_versions, write_json_atomic
from skiporacle.data.fingerprint import content_hash
from skiporacle.oracle.bootstrap import mean_ci, resample_rows
from skiporacle.pertoken.study_report import plot_pertoken
from skiporacle.eval.generate import encode_prompts, generate, generate_candidates, output_text, with_model_eos
from skiporacle.eval.metrics import sequence_scores
from skiporacle.eval.ranking import read_ranking
from skiporacle.oracle.inputs import load_inputs, load_named_model
from skiporacle.oracle.records import check_writable
from skiporacle.search.spaces import parse_budgets
from skiporacle.pertoken.token_labels import kv_fill_fraction, per_token_labels
from skiporacle.pertoken.token_generation import generate_per_token
from skiporacle.search.families import early_exit_family, importance_family
from skiporacle.eval.batching import plan_for
from skiporacle.eval.device import describe

RESULT = "pertoken.json"
FIGURE = "pertoken.png"
NEAR_TIE = 1e-4  # a top-2 logit margin under this can flip with float rounding
LAYERSKIP = {"source": "LayerSkip (Elhoushi et al. 2024): per-token early-exit oracle", "model": "Llama-2-7B",
             "mean_layers": 23.45, "num_layers": 32, "percent_layers": 73.3}


class _Phases:
    """Wall time per phase, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def run_pertoken(settings, study: Study, out: Path, device: str, load=None) -> dict:
    """Run the study into `out` (pertoken.json, pertoken.png) and return the result."""

    phase = _Phases()
    check_writable(out)
    check_rows(settings, study)
    with phase("load_model"):
        model, tokenizer = (load or load_named_model)(settings.model, settings.dtype, device)
    evaluated = load_inputs(replace(settings, calibration=0), model, tokenizer)
    training = load_inputs(replace(settings, offset=study.train_offset, limit=study.train_limit, calibration=0),
                           model, tokenizer)
    refuse_shared(evaluated.prompts, training.prompts, "prompt")
    n = evaluated.num_layers
    if not 0 <= study.probe_layer <= n - 2:
        raise BadInput(f"--probe-layer {study.probe_layer}: the model has {n} layers; use 0-{n - 2} "
                       "(layers 0..probe-layer always run, and a cheaper member needs one more layer to drop)")
    budgets = [b for b in parse_budgets(study.budgets, n) if b < n]
    if any(b <= study.probe_layer for b in budgets):
        raise BadInput(f"--budgets {study.budgets!r}: every budget must keep the probe's layers 0-{study.probe_layer} "
                       f"(use {study.probe_layer + 1}-{n})")
    ranking = read_ranking(Path(study.importance), settings.model, n)

    family = importance_family(tuple(ranking["drop_order"]), n, keep=tuple(range(study.probe_layer + 1)))
    exits = early_exit_family(n)
    costs = [a.cost for a in family.members]
    by_cost = {a.cost: a for a in family.members}
    statics = [by_cost[b] for b in budgets]
    protocol, pad = with_model_eos(settings.protocol, model, tokenizer), tokenizer.pad_token_id
    eos = protocol.eos
    batch = settings.batch_size
    rows_eval, rows_train = encode_prompts(tokenizer, evaluated.prompts), encode_prompts(tokenizer, training.prompts)
    references = evaluated.scored_references()

    def scores_of(token_lists) -> np.ndarray:
        return np.array(sequence_scores(settings.metric, [output_text(tokenizer, t, eos) for t in token_lists],
                                        references), dtype=np.float64)

    with phase("full_outputs"):
        full_train = [list(g.tokens) for g in generate(model, tokenizer, training.prompts, family.members[0],
                                                       protocol, progress=True, max_batch=batch)]
        full_eval = [list(g.tokens) for g in generate(model, tokenizer, evaluated.prompts, family.members[0],
                                                      protocol, progress=True, max_batch=batch)]
    full_scores = scores_of(full_eval)
    with phase("labels"):
        kwargs = {"batch_size": batch} if batch else {}
        train_labels = per_token_labels(model, rows_train, full_train, family, study.probe_layer, **kwargs)
        eval_labels = per_token_labels(model, rows_eval, full_eval, family, study.probe_layer, **kwargs)
        exit_labels = per_token_labels(model, rows_eval, full_eval, exits, study.probe_layer, **kwargs)
    with phase("probe"):
        probe = fit_probe(train_labels.features, train_labels.correct, train_labels.sequence)
    prob_eval = probe.probabilities(eval_labels.features)
    with phase("fixed_rate"):
        generated = generate_candidates(model, tokenizer, evaluated.prompts, statics, protocol,
                                        progress=True, max_batch=batch)
    fixed_tokens = [[list(g[k].tokens) for g in generated] for k in range(len(statics))] + [full_eval]
    fixed_scores = np.vstack([scores_of(t) for t in fixed_tokens[:-1]] + [full_scores[None]])  # [K + 1, S], full last
    fixed_layers = [float(b) for b in budgets] + [float(n)]
    S = len(evaluated.ids)
    rows = resample_rows(evaluated.ids, study.seed, study.resamples)
    points, kv_fill = [], kv_fill_fraction(model)
    with phase("controller"):
        for tau in tqdm(study.taus, desc="per-token controller", unit="tau"):
            gen = _generate_planned(generate_per_token, model, rows_eval, family, _decider(probe, tau),
                                    study.probe_layer, protocol, pad, batch)
            points.append(tau_point(tau, gen, scores_of(gen.tokens), full_eval, (fixed_layers, fixed_scores), rows,
                                    n, probe.decide(eval_labels.features, tau), eval_labels.correct, costs, kv_fill))
    cheapest = cheapest_correct(eval_labels.correct)
    margin = np.asarray(eval_labels.margin, dtype=np.float64)
    result = {
        "study": "per-token controller vs fixed rates at equal compute (issue #14 A)",
        "model": settings.model, "task": evaluated.task.name, "metric": settings.metric, "num_layers": n,
        "settings": {**asdict(settings), **asdict(study), "budgets": budgets, "first_token": protocol.first_token,
                     "drop_order": list(ranking["drop_order"]), "near_tie_margin": NEAR_TIE},
        "rows": {"evaluation": _rows(evaluated), "training": _rows(training)},
        "families": {"importance": [list(a.layers) for a in family.members],
                     "early_exit": [list(a.layers) for a in exits.members]},
        "full_model": {"mean_score": float(full_scores.mean()), "mean_score_ci95": mean_ci(full_scores, rows),
                       "scores": full_scores.tolist(), "tokens": int(sum(map(len, full_eval))), "token_ids": full_eval,
                       "training_tokens": int(sum(map(len, full_train)))},
        "oracle": {"importance": oracle_block(eval_labels.correct, eval_labels.sequence, S, costs, n, rows),
                   "early_exit": oracle_block(exit_labels.correct, exit_labels.sequence, S,
                                              [a.cost for a in exits.members], n, rows),
                   "layerskip_reference": LAYERSKIP},
        "near_ties": {"margin_below": NEAR_TIE, "tokens": int((margin < NEAR_TIE).sum()), "of": int(len(margin)),
                      "percent": float(100 * (margin < NEAR_TIE).mean()) if len(margin) else 0.0},
        "probe": {"kind": "per-member L2 logistic regression on the standardised hidden state after layer "
                          f"{study.probe_layer} (the paper: a linear layer with Gumbel-softmax)",
                  "alpha": probe.alpha, "training_tokens": int(len(train_labels.correct)),
                  "evaluation_tokens": int(len(eval_labels.correct)),
                  "members": member_accuracy(prob_eval, eval_labels.correct, costs),
                  "oracle_member_share": np.bincount(cheapest, minlength=len(costs)).tolist()},
        "tau_points": points,
        "fixed_rate": [{"spec": a.spec, "layers": float(c), "percent_layers": 100 * c / n,
                        "mean_score": float(s.mean()), "mean_score_ci95": mean_ci(s, rows), "scores": s.tolist(),
                        "token_ids": t}
                       for a, c, s, t in zip(statics + [family.members[0]], fixed_layers, fixed_scores, fixed_tokens)],
        "bootstrap": {"resamples": study.resamples, "seed": study.seed, "method": "percentile, over sequences"},
        "cost_note": "layers per generated token in whole layers; a skipped layer's key/value fill (its input norm "
                     f"and key/value projections, {100 * kv_fill:.1f} % of a layer here) is counted only in the "
                     "'_charged' figures, which the verdict also requires",
        "kv_fill_fraction": kv_fill,
    }
    result["verdict"] = verdict(points)
    result["wall_seconds"] = phase.seconds
    result["machine"] = _machine(device)
    result["versions"] = package_versions()
    write_json_atomic(out / RESULT, result)
    plot_pertoken(out / FIGURE, result)
    return result


def _generate_planned(generate_per_token, model, rows, family, decide, probe_layer, protocol, pad, max_batch: int):
    """`generate_per_token` over the batches the ordinary engine would plan for these prompts, joined in order."""

    tokens, members, layers_run = [None] * len(rows), [None] * len(rows), [None] * len(rows)
    for part in plan_for(model, [len(r) for r in rows], max_batch):
        gen = generate_per_token(model, [rows[i] for i in part], family, decide, probe_layer, protocol, pad)
        for k, i in enumerate(part):
            tokens[i], members[i], layers_run[i] = gen.tokens[k], gen.members[k], gen.layers_run[k]
    return type(gen)(tokens, members, layers_run)


def _decider(probe, tau: float):
    """decide(hidden [n, D] tensor) -> member index [n] (LongTensor on the hidden state's device)."""

    def decide(hidden: torch.Tensor) -> torch.Tensor:
        chosen = probe.decide(hidden.detach().float().cpu().numpy(), tau)
        return torch.as_tensor(chosen, dtype=torch.long, device=hidden.device)

    return decide


def _rows(inputs) -> dict:
    return {"ids": list(inputs.ids), "content_hashes": [content_hash(s) for s in inputs.sources],
            "prompt_hashes": [content_hash(p) for p in inputs.prompts]}


def _machine(device: str) -> dict:

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            **describe(device)}
