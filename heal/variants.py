"""Healed variant folders: `heal.json`, the metadata a heal run writes beside the weights, and the
healed space, which reads variants back as oracle candidates.

`heal.json`'s "data" entry lists the rows a heal run used: "train_ids",
"holdout_ids", "calibration_ids" ("task:id") and "source_hashes" (the
`content_hash` of every one of those rows' source texts).
"""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Collection

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import files_hash
from skiporacle.eval.model import resolve_model
from skiporacle.search.allocation import Allocation

HEAL_METADATA = "heal.json"  # written by `skiporacle heal` beside each healed variant
WEIGHT_FILES = ("*.safetensors", "*.bin", "config.json")  # what `from_pretrained` reads of a variant's model
DEFAULT_FOLDER = "models"  # where `make heal` writes healed variants, and where `--space healed` looks


def write_heal_metadata(folder: Path, metadata: dict) -> None:
    """Write `folder`/heal.json (the folder is still hidden: see `student.save_variant`)."""
    (folder / HEAL_METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


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


def finished_variants(folder: str | Path) -> list[Path]:
    """The variant folders in `folder` (those holding heal.json), sorted; hidden folders are variants still being
    written (see heal/student.py), and a path that is not a folder holds none."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / HEAL_METADATA).is_file())


def healed_space(folder: str | Path, num_layers: int, base_model: str, evaluated_ids: set[str],
                 evaluated_hashes: Collection[str] = frozenset()) -> list[Allocation]:
    """Every healed variant in `folder`, each followed by its training-free twin (same layers, base weights).

    A variant's cost is its layers per generated token, as for any allocation.
    A variant that trained its own final norm is left out, with a note (see `variant_allocation`).
    Refused (BadInput): a folder without variants, a variant of another base
    model or depth, one whose heal rows overlap the evaluated rows by id
    ("task:id" in `evaluated_ids`) or by content (a source `content_hash` in
    `evaluated_hashes`), and one whose heal.json predates content hashes.
    """
    root = Path(folder)
    if not root.is_dir():
        raise BadInput(f"healed space: {str(root)!r} is not a folder (make one with `skiporacle heal`)")
    variants = finished_variants(root)
    if not variants:
        raise BadInput(f"healed space: no healed variant (a folder with {HEAL_METADATA}) in {str(root)!r}")
    out = []
    for path in variants:
        if read_heal_metadata(path).get("settings", {}).get("train_norm"):
            print(f"skiporacle: {path} trained its own final norm: left out of the healed space (run it as "
                  "--model FOLDER, or export it)", file=sys.stderr)
            continue
        healed = variant_allocation(path, num_layers, base_model)
        refuse_heal_overlap(path, read_heal_metadata(path)["data"], evaluated_ids, set(evaluated_hashes))
        out += [healed, Allocation(healed.layers, num_layers, f"base:{path.name}")]
    if not out:
        raise BadInput(f"healed space: no variant in {str(root)!r} runs inside the base model (each trained its own norm)")
    return out


def variant_allocation(folder: str | Path, num_layers: int, base_model: str, on_base: bool = True) -> Allocation:
    """The healed variant in `folder` as an allocation of `base_model` (spec `healed:NAME`, its weights the
    folder's); BadInput for a variant of another base model, depth or tokenizer, and, `on_base` (its layers to
    run inside the base model), for one that trained its own final norm: the base's decoding paths keep theirs."""
    path = Path(folder)
    meta = read_heal_metadata(path)
    if on_base and meta.get("settings", {}).get("train_norm"):
        raise BadInput(f"healed variant {str(path)!r} trained its own final norm, which runs only in its own folder: "
                       "use it as --model FOLDER (its layers then read the prompt too) or export it")
    same_base = meta["base_model"] == base_model or Path(meta["base_model"]).resolve() == Path(base_model).resolve()
    if not same_base or meta["num_layers"] != num_layers:
        raise BadInput(f"healed variant {str(path)!r} was distilled from {meta['base_model']} "
                       f"({meta['num_layers']} layers), not {base_model} ({num_layers} layers)")
    if not _same_vocabulary(path, base_model):
        raise BadInput(f"healed variant {str(path)!r} has another tokenizer than {base_model} (its vocabulary "
                       "differs), so its outputs could not be read with the base model's token ids")
    return Allocation(tuple(meta["layers"]), num_layers, f"healed:{path.name}", weights=str(path.resolve()))


def refuse_heal_overlap(path: Path, data: dict, evaluated_ids: set[str], evaluated_hashes: set[str]) -> None:
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


def _same_vocabulary(variant: Path, base_model: str) -> bool:
    """Whether the variant's saved tokenizer has the base model's vocabulary and merges (true when the variant
    saved none: only its weights are read).  `save_pretrained` may re-indent tokenizer.json, so the parsed
    vocabulary is compared, not the bytes."""
    own = variant / "tokenizer.json"
    if not own.is_file():
        return True
    base = resolve_model(base_model) / "tokenizer.json"
    if not base.is_file():
        return True
    return _vocabulary(str(own), _stat_key(own)) == _vocabulary(str(base), _stat_key(base))


@lru_cache(maxsize=16)
def _vocabulary(path: str, stat_key: tuple) -> tuple:
    """The vocabulary, merges and added tokens of a tokenizer.json, parsed once per state of the file (`stat_key`):
    a family of variants compares against the same base tokenizer."""
    stored = json.loads(Path(path).read_text(encoding="utf-8"))
    model = stored.get("model") or {}
    return model.get("vocab"), model.get("merges"), [(t.get("id"), t.get("content")) for t in stored.get("added_tokens") or []]
