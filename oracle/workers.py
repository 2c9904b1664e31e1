"""Running the scoring of batches in this process, in joblib (loky) worker processes, or on a Dask cluster.

Whatever runs them, results come back in plan order: a batch that finishes
early waits in a buffer until every earlier batch has been handed on, so the
caller writes records in the same order as a single-process run.  A worker
loads the model once, at its entry point (`score_in_worker`); this process
passes its own model explicitly.
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import nullcontext
from functools import lru_cache
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from tqdm.auto import tqdm

from skiporacle.data.errors import BadInput, RunStopped
from skiporacle.eval.batching import split_on_oom
from skiporacle.eval.candidates import Candidate, score_batch
from skiporacle.eval.device import claim_slot, worker_device
from skiporacle.oracle.inputs import load_named_model
from skiporacle.oracle.search import search_rows, search_strategy

T = TypeVar("T")


def in_plan_order(results: Iterable[tuple[int, T]]) -> Iterator[T]:
    """Values of (n, value) pairs, which arrive in any order with n = 0, 1, ... each once, yielded by n.

    Each value is yielded as soon as every value before it has been; later ones wait in a buffer.
    """
    waiting: dict[int, T] = {}
    following = 0
    for n, value in results:
        waiting[n] = value
        while following in waiting:
            yield waiting.pop(following)
            following += 1


def run_calls(fn: Callable[..., T], calls: list[tuple], workers: int, scheduler: str | None) -> Iterator[T]:
    """fn(*call) for every call, yielded in the order of `calls`.

    With workers <= 1 and no scheduler they run here, one after the other;
    otherwise in `workers` joblib processes, or through joblib's Dask backend on
    the cluster at `scheduler`, and are put back in order as they finish.
    """
    if workers <= 1 and scheduler is None:
        for call in calls:
            yield fn(*call)
        return
    yield from in_plan_order(_unordered(fn, calls, workers, scheduler))


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """BadInput (one line) unless `address` is tcp://HOST:PORT, distributed is installed and something accepts a
    TCP connection there within `timeout` seconds: found before the model loads, not after minutes of work."""
    host, sep, port = address.removeprefix("tcp://").rpartition(":")
    if not address.startswith("tcp://") or not sep or not host or not port.isdigit():
        raise BadInput(f"--scheduler {address!r}: expected tcp://HOST:PORT")
    try:
        import distributed  # noqa: F401 - optional: only a --scheduler run needs it
    except ImportError:
        raise BadInput("--scheduler needs Dask: pip install -e '.[dask]'") from None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise BadInput(f"--scheduler {address}: no Dask scheduler answers there ({reason})") from None


def usable_workers(workers: int, batches: int, scheduler: str | None) -> int:
    """The worker processes worth starting: no more than there are batches to score, nor (without a scheduler,
    whose cluster has its own) this machine's cores; a one-line note says when --workers is cut."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    usable = max(1, min(workers, batches, workers if scheduler else cores))
    if usable < workers:
        limits = [f"{batches} batch{'es' if batches != 1 else ''} to score"] + ([] if scheduler else [f"{cores} cores"])
        print(f"skiporacle: --workers {workers} cut to {usable} ({', '.join(limits)})")
    return usable


WORKER_RESTARTS = 2  # how often the batches of a worker that died run again on new workers before the run stops


def _unordered(fn, calls, workers, scheduler) -> Iterator[tuple[int, object]]:
    """(n, fn(*calls[n])) pairs in the order the workers finish them, each n once.

    A worker process that dies (killed, out of memory) takes its batch with it: the batches not yet finished
    run again on new workers, up to WORKER_RESTARTS times; then RunStopped.  A Dask cluster reschedules a
    lost worker's tasks itself, so there only a task that killed too many workers, or a lost scheduler, stops.
    """
    from joblib import Parallel, delayed, parallel_config

    lost = _lost_worker_errors(scheduler)
    left = dict(enumerate(calls))
    for attempt in range(WORKER_RESTARTS + 1):
        try:
            client = _client(scheduler) if scheduler else nullcontext()
            with client, parallel_config(backend="dask" if scheduler else "loky", n_jobs=workers):
                for n, value in Parallel(return_as="generator_unordered")(
                        delayed(_indexed)(n, fn, *call) for n, call in list(left.items())):
                    del left[n]
                    yield n, value
            return
        except lost as err:
            lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            reason = next((line for line in lines if "exit code" in line), lines[0]).strip()
            if attempt == WORKER_RESTARTS or scheduler:
                raise RunStopped(f"workers lost ({reason}); {len(left)} batch(es) not scored: run the same command "
                                 "with --resume to finish them") from None
            print(f"skiporacle: a worker process died ({reason}); {len(left)} unfinished batch(es) run again on "
                  "new workers", file=sys.stderr)


def _lost_worker_errors(scheduler: str | None) -> tuple[type[BaseException], ...]:
    """The exceptions that mean a worker (or the cluster) was lost, not that the work itself failed."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    if not scheduler:
        return (TerminatedWorkerError,)
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    return (TerminatedWorkerError, KilledWorker, CommClosedError)


def _client(scheduler: str):
    from distributed import Client  # joblib's dask backend runs on the current client

    return Client(scheduler)


def _indexed(n, fn, *args):
    return n, fn(*args)


def load_model_cached(name: str, dtype: str, device: str = "cpu"):
    """(model, tokenizer), loaded once per worker process: joblib and Dask workers reuse it across batches."""
    return _loaded(name, dtype, str(device))


@lru_cache(maxsize=2)
def _loaded(name: str, dtype: str, device: str):
    return load_named_model(name, dtype, device)


def score_rows(model, tokenizer, settings, rows: list[list[int]], references: list[list[str]], allocations: list,
               threads: int, progress: bool) -> list[list[Candidate]]:
    """Score one planned batch of prompt token rows with `threads` torch threads."""
    torch.set_num_threads(threads)
    bar = tqdm(total=len(rows) * len(allocations), disable=not progress, unit="gen", desc="generate")

    def score(part: list[int]) -> list[list[Candidate]]:
        return score_batch(model, tokenizer, [rows[i] for i in part], [references[i] for i in part], allocations,
                           settings.metric, settings.protocol, bar)

    try:
        return split_on_oom(score, range(len(rows)))  # a batch out of GPU memory runs in halves, in order
    finally:
        bar.close()


def score_in_worker(device: str, claims: str | None, workers: int, settings, *call) -> list[list[Candidate]]:
    """A worker's entry point: `score_rows` with the model named by `settings`, loaded once per process.

    With `device` "cuda" the worker takes GPU k mod the visible count, k being the
    worker number it claims in the folder `claims` (see `device.claim_slot`).
    """
    if device == "cuda":
        device = worker_device(device, claim_slot(claims, workers), torch.cuda.device_count())
    model, tokenizer = load_model_cached(settings.model, settings.dtype, device)
    return scorer(settings)(model, tokenizer, settings, *call)


def scorer(settings):
    """The function that scores a planned batch under `settings`: `score_rows`, or `search.search_rows` for a
    per-sequence search (same arguments, the candidate list replaced by the search plan)."""

    return search_rows if search_strategy(getattr(settings, "spaces", ())) else score_rows
