"""Running the scoring of batches in this process, in joblib (loky) worker processes, or on a Dask cluster.

Whatever runs them, results come back in plan order: a batch that finishes
early waits in a buffer until every earlier batch has been handed on, so the
caller writes records in the same order as a single-process run.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable, Iterator, TypeVar

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


def _unordered(fn, calls, workers, scheduler) -> Iterator[tuple[int, object]]:
    """(n, fn(*calls[n])) pairs in the order the workers finish them."""
    from joblib import Parallel, delayed, parallel_config

    if scheduler:
        from distributed import Client  # joblib's dask backend runs on the current client

    client = Client(scheduler) if scheduler else nullcontext()
    with client, parallel_config(backend="dask" if scheduler else "loky", n_jobs=workers):
        yield from Parallel(return_as="generator_unordered")(
            delayed(_indexed)(n, fn, *call) for n, call in enumerate(calls)
        )


def _indexed(n, fn, *args):
    return n, fn(*args)
