"""Allocations: which decoder layers run for each generated token.

An allocation is a sorted tuple of decoder-layer indices.  Every generated token
passes through exactly those layers (in order), then the final norm and the LM
head; skipped layers cost nothing.  Its cost is counted in *layers per generated
token*.
"""

from __future__ import annotations

from dataclasses import dataclass

from skiporacle.data.errors import BadInput


@dataclass(frozen=True)
class Allocation:
    """A set of decoder layers that runs for every generated token.

    `layers` are sorted, distinct indices in [0, num_layers); `spec` is the text
    that names it (e.g. "uniform:12", "exit:20", "0-10,12"), kept for dumps.
    `weights` is empty for the model's own weights, or the folder of a healed
    variant whose layers replace these layers' weights (see `heal/`).
    """

    layers: tuple[int, ...]
    num_layers: int
    spec: str
    weights: str = ""

    def __post_init__(self) -> None:
        if not self.layers:
            raise BadInput(f"allocation {self.spec!r} keeps no layer")
        if list(self.layers) != sorted(set(self.layers)):
            raise BadInput(f"allocation {self.spec!r}: layers must be sorted and distinct")
        if self.layers[0] < 0 or self.layers[-1] >= self.num_layers:
            raise BadInput(f"allocation {self.spec!r}: layers must lie in 0-{self.num_layers - 1}")

    @property
    def cost(self) -> int:
        """Layers run per generated token."""
        return len(self.layers)

    @property
    def fraction(self) -> float:
        """Share of all decoder layers run per generated token, in [0, 1]."""
        return len(self.layers) / self.num_layers

    @property
    def is_full(self) -> bool:
        return len(self.layers) == self.num_layers


def full(num_layers: int) -> Allocation:
    """All layers: the full model."""
    return Allocation(tuple(range(num_layers)), num_layers, "all")


def uniform(keep: int, num_layers: int) -> Allocation:
    """The seed paper's uniform layer skipping: keep layer 0, spread the rest evenly.

    Layer i*num_layers/keep (rounded down) is kept for i in [0, keep); for 24
    layers and 12 kept this is 0, 2, 4, ..., 22.
    """
    check_budget(keep, num_layers)
    layers = tuple(sorted({(i * num_layers) // keep for i in range(keep)}))
    return Allocation(layers, num_layers, f"uniform:{keep}")


def early_exit(exit_after: int, num_layers: int) -> Allocation:
    """Early exit after `exit_after` layers: layers [0, exit_after)."""
    check_budget(exit_after, num_layers)
    return Allocation(tuple(range(exit_after)), num_layers, f"exit:{exit_after}")


def parse_spec(spec: str, num_layers: int) -> Allocation:
    """Parse a user's layer spec.

    Accepted forms: `all`, `uniform:N` (N layers kept), `exit:L` (layers 0..L-1),
    or a comma-separated list of indices and inclusive ranges, e.g. `0-10,12,15-29`.
    Raises BadInput with a one-line reason for anything else, a layer named twice included.
    """
    text = spec.strip()
    if text == "all":
        return full(num_layers)
    kind, sep, arg = text.partition(":")
    if sep:
        count = _counted(kind, arg, spec)
        return uniform(count, num_layers) if kind == "uniform" else early_exit(count, num_layers)
    layers = _listed(text, spec)
    out_of_range = [i for i in layers if i >= num_layers]
    if out_of_range:
        raise BadInput(f"layer spec {spec!r}: layer {out_of_range[0]} out of range (the model has layers 0-{num_layers - 1})")
    return Allocation(layers, num_layers, text)


def check_spec(spec: str) -> None:
    """BadInput for a spec that no model accepts (its syntax, a repeat, a budget under 1), before a model is loaded;
    the layer range is checked by `parse_spec` once the model's depth is known."""
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    if text != "all" and sep:
        check_budget(_counted(kind, arg, spec))
    elif text != "all":
        _listed(text, spec)


def _counted(kind: str, arg: str, spec: str) -> int:
    """N of `uniform:N` or `exit:N`."""
    if kind not in ("uniform", "exit"):
        raise BadInput(f"layer spec {spec!r}: unknown kind {kind!r} (use all, uniform:N, exit:L or a list like 0-10,12)")
    return _parse_int(arg, spec)


def _listed(text: str, spec: str) -> tuple[int, ...]:
    """The sorted layers of a list like `0-10,12`; a layer named twice (`0,0,1`, `0-3,2`) is refused."""
    layers: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        first = _parse_int(lo, spec)
        last = _parse_int(hi, spec) if dash else first
        if last < first:
            raise BadInput(f"layer spec {spec!r}: range {part.strip()!r} is reversed")
        repeated = sorted(layers.intersection(range(first, last + 1)))
        if repeated:
            raise BadInput(f"layer spec {spec!r}: layer {repeated[0]} is named twice")
        layers.update(range(first, last + 1))
    return tuple(sorted(layers))


def _parse_int(text: str, spec: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise BadInput(f"layer spec {spec!r}: {digits!r} is not a non-negative integer")
    return int(digits)


def check_budget(keep: int, num_layers: int | None = None) -> None:
    """BadInput unless 1 <= keep <= num_layers: the one range check of a layer budget (without `num_layers`,
    before the model is known, only 1 <= keep)."""
    if keep < 1 and num_layers is None:
        raise BadInput(f"budget {keep} out of range: a budget is the number of layers kept, at least 1")
    if num_layers is not None and not 1 <= keep <= num_layers:
        raise BadInput(f"budget {keep} out of range: the model has {num_layers} layers (use 1-{num_layers})")
