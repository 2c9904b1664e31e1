"""Allocation spaces: families of candidate allocations, one or more per layer budget.

A budget is a number of layers kept per generated token.  Spaces are pure
functions of (budgets, number of layers, and their own parameters); measuring
anything on a model (the importance order) happens in `eval/`, and its result
is passed in.

This module owns the format of `heal.json`, the metadata of a healed variant
(written by `heal/`, which imports `HEAL_METADATA` from here; search must not
import heal).  Its "data" entry lists the rows a heal run used: "train_ids",
"holdout_ids", "calibration_ids" ("task:id") and "source_hashes" (the
`content_hash` of every one of those rows' source texts).
"""

from __future__ import annotations

import json
import os
import random
from functools import lru_cache
from pathlib import Path
from typing import Collection, Sequence

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import files_hash
from skiporacle.search.allocation import Allocation, early_exit, parse_spec, uniform

SPACES: tuple[str, ...] = ("uniform", "early-exit", "random", "importance", "file", "healed")
HEAL_METADATA = "heal.json"  # written by `skiporacle heal` beside each healed variant
WEIGHT_FILES = ("*.safetensors", "*.bin", "config.json")  # what `from_pretrained` reads of a variant's model


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
        if not 1 <= b <= num_layers:
            raise BadInput(f"budget {b} out of range: the model has {num_layers} layers")
        rest = sorted(rng.sample(range(1, num_layers), b - 1))
        out.append(Allocation((0, *rest), num_layers, f"random{seed}:{','.join(map(str, (0, *rest)))}"))
    return out


def importance_space(budgets: Sequence[int], drop_order: Sequence[int]) -> list[Allocation]:
    """Keep `b` layers by dropping layers in `drop_order` (least damaging first)."""
    n = len(drop_order)
    out = []
    for b in budgets:
        if not 1 <= b <= n:
            raise BadInput(f"budget {b} out of range: the model has {n} layers")
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


def read_heal_metadata(folder: str | Path) -> dict:
    """The heal.json of a healed variant folder (BadInput if there is none or it is unreadable)."""
    path = Path(folder) / HEAL_METADATA
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{str(folder)!r} is not a healed variant (no {HEAL_METADATA})") from None
    except (OSError, ValueError) as err:
        raise BadInput(f"{str(path)!r} cannot be read ({err})") from None


def variant_weights_hash(folder: str | Path) -> str:
    """sha256 hex digest of a healed variant's model files (`WEIGHT_FILES`; not heal.json).

    Computed once per process for each state of the files (path, inode, size,
    modification time), so a variant re-healed under the same name gets a new
    hash.  BadInput if the folder holds no weights or they cannot be read.
    """
    root = Path(folder).resolve()
    paths = sorted({p for pattern in WEIGHT_FILES for p in root.glob(pattern) if p.is_file()})
    if not any(p.name != "config.json" for p in paths):
        raise BadInput(f"healed variant {str(folder)!r} holds no weights (*.safetensors); re-heal it")
    stats = tuple((p.name, *_stat_key(p)) for p in paths)
    try:
        return _hash_files(str(root), stats)
    except OSError as err:
        raise BadInput(f"healed variant {str(folder)!r}: cannot read its weights ({err.strerror or err})") from None


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


@lru_cache(maxsize=64)
def _hash_files(root: str, stats: tuple) -> str:
    return files_hash(Path(root) / name for name, *_ in stats)


def pinned_candidates(allocations: Sequence[Allocation]) -> list[list]:
    """Candidates as a run pins them in settings.json: [spec, layers], plus for a healed variant
    its folder and `variant_weights_hash`, so that a resume after re-healing it is refused."""
    return [[a.spec, list(a.layers)] + ([a.weights, variant_weights_hash(a.weights)] if a.weights else [])
            for a in allocations]


def healed_space(folder: str | Path, num_layers: int, base_model: str, evaluated_ids: set[str],
                 evaluated_hashes: Collection[str] = frozenset()) -> list[Allocation]:
    """Every healed variant in `folder`, each followed by its training-free twin (same layers, base weights).

    A variant's cost is its layers per generated token, as for any allocation.
    Refused (BadInput): a folder without variants, a variant of another base
    model or depth, one whose heal rows overlap the evaluated rows by id
    ("task:id" in `evaluated_ids`) or by content (a source `content_hash` in
    `evaluated_hashes`), and one whose heal.json predates content hashes.
    """
    root = Path(folder)
    if not root.is_dir():
        raise BadInput(f"healed space: {str(root)!r} is not a folder (make one with `skiporacle heal`)")
    # Hidden folders are variants still being written (see heal/student.py).
    variants = sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / HEAL_METADATA).is_file())
    if not variants:
        raise BadInput(f"healed space: no healed variant (a folder with {HEAL_METADATA}) in {str(root)!r}")
    out = []
    for path in variants:
        meta = read_heal_metadata(path)
        same_base = meta["base_model"] == base_model or Path(meta["base_model"]).resolve() == Path(base_model).resolve()
        if not same_base or meta["num_layers"] != num_layers:
            raise BadInput(f"healed variant {str(path)!r} was distilled from {meta['base_model']} "
                           f"({meta['num_layers']} layers), not {base_model} ({num_layers} layers)")
        _refuse_overlap(path, meta["data"], evaluated_ids, set(evaluated_hashes))
        layers = tuple(meta["layers"])
        out.append(Allocation(layers, num_layers, f"healed:{path.name}", weights=str(path.resolve())))
        out.append(Allocation(layers, num_layers, f"base:{path.name}"))
    return out


def _refuse_overlap(path: Path, data: dict, evaluated_ids: set[str], evaluated_hashes: set[str]) -> None:
    used = set(data["train_ids"]) | set(data["holdout_ids"]) | set(data.get("calibration_ids", []))
    overlap = sorted(used & evaluated_ids)
    if overlap:
        raise BadInput(f"healed variant {str(path)!r} was trained on {len(overlap)} evaluated sequence(s) "
                       f"(e.g. {overlap[0]}); evaluate other rows (--offset/--limit) or heal on other data")
    if "source_hashes" not in data:
        raise BadInput(f"healed variant {str(path)!r} predates content checks (its {HEAL_METADATA} has no "
                       f"source_hashes); re-heal it with `skiporacle heal`")
    same_text = len(set(data["source_hashes"]) & evaluated_hashes)
    if same_text:
        raise BadInput(f"healed variant {str(path)!r} was trained on the text of {same_text} evaluated sequence(s) "
                       f"under other ids; evaluate other rows or heal on other data")


def parse_budgets(text: str, num_layers: int) -> list[int]:
    """`4,8,12` -> [4, 8, 12]; every budget must lie in 1..num_layers."""
    try:
        budgets = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise BadInput(f"budgets {text!r}: expected comma-separated integers like 4,8,12") from None
    if not budgets:
        raise BadInput("budgets: none given")
    bad = [b for b in budgets if not 1 <= b <= num_layers]
    if bad:
        raise BadInput(f"budget {bad[0]} out of range: the model has {num_layers} layers (use 1-{num_layers})")
    return budgets


def parse_spaces(text: str) -> list[str]:
    """`uniform,importance` -> ["uniform", "importance"]; `file:PATH` and `healed:FOLDER` take a path."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        kind, sep, arg = name.partition(":")
        if kind not in SPACES:
            raise BadInput(f"unknown space {name!r}; choose from {', '.join(SPACES)} (file:PATH, healed[:FOLDER])")
        if (kind == "file") and not (sep and arg) or kind not in ("file", "healed") and sep:
            raise BadInput(f"space {name!r}: only file:PATH and healed[:FOLDER] take an argument")
    if not names:
        raise BadInput("no allocation space given")
    return names
