"""Allocation spaces: families of candidate allocations, one or more per layer budget.

A budget is a number of layers kept per generated token.  Spaces are pure
functions of (budgets, number of layers, and their own parameters); measuring
anything on a model (the importance order) happens in `eval/`, and its result
is passed in.  The healed space reads variant folders and lives in
`heal/variants.py`; which name runs which generator is `oracle/candidate_list.py`'s
registry.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from skiporacle.data.errors import BadInput
from skiporacle.search.allocation import Allocation, check_budget, early_exit, parse_spec, uniform



def uniform_space(budgets: Sequence[int], num_layers: int) -> list[Allocation]:
    """The paper's uniform layer skipping at each budget."""
    return [uniform(b, num_layers) for b in budgets]


def early_exit_space(budgets: Sequence[int], num_layers: int) -> list[Allocation]:
    """Exit after `b` layers, for each budget b."""
    return [early_exit(b, num_layers) for b in budgets]


def random_space(budgets: Sequence[int], num_layers: int, seed: int) -> list[Allocation]:
    """One seeded random subset per budget; layer 0 always kept."""
    rng = random.Random(seed)
    out = []
    for b in budgets:
        check_budget(b, num_layers)
        rest = sorted(rng.sample(range(1, num_layers), b - 1))
        out.append(Allocation((0, *rest), num_layers, f"random{seed}:{','.join(map(str, (0, *rest)))}"))
    return out


def importance_space(budgets: Sequence[int], drop_order: Sequence[int]) -> list[Allocation]:
    """Keep `b` layers by dropping layers in `drop_order` (least damaging first)."""
    n = len(drop_order)
    out = []
    for b in budgets:
        check_budget(b, n)
        dropped = set(drop_order[: n - b])
        layers = tuple(i for i in range(n) if i not in dropped)
        out.append(Allocation(layers, n, f"importance:{b}"))
    return out


def file_space(path: str | Path, num_layers: int) -> list[Allocation]:
    """Allocations from a JSON file: a list of layer specs or of layer-index lists."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"allocation file {str(path)!r} does not exist") from None
    except OSError as err:
        raise BadInput(f"allocation file {str(path)!r} cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"allocation file {str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise BadInput(f"allocation file {str(path)!r} must hold a non-empty JSON list of specs or layer lists")
    out = []
    for item in items:
        if isinstance(item, list) and all(isinstance(i, int) for i in item):
            spec = ",".join(map(str, sorted(set(item))))
        elif isinstance(item, str):
            spec = item
        else:
            raise BadInput(f"allocation file {str(path)!r}: {item!r} is neither a spec nor a list of layer indices")
        out.append(parse_spec(spec, num_layers))
    return out


def parse_budgets(text: str, num_layers: int | None = None) -> list[int]:
    """`4,8,12` -> [4, 8, 12]; every budget must lie in 1..num_layers (without `num_layers`, before the model is
    known, only be at least 1)."""
    try:
        budgets = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise BadInput(f"budgets {text!r}: expected comma-separated integers like 4,8,12") from None
    if not budgets:
        raise BadInput("budgets: none given")
    for b in budgets:
        check_budget(b, num_layers)
    return budgets
