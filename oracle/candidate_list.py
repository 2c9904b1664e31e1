"""The candidate allocations of a run, and the registry of spaces: the one table that says, for each space
name of `--space`, which generator makes its candidates, whether it takes an argument, and which spec
heads its candidates carry (so that a record's spec names its space again: `space_of`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.heal.variants import DEFAULT_FOLDER, healed_space, variant_weights_hash
from skiporacle.oracle.records import IMPORTANCE
from skiporacle.search.allocation import Allocation, check_budget, full
from skiporacle.search.spaces import early_exit_space, file_space, importance_space, random_space, uniform_space
from skiporacle.data.files import write_json_atomic
from skiporacle.eval.ranking import cached_drop_order, read_ranking



@dataclass(frozen=True)
class SpaceRequest:
    """What a space's generator may read: the run's settings, inputs and folder, `arg` (after the colon),
    and the model for measuring the importance order."""

    settings: object
    inputs: object
    out: Path
    arg: str
    model: object
    tokenizer: object
    progress: bool


@dataclass(frozen=True)
class Space:
    name: str  # as written in --space
    generate: Callable[[SpaceRequest], list[Allocation]]
    series: dict[str, str]  # spec head (a regular expression) -> the series its candidates are plotted and summed as
    argument: str = ""  # "PATH" (required) or "[FOLDER]" (optional)
    help: str = ""


def _uniform(r: SpaceRequest) -> list[Allocation]:
    return uniform_space(r.settings.budgets, r.inputs.num_layers)


def _early_exit(r: SpaceRequest) -> list[Allocation]:
    return early_exit_space(r.settings.budgets, r.inputs.num_layers)


def _random(r: SpaceRequest) -> list[Allocation]:
    return random_space(r.settings.budgets, r.inputs.num_layers, r.settings.seed)


def _importance(r: SpaceRequest) -> list[Allocation]:
    return importance_space(r.settings.budgets, drop_order(r))


def _file(r: SpaceRequest) -> list[Allocation]:
    return file_space(r.arg, r.inputs.num_layers)


def _per_sequence(r: SpaceRequest) -> list[Allocation]:
    raise BadInput("a per-sequence search has no fixed candidate list")  # oracle/oracle_run.py sends it to oracle/search.py


def _healed(r: SpaceRequest) -> list[Allocation]:
    evaluated = {f"{r.settings.task}:{i}" for i in r.inputs.ids}
    texts = {content_hash(source) for source in r.inputs.sources}
    return healed_space(r.arg or DEFAULT_FOLDER, r.inputs.num_layers, r.settings.model, evaluated, texts)


SPACES: dict[str, Space] = {s.name: s for s in (
    Space("uniform", _uniform, {"uniform": "uniform"}, help="the seed paper's uniform skipping"),
    Space("early-exit", _early_exit, {"exit": "early-exit"}, help="the first B layers"),
    Space("importance", _importance, {"importance": "importance"}, help="the B most important layers"),
    Space("random", _random, {r"random\d+": "random"}, help="one seeded random subset per budget"),
    Space("file", _file, {}, "PATH", help="specs or layer lists from a JSON file"),
    Space("healed", _healed, {"base": "healed-base", "healed": "healed"}, "[FOLDER]",
          help=f"healed variants in FOLDER (default {DEFAULT_FOLDER}/), each with its training-free twin"),
    Space("greedy", _per_sequence, {"greedy": "greedy"},
          help="per-sequence greedy elimination (alone; see --search-rule)"),
    Space("random-search", _per_sequence, {"random-search": "random-search"},
          help="per-sequence random descent with --search-evaluations per sequence (alone)"),
)}
DEFAULT_SPACE = "file"  # the series of a spec no space claims: a user's own layer list


def space_of(spec: str) -> str:
    """The space (series) a candidate spec belongs to: uniform, early-exit, importance, random, file,
    healed, healed-base (`base:NAME`, the training-free twin of healed variant NAME) or full (`all`)."""
    head = spec.split(":", 1)[0]
    if head == "all":
        return "full"
    for space in SPACES.values():
        for pattern, series in space.series.items():
            if re.fullmatch(pattern, head):
                return series
    return DEFAULT_SPACE


def static_series() -> list[str]:
    """The series of static candidates, in the registry's order (the plot's order)."""
    return [series for s in SPACES.values() for series in (s.series.values() if s.series else [s.name])]


def _written(space: Space) -> str:
    """How a space is written in --space: uniform, file:PATH, healed[:FOLDER]."""
    return space.name + (f":{space.argument}" if space.argument == "PATH" else space.argument.replace("[", "[:"))


def spaces_help() -> str:
    """The `--space` names as the CLI lists them, each with what it makes."""
    return "; ".join(f"{_written(s)}: {s.help}" for s in SPACES.values())


def _with_arguments() -> str:
    return ", ".join(_written(s) for s in SPACES.values() if s.argument)


def parse_spaces(text: str) -> list[str]:
    """`uniform,importance` -> ["uniform", "importance"]; `file:PATH` and `healed:FOLDER` take a path."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        kind, sep, arg = name.partition(":")
        if kind not in SPACES:
            raise BadInput(f"unknown space {name!r}; choose from {', '.join(SPACES)} ({_with_arguments()})")
        takes = SPACES[kind].argument
        if takes == "PATH" and not (sep and arg) or not takes and sep:
            raise BadInput(f"space {name!r}: only {' and '.join(_with_arguments().split(', '))} take an argument")
    if not names:
        raise BadInput("no allocation space given")
    return names


def build_candidates(settings, inputs, out: Path, model, tokenizer, progress: bool) -> list[Allocation]:
    """Candidate allocations of all spaces, deduplicated by layer set; the full model comes last."""
    n = inputs.num_layers
    if settings.budgets:
        check_budget(max(settings.budgets), n)
    allocations: list[Allocation] = []
    for space in settings.spaces:
        name, _, arg = space.partition(":")
        allocations += SPACES[name].generate(SpaceRequest(settings, inputs, out, arg, model, tokenizer, progress))
    seen, unique = {(full(n).layers, "")}, []
    for allocation in allocations:
        if (allocation.layers, allocation.weights) not in seen:
            seen.add((allocation.layers, allocation.weights))
            unique.append(allocation)
    return unique + [full(n)]


def drop_order(r: SpaceRequest) -> tuple[int, ...]:
    """The importance drop order: from `settings.importance_file`, else measured once per run folder on the
    calibration split."""

    settings, inputs = r.settings, r.inputs
    if settings.importance_file:
        stored = read_ranking(Path(settings.importance_file), settings.model, inputs.num_layers)
        write_json_atomic(r.out / IMPORTANCE, {**stored, "source": settings.importance_file})
        return tuple(stored["drop_order"])
    if not inputs.calibration_prompts:
        raise BadInput("the importance space needs calibration examples after the evaluated ones; lower --limit or --offset")
    return cached_drop_order(r.out / IMPORTANCE, r.model, r.tokenizer, settings.model, inputs.calibration_ids,
                             inputs.calibration_prompts, settings.max_new_tokens, r.progress)


def pinned_candidates(allocations: list[Allocation]) -> list[list]:
    """Candidates as a run pins them in settings.json: [spec, layers], plus for a healed variant
    its folder and `variant_weights_hash`, so that a resume after re-healing it is refused."""
    return [[a.spec, list(a.layers)] + ([a.weights, variant_weights_hash(a.weights)] if a.weights else [])
            for a in allocations]


def pinned_allocations(pinned: list[list], num_layers: int) -> list[Allocation]:
    """The allocations of a candidate list pinned by `pinned_candidates` (its weights hashes are not checked).

    A per-sequence search pins its columns without layers (they differ per sequence): refused here."""
    if any(not c[1] for c in pinned):
        raise BadInput("a per-sequence search run has no fixed layers per candidate (they differ per sequence), "
                       "so it cannot be re-run by candidate; use a run of fixed spaces")
    return [Allocation(tuple(c[1]), num_layers, c[0], c[2] if len(c) > 2 else "") for c in pinned]
