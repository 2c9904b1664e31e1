"""The oracle run: data -> candidate allocations -> batched scoring -> records -> summary.

Sequences are scored in prefill batches planned once from all prompts, so a
sequence's batch, and therefore every floating-point result, is the same
whether the run is resumed, split over workers, or done in one go.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.eval.candidates import Candidate, score_candidates
from skiporacle.eval.generate import encode_prompts, plan_batches
from skiporacle.oracle.select import cheapest_identical, cheapest_matching
from skiporacle.oracle.records import IMPORTANCE, SETTINGS, SUMMARY, append_records, check_writable, open_run, pin_candidates, write_json_atomic
from skiporacle.oracle.ranking import cached_drop_order, read_ranking
from skiporacle.oracle.setup import RunInputs, load_inputs, load_model_cached
from skiporacle.oracle.summary import resummarize, summarize
from skiporacle.oracle.workers import run_calls
from skiporacle.search.allocation import Allocation, full
from skiporacle.search.spaces import (
    early_exit_space,
    file_space,
    healed_space,
    importance_space,
    pinned_candidates,
    random_space,
    uniform_space,
)

DEFAULT_HEALED = "models"  # where `make heal` writes healed variants


@dataclass(frozen=True)
class OracleSettings:
    """Everything that determines the records of a run (stored as its resume fingerprint)."""

    model: str
    task: str
    data_file: str | None
    input_field: str | None
    reference_field: str | None
    id_field: str | None
    limit: int
    offset: int
    spaces: tuple[str, ...]
    budgets: tuple[int, ...]
    metric: str
    max_new_tokens: int
    dtype: str
    seed: int
    tolerance: float
    calibration: int
    prompt_under_allocation: bool
    batch_size: int = 0  # most sequences per batch; 0 = chosen from model and prompt sizes
    importance_file: str | None = None  # a stored ranking (importance.json) instead of ranking on calibration rows
    first_token: str = "allocation"  # who predicts the first generated token: "allocation" or "full"
    instruction: str | None = None  # chat models: the instruction before the input instead of the task's
    template: str | None = None  # base models: the prompt, with {input} standing for the input text


# Fields added after run folders were first written; a settings.json without one was made with its default.
_ADDED_LATER = ("first_token", "instruction", "template")


def build_candidates(settings: OracleSettings, inputs: RunInputs, out: Path, progress: bool) -> list[Allocation]:
    """Candidate allocations of all spaces, deduplicated by layer set; the full model comes last."""
    n = inputs.num_layers
    if settings.budgets and max(settings.budgets) > n:
        raise BadInput(f"budget {max(settings.budgets)} out of range: the model has {n} layers (use 1-{n})")
    allocations: list[Allocation] = []
    for space in settings.spaces:
        name, _, arg = space.partition(":")
        if name == "uniform":
            allocations += uniform_space(settings.budgets, n)
        elif name == "early-exit":
            allocations += early_exit_space(settings.budgets, n)
        elif name == "random":
            allocations += random_space(settings.budgets, n, settings.seed)
        elif name == "importance":
            allocations += importance_space(settings.budgets, _drop_order(settings, inputs, out, progress))
        elif name == "file":
            allocations += file_space(arg, n)
        elif name == "healed":
            evaluated = {f"{settings.task}:{i}" for i in inputs.ids}
            texts = {content_hash(source) for source in inputs.sources}
            allocations += healed_space(arg or DEFAULT_HEALED, n, settings.model, evaluated, texts)
    seen, unique = {(full(n).layers, "")}, []
    for allocation in allocations:
        if (allocation.layers, allocation.weights) not in seen:
            seen.add((allocation.layers, allocation.weights))
            unique.append(allocation)
    return unique + [full(n)]


def _drop_order(settings: OracleSettings, inputs: RunInputs, out: Path, progress: bool) -> tuple[int, ...]:
    """The importance drop order: from `settings.importance_file`, else measured once per run folder on the calibration split."""
    if settings.importance_file:
        stored = read_ranking(Path(settings.importance_file), settings.model, inputs.num_layers)
        write_json_atomic(out / IMPORTANCE, {**stored, "source": settings.importance_file})
        return tuple(stored["drop_order"])
    if not inputs.calibration_prompts:
        raise BadInput("the importance space needs calibration examples after the evaluated ones; lower --limit or --offset")
    return cached_drop_order(out / IMPORTANCE, settings.model, settings.dtype, inputs.calibration_ids,
                             inputs.calibration_prompts, settings.max_new_tokens, progress)


def score_batch(settings: OracleSettings, prompts: list[str], references: list[list[str]], allocations: list[Allocation], threads: int, progress: bool) -> list[list[Candidate]]:
    """Score one prefill batch with `threads` torch threads (runs in the main process or a worker)."""
    torch.set_num_threads(threads)
    model, tokenizer = load_model_cached(settings.model, settings.dtype)
    return score_candidates(
        model, tokenizer, prompts, references, allocations, settings.metric, settings.max_new_tokens,
        settings.prompt_under_allocation, progress, first_token=settings.first_token,
    )


def make_record(example_id: str, prompt: str, references: list[str], candidates: list[Candidate], tolerance: float) -> dict:
    """The JSON record of one sequence; the last candidate is the full model."""
    *skipped, reference = candidates
    rows = [
        {
            "spec": c.allocation.spec,
            "layers": list(c.allocation.layers),
            "cost": c.allocation.cost,
            "fraction": c.allocation.fraction,
            "output": c.output,
            "tokens": len(c.tokens),
            "score": c.score,
            "identical": c.tokens == reference.tokens,
        }
        for c in skipped
    ]
    scores = np.array([[c.score for c in candidates]])
    costs = [c.allocation.cost for c in candidates]
    identical = np.array([[c.tokens == reference.tokens for c in candidates]])
    specs = [r["spec"] for r in rows] + ["all"]
    return {
        "id": example_id,
        "prompt": prompt,
        "references": references,
        "full": {"output": reference.output, "tokens": len(reference.tokens), "score": reference.score,
                 "cost": reference.allocation.cost, "token_ids": list(reference.tokens)},
        "candidates": rows,
        "choice": {
            "tolerance": specs[cheapest_matching(scores, costs, scores[:, -1], tolerance)[0]],
            "exact": specs[cheapest_identical(identical, scores, costs)[0]],
        },
    }


def run_oracle(
    settings: OracleSettings, out: Path, resume: bool = False, workers: int = 1, scheduler: str | None = None,
    progress: bool = True, threads: int | None = None,
) -> dict:
    """Run (or resume) the oracle into `out`; return the summary (also written to summary.json).

    Records are appended in the order of the batch plan, whatever order workers
    finish in.  `threads`: torch threads per scoring process (default: this
    process's count, or cores / workers with workers); summary.json records it.
    """
    start = time.perf_counter()
    check_writable(out)
    inputs = load_inputs(settings)
    done = open_run(out, _fingerprint(settings, out if resume else None), resume)
    allocations = build_candidates(settings, inputs, out, progress)
    pin_candidates(out, pinned_candidates(allocations))
    model, tokenizer = load_model_cached(settings.model, settings.dtype)
    lengths = [len(r) for r in encode_prompts(tokenizer, inputs.prompts)]
    batches = plan_batches(lengths, model.config.get_text_config().num_attention_heads, settings.batch_size)
    todo = [b for b in batches if any(inputs.ids[i] not in done for i in b)]
    if not todo and (out / SUMMARY).exists():  # a finished run resumed: nothing to score, keep its timings
        return {**resummarize(out), "resumed_sequences": len(done)}
    resumed = len(done)
    bar = tqdm(total=len(inputs.ids), initial=resumed, unit="seq", desc="oracle", disable=not progress)
    in_process = workers <= 1 and scheduler is None
    saved_threads = torch.get_num_threads()
    if threads is None:  # all of this process's threads, or the cores shared among the workers
        threads = saved_threads if in_process else max(1, (os.cpu_count() or 1) // max(workers, 1))
    scored = inputs.scored_references()
    calls = [(settings, [inputs.prompts[i] for i in batch], [scored[i] for i in batch], allocations,
              threads, progress and in_process) for batch in todo]
    try:
        for batch, table in zip(todo, run_calls(score_batch, calls, workers, scheduler)):
            records = [
                make_record(inputs.ids[i], inputs.prompts[i], list(inputs.references[i]), row, settings.tolerance)
                for i, row in zip(batch, table)
                if inputs.ids[i] not in done
            ]
            append_records(out, records)
            done.update(r["id"] for r in records)
            bar.update(len(records))
    finally:
        torch.set_num_threads(saved_threads)  # score_batch set it in this process too
    bar.close()
    summary = summarize(out, settings_dict=asdict(settings), wall_seconds=time.perf_counter() - start,
                        extra={"workers": workers, "resumed_sequences": resumed, "machine": _machine(threads)})
    return summary


def _fingerprint(settings: OracleSettings, resumed: Path | None = None) -> dict:
    """The settings as stored in settings.json (they determine every candidate and record).

    Resuming the run in `resumed`, a field added later that its settings.json lacks
    is left out while at its default, so a run older than the field still resumes.
    """
    stored = json.loads(json.dumps(asdict(settings)))
    path = resumed / SETTINGS if resumed is not None else None
    if path is None or not path.exists():
        return stored
    existing = json.loads(path.read_text(encoding="utf-8"))
    defaults = {f.name: f.default for f in fields(OracleSettings)}
    return {k: v for k, v in stored.items() if k in existing or k not in _ADDED_LATER or v != defaults[k]}


def _machine(threads: int) -> dict:
    """Where the run was scored; `torch_threads` is the torch thread count of each scoring process."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": threads}
