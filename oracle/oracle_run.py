"""The oracle run: data -> candidate allocations -> batched scoring -> records -> summary.

The model is loaded once here; the prompts are tokenised once and planned once
into prefill batches, and each batch's token rows go to eval as they are, so a
sequence's batch, and therefore every floating-point result, is the same
whether the run is resumed, split over workers, or done in one go.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from skiporacle.eval.batching import plan_for
from skiporacle.eval.device import describe
from skiporacle.eval.generate import encode_prompts
from skiporacle.oracle.candidate_list import build_candidates, pinned_candidates
from skiporacle.oracle.inputs import load_inputs, load_named_model
from skiporacle.oracle.records import SUMMARY, append_records, check_writable, open_run, pin_candidates
from skiporacle.oracle.schema import SequenceRecord, make_record
from skiporacle.oracle.oracle_settings import OracleSettings, fingerprint
from skiporacle.oracle.summary import resummarize, summarize
from skiporacle.oracle.search import check_search, search_plan, search_strategy
from skiporacle.oracle.workers import run_calls, score_in_worker, scorer, usable_workers


def run_oracle(
    settings: OracleSettings, out: Path, resume: bool = False, workers: int = 1, scheduler: str | None = None,
    progress: bool = True, threads: int | None = None, device: str = "cpu",
) -> dict:
    """Run (or resume) the oracle into `out`; return the summary (also written to summary.json).

    Records are appended in the order of the batch plan, whatever order workers
    finish in.  `threads`: torch threads per scoring process (default: this
    process's count, or cores / workers with workers); summary.json records it.
    `device`: where the model runs (never part of the settings, so a run resumes
    on another machine); with "cuda" and workers, worker k takes GPU k mod the
    visible count.
    """
    start = time.perf_counter()
    check_writable(out)
    model, tokenizer = load_named_model(settings.model, settings.dtype, str(device))
    inputs = load_inputs(settings, model, tokenizer)
    rows = encode_prompts(tokenizer, inputs.prompts)
    strategy = search_strategy(settings.spaces)
    if strategy:
        check_search(settings, model, max(map(len, rows)) + settings.max_new_tokens)
    done = open_run(out, fingerprint(settings, out if resume else None), resume)
    if strategy:  # per-sequence search: the batches' "candidates" are the search plan
        plan = search_plan(strategy, settings, inputs, out, model, tokenizer, progress)
        work, pinned = plan, plan.pinned
    else:
        work = build_candidates(settings, inputs, out, model, tokenizer, progress)
        pinned = pinned_candidates(work)
    pin_candidates(out, pinned)
    # On a GPU, room is kept for a worker's own copy of the weights, so that the plan is the same with or without workers.
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = plan_for(model, [len(r) for r in rows], settings.batch_size, spare=weights)
    todo = [b for b in batches if any(inputs.ids[i] not in done for i in b)]
    if not todo and (out / SUMMARY).exists():  # a finished run resumed: nothing to score, keep its timings
        return {**resummarize(out), "resumed_sequences": len(done)}
    resumed = len(done)
    saved_threads = torch.get_num_threads()
    if threads is None:  # all of this process's threads, or the cores shared among the workers asked for
        threads = saved_threads if workers <= 1 and scheduler is None else max(1, (os.cpu_count() or 1) // workers)
    if workers > 1:  # after the threads: a resumed run with fewer batches left scores them with the same count
        workers = usable_workers(workers, len(todo), scheduler)
    bar = tqdm(total=len(inputs.ids), initial=resumed, unit="seq", desc="oracle", disable=not progress)
    in_process = workers <= 1 and scheduler is None
    scored = inputs.scored_references()
    calls = [(settings, [rows[i] for i in batch], [scored[i] for i in batch], work, threads,
              progress and in_process) for batch in todo]
    claims = None if in_process or str(device) != "cuda" else tempfile.mkdtemp(prefix="skiporacle-gpus-")
    score = partial(scorer(settings), model, tokenizer) if in_process else partial(score_in_worker, str(device), claims,
                                                                              workers)
    try:
        for batch, table in zip(todo, run_calls(score, calls, workers, scheduler)):
            records = [
                _record(inputs.ids[i], inputs.prompts[i], list(inputs.references[i]), row, settings.tolerance)
                for i, row in zip(batch, table)
                if inputs.ids[i] not in done
            ]
            append_records(out, records)
            done.update(r.id for r in records)
            bar.update(len(records))
    finally:
        torch.set_num_threads(saved_threads)  # score_rows set it in this process too
        if claims is not None:
            shutil.rmtree(claims, ignore_errors=True)
    bar.close()
    return summarize(out, settings_dict=asdict(settings), wall_seconds=time.perf_counter() - start,
                     extra={"workers": workers, "resumed_sequences": resumed, "machine": _machine(threads, device)})


def _record(example_id: str, prompt: str, references: list[str], row, tolerance: float) -> SequenceRecord:
    """A sequence's record from its scored candidates, or from a search's (candidates, search statistics)."""
    if isinstance(row, tuple):
        candidates, search = row
        return make_record(example_id, prompt, references, candidates, tolerance, search)
    return make_record(example_id, prompt, references, row, tolerance)


def _machine(threads: int, device: str) -> dict:
    """Where the run was scored; `torch_threads` is the torch thread count of each scoring process, `device`
    the kind of device the model ran on (with a GPU's name and the visible count)."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": threads, **describe(device)}
