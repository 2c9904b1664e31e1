"""Nested families of allocations for per-token decisions: each member drops one more layer than the one before.

A token decided per token runs one member; members[0] is the full model.  Pure: no model is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from skiporacle.data.errors import BadInput
from skiporacle.search.allocation import Allocation, early_exit


@dataclass(frozen=True)
class Family:
    """Nested allocations: members[0] is the full model, each next member drops one more layer."""

    name: str  # "importance" or "early-exit"
    members: tuple[Allocation, ...]


def importance_family(drop_order: Sequence[int], num_layers: int, keep: Sequence[int] = ()) -> Family:
    """All layers, then without drop_order[0], then also without drop_order[1], ... down to one layer.

    Layers in `keep` are never dropped (passed over in the order).  Member specs
    are "importance:B", B the layers kept.
    """
    if len(set(drop_order)) != len(drop_order) or not all(0 <= l < num_layers for l in drop_order):
        raise BadInput(f"drop order {list(drop_order)}: layers must be distinct and in 0-{num_layers - 1}")
    order = [int(l) for l in drop_order if l not in set(keep)]
    layers = list(range(num_layers))
    members = [Allocation(tuple(layers), num_layers, f"importance:{num_layers}")]
    for layer in order:
        if len(layers) == 1:
            break
        layers.remove(layer)
        members.append(Allocation(tuple(layers), num_layers, f"importance:{len(layers)}"))
    return Family("importance", tuple(members))


def early_exit_family(num_layers: int) -> Family:
    """exit:L for L = num_layers .. 1 (members[0] runs all layers)."""
    return Family("early-exit", tuple(early_exit(L, num_layers) for L in range(num_layers, 0, -1)))
