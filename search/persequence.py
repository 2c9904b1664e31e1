"""Per-sequence search over layer subsets: greedy elimination and a budgeted random descent.

Both walk down from the full model one layer at a time, so a sequence's search
is a path of nested allocations with consecutive costs, ending where no
proposal qualifies.  They are pure: the caller judges proposals (whether a
proposal qualifies, and a key ordering the qualifying ones) and the strategies
only propose and accept.  Sequences advance in lockstep, so that one step's
proposals of every sequence can be judged in one batched call:

    paths = [start(n) for each sequence]
    while not all(p.done for p in paths):
        proposals = [propose(p) for p in paths]          # [] for a finished path
        paths = [advance(p, judge(p, props), ...) ...]

- greedy elimination (`greedy_proposals`): every allowed single-layer drop of
  the current allocation, every step; the best qualifying one is taken.
- random descent (`random_proposals`): `width` untried single-layer drops drawn
  at random; the best qualifying one is taken, else another draw of untried
  drops of the same allocation; it stops when every drop was tried or when the
  sequence has had `budget` evaluations (Dr.LLM's per-sample budget is 50).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from skiporacle.search.allocation import Allocation, full

STRATEGIES = ("greedy", "random-search")


@dataclass(frozen=True)
class Judged:
    """A proposal and its verdict; among qualifying proposals the smallest `key` is taken."""

    allocation: Allocation
    qualifies: bool
    key: tuple[float, ...]


@dataclass(frozen=True)
class Path:
    """One sequence's search so far: its current allocation and the proposals it accepted, in order."""

    current: Allocation
    accepted: tuple[Judged, ...] = ()
    tried: frozenset[tuple[int, ...]] = field(default_factory=frozenset)  # judged drops of `current`
    evaluations: int = 0
    done: bool = False


def start(num_layers: int) -> Path:
    return Path(full(num_layers))


def named(layers: Sequence[int], num_layers: int) -> Allocation:
    """The allocation of these layers, named by its layer list."""
    layers = tuple(sorted(layers))
    return Allocation(layers, num_layers, ",".join(map(str, layers)))


def drops(path: Path, keep: Sequence[int], floor: int) -> list[Allocation]:
    """Every single-layer drop of the current allocation that keeps `keep` and at least `floor` layers."""
    current = path.current
    if current.cost <= floor:
        return []
    return [named([l for l in current.layers if l != layer], current.num_layers)
            for layer in current.layers if layer not in keep]


def greedy_proposals(path: Path, keep: Sequence[int], floor: int) -> list[Allocation]:
    """Greedy elimination: all drops of the current allocation (none once the path is done)."""
    return [] if path.done else drops(path, keep, floor)


def random_proposals(path: Path, keep: Sequence[int], floor: int, width: int, budget: int,
                     rng: random.Random) -> list[Allocation]:
    """Random descent: up to `width` untried drops, never past `budget` evaluations in all."""
    if path.done:
        return []
    untried = [a for a in drops(path, keep, floor) if a.layers not in path.tried]
    room = min(width, budget - path.evaluations)
    return rng.sample(untried, min(room, len(untried))) if room > 0 else []


def advance(path: Path, judged: Sequence[Judged], exhausted: bool) -> Path:
    """Take the best qualifying proposal (smallest key, then fewest layers, then smallest layer list).

    Without one, the path ends when `exhausted` (nothing left to propose from
    the current allocation, or no evaluations left), else it keeps its
    allocation and remembers what was tried.  An empty `judged` ends the path.
    """
    evaluations = path.evaluations + len(judged)
    qualifying = [j for j in judged if j.qualifies]
    if qualifying:
        best = min(qualifying, key=lambda j: (j.key, j.allocation.cost, j.allocation.layers))
        return Path(best.allocation, path.accepted + (best,), frozenset(), evaluations)
    tried = path.tried | {j.allocation.layers for j in judged}
    return replace(path, tried=tried, evaluations=evaluations, done=exhausted or not judged)


def random_advance(path: Path, judged: Sequence[Judged], keep: Sequence[int], floor: int, budget: int) -> Path:
    """`advance` for random descent: the path ends once its `budget` of evaluations is spent or every drop of
    its (new) current allocation has been tried."""
    moved = advance(path, judged, exhausted=False)
    spent = moved.evaluations >= budget or all(a.layers in moved.tried for a in drops(moved, keep, floor))
    return replace(moved, done=True) if not moved.done and spent else moved


def complete(path: Path, drop_order: Sequence[int], costs: Sequence[int]) -> dict[int, Allocation]:
    """The path's allocation at each cost in `costs`: a member of the path where it reached that cost, else
    its last allocation with more layers dropped in `drop_order` (layers it no longer has are passed over).

    Costs above the full model's, below 1, or below what `drop_order` can reach are refused.
    """
    last = path.current
    members = {last.num_layers: full(last.num_layers), **{j.allocation.cost: j.allocation for j in path.accepted}}
    order = [l for l in drop_order if l in last.layers]
    out = {}
    for cost in costs:
        if not max(1, last.cost - len(order)) <= cost <= last.num_layers:
            raise ValueError(f"cost {cost} outside 1..{last.num_layers}")
        if cost >= last.cost:
            out[cost] = members[cost]
        else:
            dropped = set(order[: last.cost - cost])
            out[cost] = named([l for l in last.layers if l not in dropped], last.num_layers)
    return out
